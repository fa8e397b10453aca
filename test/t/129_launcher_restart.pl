
# A launcher that ends between asking for a worker and seeing it start must
# not leave the database unserved.  1.0 kept "a worker is starting" in
# shared memory and only the launcher that asked could clear it (on seeing
# its worker stop): a restarted launcher never started a worker there again.
#
# The worker is held in its start-up by a transaction that renames the
# database (it waits for the database's lock before it can take its slot);
# the launcher is stopped, then that worker, then the lock is let go.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('launcher_restart');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', 'CREATE EXTENSION outbox');
my $worker = wait_for_worker($node, 'app', 'app has a worker');
my $launcher = wait_for_launcher($node, 'a launcher runs');
my $dboid = db_oid($node, 'app');

# A worker ended by SIGTERM is restarted after a pause of seconds: long
# enough for the rename below to take the database's lock first.
my $renamer = $node->background_psql('postgres');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker)");
$renamer->query_safe('BEGIN');
$renamer->query_safe('ALTER DATABASE app RENAME TO app_renamed');

my $waiting_worker = qq{
	SELECT pid FROM pg_locks
	 WHERE locktype = 'object' AND classid = 'pg_database'::regclass
	   AND objid = $dboid AND NOT granted ORDER BY pid LIMIT 1};
ok($node->poll_query_until('postgres', "SELECT EXISTS ($waiting_worker)"),
	'the next worker waits for the lock of the database');
my $starting = $node->safe_psql('postgres', $waiting_worker);

# the launcher that asked for it ends, and a new one starts
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
wait_for_launcher($node, 'a new launcher runs', $launcher);

# the worker the old launcher asked for never serves
$node->safe_psql('postgres', "SELECT pg_terminate_backend($starting)");
ok( $node->poll_query_until(
		'postgres', "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $starting)"
	),
	'the worker that was starting is gone');

$renamer->query_safe('ROLLBACK');
$renamer->quit;

wait_for_worker($node, 'app', 'the new launcher starts a worker for app');

# and it works: an event reaches a consumer, an expired lease comes back
$node->safe_psql(
	'app', q{
	SELECT outbox.subscribe('s', ARRAY['t'], lease => '1 second', max_attempts => 1);
	SELECT outbox.enqueue('t', '{}');
});
is($node->safe_psql('app', "SELECT count(*) FROM outbox.claim('s')"), '1',
	'a consumer claims the event');
ok( $node->poll_query_until(
		'app', "SELECT count(*) FROM outbox.dead_letters WHERE subscription = 's'", '1'),
	'the worker returns the expired lease');

$node->stop;
done_testing();
