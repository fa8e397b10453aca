# An error while working on one database is logged and retried: it does
# not kill that worker, the launcher, or another database's worker, and
# the worker carries on once the cause is gone.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('containment');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'outbox'\noutbox.naptime = '100ms'\n");
$node->start;

for my $db ('broken', 'healthy')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION outbox');
	$node->safe_psql($db,
		"SELECT outbox.subscribe('s', ARRAY['t'], lease => '1 second')");
}
my $broken_pid = wait_for_worker($node, 'broken', 'broken has a worker');
my $healthy_pid = wait_for_worker($node, 'healthy', 'healthy has a worker');
my $launcher = launcher_pid($node);

# Break one database: the worker's lease expiry reads this table.
my $log_offset = -s $node->logfile;
$node->safe_psql('broken',
	'ALTER TABLE outbox.delivery RENAME TO delivery_moved');

# The healthy database keeps being served: its expired lease comes back.
$node->safe_psql('healthy', "SELECT outbox.enqueue('t', '{\"n\": 1}')");
$node->safe_psql('healthy', "SELECT count(*) FROM outbox.claim('s')");
ok( $node->poll_query_until(
		'healthy',
		"SELECT count(*) = 1 FROM outbox.claim('s') WHERE attempt = 2"),
	'the healthy database has its expired lease returned');

# The broken one logs its error and keeps the same worker.
my $logged = 0;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	$logged = log_since($node, $log_offset) =~ /relation "outbox\.delivery" does not exist/;
	last if $logged;
	usleep(100_000);
}
ok($logged, 'the error is logged');
is(join(',', worker_pids($node, 'broken')), $broken_pid,
	'the worker of the broken database did not die');
is(join(',', worker_pids($node, 'healthy')), $healthy_pid,
	'the other database kept its worker');
is(launcher_pid($node), $launcher, 'the launcher kept running');

# Repaired, the same worker carries on.
$node->safe_psql('broken',
	'ALTER TABLE outbox.delivery_moved RENAME TO delivery');
$node->safe_psql('broken', "SELECT outbox.enqueue('t', '{\"n\": 2}')");
$node->safe_psql('broken', "SELECT count(*) FROM outbox.claim('s')");
ok( $node->poll_query_until(
		'broken',
		"SELECT count(*) = 1 FROM outbox.claim('s') WHERE attempt = 2"),
	'after the repair the worker returns expired leases again');
is(join(',', worker_pids($node, 'broken')), $broken_pid, 'with the same worker');

$node->stop;
done_testing();
