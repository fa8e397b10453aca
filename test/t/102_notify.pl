
# Wake-ups: a LISTENing session is notified on its subscription's channel
# when a commit makes deliveries ready (an enqueue; a retry already due at
# commit; the ack or dead-lettering that frees an ordered key), when
# delayed or retried deliveries come due, on replay and resume, and when an
# expired lease is returned; not for other topics' commits nor for
# rolled-back enqueues.  The worker sends the notifications, not the
# producer.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('notify');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The stats of a subscription as "ready/scheduled/leased/dead".
sub stats
{
	my ($sub) = @_;
	return sql("SELECT ready || '/' || scheduled || '/' || leased || '/' || dead"
		  . " FROM outbox.stats WHERE subscription = '$sub'");
}

# Claim and ack everything a subscription has ready.
sub drain
{
	my ($sub) = @_;
	sql("SELECT outbox.ack('$sub', array_agg(event_id))"
		  . " FROM outbox.claim('$sub', 1000)");
}

# The topics "orders" and "invoices" fall on different bits of the
# worker's topic bitmap, so no collision can make a notification for one
# reach the other's subscriptions.
sql(q{
	SELECT outbox.subscribe('orders_sub', ARRAY['orders']);
	SELECT outbox.subscribe('invoices_sub', ARRAY['invoices']);
	SELECT outbox.subscribe('replayed', ARRAY['replayed'], max_attempts => 1);
	SELECT outbox.subscribe('paused', ARRAY['paused']);
	SELECT outbox.subscribe('leases', ARRAY['leases'], lease => '1 second',
		backoff_base => '100 milliseconds', backoff_max => '100 milliseconds');
	SELECT outbox.subscribe('ordered', ARRAY['ordered'], max_attempts => 1,
		lease => '1 second', ordered => true);
});
is(sql("SELECT outbox.channel('orders_sub')"), 'outbox.orders_sub',
	'the channel of a subscription');

my $worker_pid = sql(
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'"
	  . " AND datname = 'postgres'");
my $listener = OutboxBehaviour::Listener->new($node, 'outbox.orders_sub',
	'outbox.invoices_sub');

#
# An ordinary commit notifies the subscriptions of its topic, only those.
#
my $producer_pid = sql(q{
	SELECT pg_backend_pid() FROM (SELECT outbox.enqueue('orders', '{"n": 1}')) x});
ok($listener->wait_for('outbox.orders_sub'),
	'commit of an enqueue notifies its subscription');
is($listener->sender('outbox.orders_sub'), $worker_pid,
	'the notification comes from the worker');
isnt($listener->sender('outbox.orders_sub'), $producer_pid,
	'the producer did not notify');
$listener->sync;
is($listener->take('outbox.invoices_sub'), 0,
	'no notification for the subscription of another topic');
drain('orders_sub');

#
# A rolled-back enqueue notifies no one.  The commit on "invoices" that
# follows is the witness: once its notification is in, one for the
# rollback would be too.
#
sql(q{
	BEGIN;
	SELECT outbox.enqueue('orders', '{"n": "rolled back"}');
	ROLLBACK;
});
sql(q{SELECT outbox.enqueue('invoices', '{"n": 1}')});
ok($listener->wait_for('outbox.invoices_sub'),
	'commit on the other topic notifies its subscription');
$listener->sync;
is($listener->take('outbox.orders_sub'), 0,
	'the rolled-back enqueue sent no notification');
is(stats('orders_sub'), '0/0/0/0', 'and it left nothing to claim');
drain('invoices_sub');

#
# A delayed enqueue notifies when it comes due, with no claim having looked
# at it before.  A notification counts only if the delivery is claimable
# when it is received: the one the commit may send early does not.
#
my $delayed = sql(q{
	SELECT outbox.enqueue('orders', '{"n": "delayed"}',
		deliver_at => now() + interval '2 seconds')});
