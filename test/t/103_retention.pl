
# Retention by the background worker: events every subscription is done
# with are removed after outbox.retention, so storage stays flat under a
# load that consumers keep up with; dead letters survive (and can still be
# replayed); events a subscription has not consumed are kept.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('retention', "outbox.retention = '1s'",
	"outbox.naptime = '100ms'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Events in a round: transactions of events each.
my $TXNS = 20;
my $PER_TXN = 10;
my $ROUND = $TXNS * $PER_TXN;

# Enqueue a round of events on topic "r", each transaction on its own.
sub produce
{
	my ($round) = @_;
	sql(join(
			"\n",
			map {
				"SELECT count(outbox.enqueue('r', jsonb_build_object('round', $round, 'txn', $_, 'i', i)))"
				  . " FROM generate_series(1, $PER_TXN) i;"
			} 1 .. $TXNS));
	return;
}

# Claim and ack everything a subscription has ready, 50 at a time, each
# batch in a transaction of its own; returns how many were acked.
sub consume
{
	my ($sub) = @_;
	my $total = 0;
	while (1)
	{
		my $n = sql(
			"WITH c AS (SELECT event_id FROM outbox.claim('$sub', 50))"
			  . " SELECT outbox.ack('$sub', (SELECT array_agg(event_id) FROM c))");
		last if $n == 0;
		$total += $n;
	}
	return $total;
}

# Total size of every table of outbox, with indexes and TOAST.
sub outbox_storage
{
	return sql(
		"SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
		  . " WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind = 'r'");
}

# Total size of the event tables (every partition of outbox.event, with
# their indexes).
sub event_storage
{
	return sql(
		"SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i"
		  . " WHERE i.inhparent = 'outbox.event'::regclass");
}

sql("SELECT outbox.subscribe('keep', ARRAY['r'])");

#
# Steady load that the consumer keeps up with: after each round the
# events of the earlier rounds are removed, the buckets rotate, and the
# storage of the event tables does not grow.
#
my $first_bucket = sql('SELECT bucket FROM outbox.state');
my %buckets = ($first_bucket => 1);
my ($size3, $size8, $all3, $all8);
for my $round (1 .. 8)
{
	produce($round);
	is(consume('keep'), $ROUND, "round $round: every event consumed");
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 0 FROM outbox.event WHERE (payload->>'round')::int < $round"
		),
		"round $round: the events of earlier rounds were removed");
	$buckets{ sql('SELECT bucket FROM outbox.state') } = 1;
	cmp_ok(sql('SELECT count(*) FROM outbox.event'),
		'<=', $ROUND, "round $round: at most one round of events is stored");
	($size3, $all3) = (event_storage(), outbox_storage()) if $round == 3;
	($size8, $all8) = (event_storage(), outbox_storage()) if $round == 8;
}
cmp_ok(scalar(keys %buckets), '>', 1, 'the current bucket rotated');
note "event storage after round 3: $size3 bytes, after round 8: $size8 bytes";
cmp_ok($size8, '<=', 2 * $size3 + 65536,
	'event storage does not grow from round 3 to round 8');
note "all outbox storage after round 3: $all3 bytes, after round 8: $all8 bytes";
cmp_ok($all8, '<=', 2 * $all3 + 262144,
	'storage of all outbox tables does not grow from round 3 to round 8');
is(sql("SELECT ready || '/' || scheduled || '/' || leased || '/' || dead"
		  . " FROM outbox.stats WHERE subscription = 'keep'"),
	'0/0/0/0', 'keep: nothing left behind');

#
# A dead letter survives the removal of its bucket, payload included, and
# can be replayed.  Its sibling, enqueued in the same transaction (so in
# the same bucket) on a topic "keep" consumes, tells when the bucket was
# emptied.
#
sql("SELECT outbox.subscribe('dl', ARRAY['x'], max_attempts => 1)");
my ($dead, $sibling) = split /\|/, sql(q{
	SELECT outbox.enqueue('x', '{"dead": "letter"}') || '|' ||
		outbox.enqueue('r', '{"round": 100}')});
is(sql("SELECT event_id FROM outbox.claim('dl')"), $dead, 'dl: claimed');
is(sql("SELECT outbox.fail('dl', $dead, 'poison')"), 'dead', 'dl: dead-lettered');
is(consume('keep'), 1, 'keep: consumed the sibling');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) = 0 FROM outbox.event WHERE id = $sibling"),
	'the bucket of the dead letter was emptied');
is( sql("SELECT event_id || '|' || topic || '|' || payload::text || '|' || last_error"
		  . " FROM outbox.dead_letters WHERE subscription = 'dl'"),
	qq{$dead|x|{"dead": "letter"}|poison},
	'the dead letter is still there, with its payload');
is(sql("SELECT dead FROM outbox.stats WHERE subscription = 'dl'"),
	'1', 'dl: counted as dead');
is(sql("SELECT outbox.replay('dl', $dead)"), '1', 'dl: replayed');
is( sql("SELECT event_id || '|' || attempt || '|' || payload::text"
		  . " FROM outbox.claim('dl')"),
	qq{$dead|1|{"dead": "letter"}},
	'dl: the replayed delivery carries its payload');
is(sql("SELECT outbox.ack('dl', $dead)"), 't', 'dl: acked');

#
# Events a subscription has not consumed are kept, however old.
#
sql("SELECT outbox.subscribe('idle', ARRAY['r'])");
my $bucket = sql('SELECT bucket FROM outbox.state');
produce(201);
is(consume('keep'), $ROUND, 'keep: consumed round 201');
ok( $node->poll_query_until(
		'postgres', "SELECT bucket <> $bucket FROM outbox.state"),
	'the bucket of round 201 is no longer the current one');
produce(202);
is(consume('keep'), $ROUND, 'keep: consumed round 202');
# Several retention periods and many worker rounds; no time is asserted.
sleep 3;
is(sql("SELECT ready FROM outbox.stats WHERE subscription = 'idle'"),
	2 * $ROUND, 'idle: every event enqueued since it subscribed is ready');
is( sql(
		"SELECT count(*) FROM outbox.event WHERE (payload->>'round')::int IN (201, 202)"),
	2 * $ROUND,
	'the events idle has not consumed are still stored');
is( sql(
		"WITH c AS (SELECT * FROM outbox.claim('idle', 10000))"
		  . " SELECT count(DISTINCT payload) FILTER (WHERE (payload->>'round')::int IN (201, 202))"
		  . " || '/' || count(*) || '/' || outbox.ack('idle', array_agg(event_id)) FROM c"),
	join('/', 2 * $ROUND, 2 * $ROUND, 2 * $ROUND),
	'idle: claims every one of them, payloads included, and acks them');

# Once everyone is done, everything goes.
ok( $node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM outbox.event'),
	'all events removed once every subscription is done with them');
is( sql("SELECT string_agg(ready || '/' || scheduled || '/' || leased || '/' || dead,"
		  . " ',' ORDER BY subscription) FROM outbox.stats"),
	'0/0/0/0,0/0/0/0,0/0/0/0',
	'no subscription has anything left');

$node->stop;
done_testing();
