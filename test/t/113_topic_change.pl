# A subscription that gives up a topic keeps what it holds of it, through
# retention (issue 8, found by the randomized test).
#
# Retention keeps an event that a subscription's cursor has not passed only
# if the event is of a topic the subscription has now.  When a subscription
# gave up a topic, its events still leased in the stream (a claim that had
# committed, not yet acked) were therefore dropped with their bucket: an
# ack still worked, but a fail or an expired lease left a delivery whose
# event was gone, so the retry never came and the dead letter did not
# show.  Now subscribe hands such leases over to delivery rows, which
# retention keeps whatever their topic.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('topic_change', "outbox.retention = '1s'",
	"outbox.naptime = '100ms'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	SELECT outbox.subscribe('mover', ARRAY['r', 'x'], max_attempts => 3);
	SELECT outbox.subscribe('last', ARRAY['r', 'y'], max_attempts => 1);
});
my $x = sql(q{SELECT outbox.enqueue('x', '{"x": 1}')});
my $y = sql(q{SELECT outbox.enqueue('y', '{"y": 1}')});
is(sql("SELECT event_id FROM outbox.claim('mover', 10, lease => '1 hour')"),
	$x, 'mover: the x event is claimed, with a long lease');
is(sql("SELECT event_id FROM outbox.claim('last', 10, lease => '1 hour')"),
	$y, 'last: the y event is claimed, on its only attempt');

# give up the topics while the claims hold them
sql(q{
	SELECT outbox.subscribe('mover', ARRAY['r'], max_attempts => 3);
	SELECT outbox.subscribe('last', ARRAY['r'], max_attempts => 1);
});
is(sql("SELECT leased FROM outbox.stats WHERE subscription = 'mover'"),
	'1', 'mover: its lease of the x event is still counted');

# traffic on r until the bucket that held x and y was emptied
my $bucket = sql("SELECT bucket FROM outbox.event WHERE id = $x");
my $emptied = 0;
for my $round (1 .. 60)
{
	sql(join("\n", map { "SELECT outbox.enqueue('r', '{}');" } 1 .. 20));
	sql("SELECT outbox.ack('$_', (SELECT array_agg(event_id) FROM outbox.claim('$_', 1000)))")
	  for qw(mover last);
	$emptied = sql("SELECT count(*) = 0 FROM outbox.event_$bucket WHERE id IN ($x, $y)") eq 't';
	last if $emptied;
	select(undef, undef, undef, 0.5);
}
ok($emptied, 'the bucket that held the x and y events was emptied');
is(sql("SELECT count(*) FROM outbox.event WHERE id IN ($x, $y)"),
	'2', 'the held events were kept');

is(sql("SELECT outbox.fail('mover', $x, 'try again', retry_in => '0')"),
	'scheduled', 'mover: the x event fails, for a retry');
is( sql("SELECT event_id || ' ' || attempt || ' ' || payload::text FROM outbox.claim('mover', 10)"),
	qq{$x 2 {"x": 1}},
	'mover: the retry of the x event comes, payload included');
is(sql("SELECT outbox.ack('mover', $x)"), 't', 'mover: acked');

is(sql("SELECT outbox.fail('last', $y, 'no luck')"),
	'dead', 'last: the y event fails on its only attempt');
is( sql("SELECT event_id || ' ' || payload::text || ' ' || last_error FROM outbox.dead_letters"
		  . " WHERE subscription = 'last'"),
	qq{$y {"y": 1} no luck},
	'last: the dead letter shows, payload included');

$node->stop;
done_testing();