is(stats('orders_sub'), '0/1/0/0', 'delayed delivery is scheduled');
ok( $listener->wait_for(
		'outbox.orders_sub', sub { stats('orders_sub') eq '1/0/0/0' }),
	'delayed delivery notifies its subscription when it comes due');
is(sql("SELECT event_id FROM outbox.claim('orders_sub')"),
	$delayed, 'and it is claimable then');
drain('orders_sub');
sql("SELECT outbox.ack('orders_sub', $delayed)");

# The same when a claim saw it before it was due.
$delayed = sql(q{
	SELECT outbox.enqueue('orders', '{"n": "delayed 2"}',
		deliver_at => now() + interval '2 seconds')});
is(sql("SELECT count(*) FROM outbox.claim('orders_sub')"),
	'0', 'a claim before it is due gets nothing');
ok( $listener->wait_for(
		'outbox.orders_sub', sub { stats('orders_sub') eq '1/0/0/0' }),
	'delayed delivery seen by a claim notifies when it comes due');
is(sql("SELECT event_id FROM outbox.claim('orders_sub')"),
	$delayed, 'and it is claimable then');
sql("SELECT outbox.ack('orders_sub', $delayed)");

#
# A retried delivery notifies when its retry comes due.
#
my $retried = sql(q{SELECT outbox.enqueue('orders', '{"n": "retried"}')});
ok($listener->wait_for('outbox.orders_sub'), 'enqueue to be retried notified');
is(sql("SELECT event_id FROM outbox.claim('orders_sub')"), $retried,
	'claimed');
is(sql("SELECT outbox.fail('orders_sub', $retried, 'try later', '1 second')"),
	'scheduled', 'failed with a retry in 1 s');
ok( $listener->wait_for(
		'outbox.orders_sub', sub { stats('orders_sub') eq '1/0/0/0' }),
	'retried delivery notifies its subscription when it comes due');
is(sql("SELECT event_id || ':' || attempt FROM outbox.claim('orders_sub')"),
	"$retried:2", 'and it is claimable then');
sql("SELECT outbox.ack('orders_sub', $retried)");

# A retry that is already due when its transaction commits (the
# transaction outlived retry_in) notifies: the commit makes it ready.
my $late = sql(q{SELECT outbox.enqueue('orders', '{"n": "late"}')});
ok($listener->wait_for('outbox.orders_sub'), 'enqueue to be retried late notified');
is(sql("SELECT event_id FROM outbox.claim('orders_sub')"), $late, 'claimed');
$listener->clear;
sql(qq{
	BEGIN;
	SELECT outbox.fail('orders_sub', $late, 'try again', '0');
	SELECT pg_sleep(1.5);
	COMMIT;
});
ok( $listener->wait_for(
		'outbox.orders_sub', sub { stats('orders_sub') eq '1/0/0/0' }),
	'a retry already due when its transaction commits notifies');
is(sql("SELECT event_id || ':' || attempt FROM outbox.claim('orders_sub')"),
	"$late:2", 'and it is claimable then');
sql("SELECT outbox.ack('orders_sub', $late)");

#
# replay notifies.
#
$listener->listen('outbox.replayed', 'outbox.paused', 'outbox.leases');
my $dead = sql(q{SELECT outbox.enqueue('replayed', '{"n": "dead"}')});
ok($listener->wait_for('outbox.replayed'), 'enqueue to be replayed notified');
is(sql("SELECT event_id FROM outbox.claim('replayed')"), $dead, 'claimed');
is(sql("SELECT outbox.fail('replayed', $dead, 'broken')"),
	'dead', 'dead-lettered');
$listener->clear;
is(sql("SELECT outbox.replay('replayed')"), '1', 'replayed');
ok($listener->wait_for('outbox.replayed'),
	'replay notifies the subscription');
is(sql("SELECT event_id || ':' || attempt FROM outbox.claim('replayed')"),
	"$dead:1", 'the replayed delivery is claimable');
sql("SELECT outbox.ack('replayed', $dead)");

