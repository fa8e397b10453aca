# One quiet subscription does not pin storage (issue 8, fault 7).
#
# In 1.0 a bucket of events was emptied only when every subscription had
# folded past it and no delivery needed any of its events, so one
# subscription whose consumer is down with one pending event, or one
# delivery scheduled a month ahead, stopped the rotation: the current
# bucket then grew without bound for every topic.  Now retention copies the
# few events still needed out of a bucket that is due (as it did for dead
# letters) and empties it: storage stays bounded by what is needed plus
# the retention window, and the quiet subscription still gets its events.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('quiet', "outbox.retention = '1s'",
	"outbox.naptime = '100ms'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $ROUND = 200;

sub produce
{
	my ($round) = @_;
	sql(join("\n",
			map { "SELECT outbox.enqueue('r', jsonb_build_object('round', $round, 'i', $_));" }
			  1 .. $ROUND));
	return;
}

sub consume
{
	my ($sub) = @_;
	my $total = 0;
	while (1)
	{
		my $n = sql("WITH c AS (SELECT event_id FROM outbox.claim('$sub', 100))"
			  . " SELECT outbox.ack('$sub', (SELECT array_agg(event_id) FROM c))");
		last if $n == 0;
		$total += $n;
	}
	return $total;
}

sql(q{
	SELECT outbox.subscribe('busy', ARRAY['r']);
	SELECT outbox.subscribe('quiet', ARRAY['q']);
	SELECT outbox.subscribe('later', ARRAY['m']);
});
# quiet: one pending event nobody claims; later: one delivery due in a
# month, moved out of the stream by a claim that reached it
my $pending = sql(q{SELECT outbox.enqueue('q', '{"quiet": 1}', dedup_key => 'once')});
my $month = sql(q{SELECT outbox.enqueue('m', '{"later": 1}', deliver_at => now() + interval '30 days')});
is(sql("SELECT count(*) FROM outbox.claim('later')"), '0', 'later: nothing due yet');
is(sql("SELECT scheduled FROM outbox.stats WHERE subscription = 'later'"),
	'1', 'later: the delivery is scheduled');

my %buckets = (sql('SELECT bucket FROM outbox.state') => 1);
for my $round (1 .. 6)
{
	produce($round);
	is(consume('busy'), $ROUND, "round $round: busy consumed every event");
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 0 FROM outbox.event WHERE (payload->>'round')::int < $round"),
		"round $round: the events of earlier rounds were removed");
	$buckets{ sql('SELECT bucket FROM outbox.state') } = 1;
	cmp_ok(sql('SELECT count(*) FROM outbox.event'),
		'<=', $ROUND + 2,
		"round $round: one round of events is stored, and what quiet and later need");
}
cmp_ok(scalar(keys %buckets), '>=', 3, 'the buckets kept rotating');

is(sql("SELECT count(*) FROM outbox.event WHERE id IN ($pending, $month)"),
	'2', 'the events quiet and later need are kept');
is(sql(q{SELECT outbox.enqueue('q', '{"quiet": 2}', dedup_key => 'once')}),
	$pending, 'the kept event still deduplicates');
is(sql("SELECT ready FROM outbox.stats WHERE subscription = 'quiet'"),
	'1', 'quiet: its event is ready');
is( sql("SELECT event_id || ' ' || payload::text FROM outbox.claim('quiet', 10)"),
	qq{$pending {"quiet": 1}},
	'quiet: its consumer comes back and gets the event, payload included');
is(sql("SELECT outbox.ack('quiet', $pending)"), 't', 'quiet: acked');
is(sql("SELECT scheduled FROM outbox.stats WHERE subscription = 'later'"),
	'1', 'later: the delivery is still scheduled');
is(sql("SELECT outbox.ack('later', $month)"), 't', 'later: acked ahead of its time');

ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM outbox.event'),
	'once nothing needs them, the kept events go too');
is(sql('SELECT count(*) FROM outbox.dedup'), '0', 'and their dedup keys');

$node->stop;
done_testing();
