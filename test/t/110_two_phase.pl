
# Two-phase commit (issue 8, fault 12): PREPARE TRANSACTION dropped the
# wake-up of a transaction that enqueued, so its COMMIT PREPARED notified no
# one.  COMMIT PREPARED, in another session and after a restart, wakes the
# worker; ROLLBACK PREPARED notifies no one.  And the commit order of an
# ordered key holds across PREPARE: a later transaction of the same key
# waits for the prepared one to finish and is claimed after it.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('two_phase', 'max_prepared_transactions = 10');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Claim and ack everything a subscription has ready; the payloads' n, in
# claim order.
sub drain
{
	my ($sub) = @_;
	return sql(
		"SELECT string_agg(payload->>'n', ',' ORDER BY event_id) FROM ("
		  . " SELECT c.*, outbox.ack('$sub', c.event_id) FROM outbox.claim('$sub', 100) c) x");
}

# "orders" and "invoices" fall on different bits of the worker's topic
# bitmap (see t/102_notify.pl), so one cannot wake the other.
sql(q{
	SELECT outbox.subscribe('orders_sub', ARRAY['orders']);
	SELECT outbox.subscribe('invoices_sub', ARRAY['invoices']);
	SELECT outbox.subscribe('keyed', ARRAY['keyed'], ordered => true);
});

my $listener = OutboxBehaviour::Listener->new($node, 'outbox.orders_sub',
	'outbox.invoices_sub');

#
# COMMIT PREPARED in another session notifies.
#
sql(q{
	BEGIN;
	SELECT outbox.enqueue('orders', '{"n": 1}');
	PREPARE TRANSACTION 'outbox_p1';
});
$listener->sync;
is($listener->take('outbox.orders_sub'), 0, 'PREPARE notifies no one');
is(drain('orders_sub'), '', 'a prepared event is not claimable');
sql(q{COMMIT PREPARED 'outbox_p1'});
ok($listener->wait_for('outbox.orders_sub'),
	'COMMIT PREPARED in another session notifies the subscription');
is(drain('orders_sub'), '1', 'and the event is claimable');

#
# ROLLBACK PREPARED notifies no one.  The commit on "invoices" that follows
# is the witness: once its notification is in, one for the rollback would
# be too.
#
sql(q{
	BEGIN;
	SELECT outbox.enqueue('orders', '{"n": 2}');
	PREPARE TRANSACTION 'outbox_p2';
});
$listener->clear;
sql(q{ROLLBACK PREPARED 'outbox_p2'});
sql(q{SELECT outbox.enqueue('invoices', '{"n": 1}')});
ok($listener->wait_for('outbox.invoices_sub'), 'the witness commit notifies');
$listener->sync;
is($listener->take('outbox.orders_sub'), 0, 'ROLLBACK PREPARED notified no one');
is(drain('orders_sub'), '', 'and left nothing to claim');
drain('invoices_sub');

#
# Ordered keys: a transaction of key "k" that commits while one of the same
# key is prepared waits for it, and comes after it.
#
sql(q{
	BEGIN;
	SELECT outbox.enqueue('keyed', '{"n": 1}', key => 'k');
	PREPARE TRANSACTION 'outbox_p3';
});
my $later = $node->background_psql('postgres');
$later->query_until(qr/enqueued/, q{
	BEGIN;
	SELECT outbox.enqueue('keyed', '{"n": 2}', key => 'k');
	\echo enqueued
	COMMIT;
});
ok( $node->poll_query_until(
		'postgres', q{
		SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted}),
	'the later commit of the key waits for the prepared transaction');
sql(q{COMMIT PREPARED 'outbox_p3'});
$later->query_safe('SELECT 1');
$later->quit;
is(drain('keyed'), '1',
	'the prepared event comes first (one of a key at a time)');
is(drain('keyed'), '2', 'then the later one');

#
# After a restart: the transaction was prepared before it, COMMIT PREPARED
# comes after it, from a new session.
#
sql(q{
	BEGIN;
	SELECT outbox.enqueue('orders', '{"n": 3}');
	PREPARE TRANSACTION 'outbox_p4';
});
$listener->quit;
$node->restart;
wait_for_worker($node);
$listener = OutboxBehaviour::Listener->new($node, 'outbox.orders_sub',
	'outbox.invoices_sub');
# the worker's first round after start notifies everyone once; the witness
# makes sure that has happened before the listener is cleared
sql(q{SELECT outbox.enqueue('invoices', '{"n": 2}')});
ok($listener->wait_for('outbox.invoices_sub'), 'the worker runs after the restart');
drain('invoices_sub');
$listener->clear;
is(drain('orders_sub'), '', 'the prepared event is not claimable after the restart');
sql(q{COMMIT PREPARED 'outbox_p4'});
ok($listener->wait_for('outbox.orders_sub'),
	'COMMIT PREPARED after a restart notifies the subscription');
is(drain('orders_sub'), '3', 'and the event is claimable');

$listener->quit;
$node->stop;
done_testing();