#
# resume notifies.  The enqueue on "orders" in the same transaction tells
# when the worker has handled that commit.
#
sql("SELECT outbox.pause('paused')");
sql(q{
	BEGIN;
	SELECT outbox.enqueue('paused', '{"n": "paused"}');
	SELECT outbox.enqueue('orders', '{"n": "witness"}');
	COMMIT;
});
ok($listener->wait_for('outbox.orders_sub'), 'witness commit notified');
drain('orders_sub');
is(sql("SELECT count(*) FROM outbox.claim('paused')"),
	'0', 'a paused subscription claims nothing');
$listener->clear;
sql("SELECT outbox.resume('paused')");
ok($listener->wait_for('outbox.paused'), 'resume notifies the subscription');
is(sql("SELECT payload->>'n' FROM outbox.claim('paused')"),
	'paused', 'the delivery is claimable after resume');

#
# A lease returned by expiry notifies.
#
my $leased = sql(q{SELECT outbox.enqueue('leases', '{"n": "leased"}')});
ok($listener->wait_for('outbox.leases'), 'enqueue to be leased notified');
is(sql("SELECT event_id FROM outbox.claim('leases')"), $leased,
	'claimed with a lease of 1 s, never acked');
$listener->clear;
ok( $listener->wait_for(
		'outbox.leases', sub { stats('leases') eq '1/0/0/0' }),
	'the expired lease, returned, notifies the subscription');
is(sql("SELECT event_id || ':' || attempt FROM outbox.claim('leases')"),
	"$leased:2", 'and it is claimable then');
sql("SELECT outbox.ack('leases', $leased)");

#
# Ordered subscription: what frees a key's next delivery notifies, be it
# the ack or the dead-lettering (by fail, or by lease expiry) of the
# delivery that blocked it.
#
$listener->listen('outbox.ordered');
my @ev = split /\|/, sql(q{
	SELECT outbox.enqueue('ordered', '{"n": 1}', key => 'k') || '|' ||
		outbox.enqueue('ordered', '{"n": 2}', key => 'k') || '|' ||
		outbox.enqueue('ordered', '{"n": 3}', key => 'k') || '|' ||
		outbox.enqueue('ordered', '{"n": 4}', key => 'k')});
ok($listener->wait_for('outbox.ordered'), 'ordered: enqueue notified');
is(sql("SELECT string_agg(event_id::text, ',') FROM outbox.claim('ordered', 10)"),
	$ev[0], 'ordered: a claim takes only the first event of the key');

$listener->clear;
is(sql("SELECT outbox.ack('ordered', $ev[0])"), 't', 'ordered: first acked');
ok( $listener->wait_for(
		'outbox.ordered', sub { stats('ordered') eq '1/2/0/0' }),
	'ordered: the ack that frees the key notifies');
is(sql("SELECT string_agg(event_id::text, ',') FROM outbox.claim('ordered', 10)"),
	$ev[1], 'ordered: the second event is claimable');

$listener->clear;
is(sql("SELECT outbox.fail('ordered', $ev[1], 'poison')"),
	'dead', 'ordered: second dead-lettered by fail');
ok( $listener->wait_for(
		'outbox.ordered', sub { stats('ordered') eq '1/1/0/1' }),
	'ordered: the dead-lettering (fail) that frees the key notifies');
is(sql("SELECT string_agg(event_id::text, ',') FROM outbox.claim('ordered', 10)"),
	$ev[2], 'ordered: the third event is claimable');

# Its lease of 1 s expires; max_attempts 1 makes that a dead letter.
$listener->clear;
ok( $listener->wait_for(
		'outbox.ordered', sub { stats('ordered') eq '1/0/0/2' }),
	'ordered: the dead-lettering (lease expiry) that frees the key notifies');
is(sql("SELECT string_agg(event_id::text, ',') FROM outbox.claim('ordered', 10)"),
	$ev[3], 'ordered: the fourth event is claimable');

$listener->quit;
$node->stop;
done_testing();
