# After a crash-restart (kill -9 of a backend, then of the worker itself)
# the launcher and the worker come back on their own, and what was
# committed before the crash is still delivered; what was not committed
# reaches no one.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
# Cluster.pm turns crash restarts off; they are what this test is about
$node->append_conf('postgresql.conf', "restart_after_crash = on\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE appdb');
$node->safe_psql('appdb',    'CREATE EXTENSION outbox');
my $launcher = wait_for_launcher($node, 'a launcher runs');
my $worker   = wait_for_worker($node, 'appdb', 'appdb has a worker');

# one committed event for two subscriptions; one of them has it leased
# (short lease, committed claim) when the server crashes
$node->safe_psql(
	'appdb', q{
	SELECT outbox.subscribe('crash', ARRAY['c']);
	SELECT outbox.subscribe('crash_lease', ARRAY['c'], lease => '2 seconds',
	                        backoff_base => '100 milliseconds');
	SELECT outbox.enqueue('c', '{"n": 1}');
});
is($node->safe_psql('appdb', "SELECT payload->>'n' FROM outbox.claim('crash_lease', 10)"),
	'1', 'the event is leased before the crash');

# a backend in the middle of a transaction that enqueued an event is killed
my $bg = $node->background_psql('appdb');
$bg->query_safe('BEGIN');
$bg->query_safe(q{SELECT outbox.enqueue('c', '{"n": 2}')});
my $victim = $bg->query_safe('SELECT pg_backend_pid()');
my $log_offset = -s $node->logfile;
ok(kill9($node, $victim), 'kill -9 of an ordinary backend');
ok( eval {
		$node->wait_for_log(qr/all server processes terminated; reinitializing/,
			$log_offset);
	},
	'the postmaster reinitializes after the crash');
eval { $bg->quit; };

ok($node->poll_query_until('postgres', 'SELECT 1', '1'),
	'the server accepts connections again');
$launcher = wait_for_launcher($node, 'a new launcher runs after the crash', $launcher);
$worker = wait_for_worker($node, 'appdb', 'a new worker serves appdb after the crash',
	$worker);

is( $node->safe_psql(
		'appdb',
		"SELECT string_agg(payload->>'n', ',' ORDER BY event_id) FROM outbox.claim('crash', 10)"),
	'1',
	'the committed event is claimable after the crash, the uncommitted one is not');

# the lease taken before the crash is returned by the new worker, and the
# delivery is claimable again (at least once across a crash)
ok( $node->poll_query_until(
		'appdb', q{
		SELECT string_agg((payload->>'n') || '@' || attempt, ',')
		  FROM outbox.claim('crash_lease', 10)},
		'1@2'),
	'the lease taken before the crash expires and the event is claimed again');

# a crash of the worker itself: the same, launcher and worker come back
$log_offset = -s $node->logfile;
ok(kill9($node, $worker), 'kill -9 of the worker');
ok( eval {
		$node->wait_for_log(qr/all server processes terminated; reinitializing/,
			$log_offset);
	},
	'the postmaster reinitializes after the worker crashed');
ok($node->poll_query_until('postgres', 'SELECT 1', '1'),
	'the server accepts connections again');
$launcher = wait_for_launcher($node, 'a new launcher runs after the worker crashed',
	$launcher);
$worker = wait_for_worker($node, 'appdb',
	'a new worker serves appdb after the worker crashed', $worker);

# and it works: a new committed claim with a short lease is returned by it
$node->safe_psql(
	'appdb', q{
	SELECT outbox.subscribe('after', ARRAY['a'], max_attempts => 1, lease => '1 second');
	SELECT outbox.enqueue('a', '{"n": 3}');
});
is($node->safe_psql('appdb', "SELECT payload->>'n' FROM outbox.claim('after', 10)"),
	'3', 'an event enqueued after the crashes is claimed');
ok( $node->poll_query_until(
		'appdb',
		"SELECT last_error FROM outbox.dead_letters WHERE subscription = 'after'",
		'lease expired'),
	'the new worker returns expired leases');

$node->stop;
done_testing();
