# With shared_preload_libraries = 'outbox': a launcher runs, and a worker
# runs for every database that has the extension, with no manual step;
# none stays in databases without it, none goes to templates or to
# databases that do not allow connections.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('autostart');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;

# the launcher, connected to no database
my $launcher = wait_for_launcher($node, 'a launcher runs after server start');
is( $node->safe_psql(
		'postgres',
		"SELECT datname IS NULL FROM pg_stat_activity WHERE backend_type = 'outbox launcher'"
	),
	't',
	'the launcher is connected to no database');

# CREATE EXTENSION in a new database brings it a worker
$node->safe_psql('postgres', 'CREATE DATABASE appdb');
$node->safe_psql('appdb', 'CREATE EXTENSION outbox');
my $worker = wait_for_worker($node, 'appdb',
	'CREATE EXTENSION in a new database starts a worker for it');
like(
	$node->safe_psql(
		'postgres',
		"SELECT backend_type FROM pg_stat_activity WHERE pid = $worker"),
	qr/^outbox/,
	"the worker's backend_type starts with outbox");

# the worker does the worker's work there: an expired lease is returned
$node->safe_psql(
	'appdb', q{
	SELECT outbox.subscribe('auto', ARRAY['auto'], max_attempts => 1, lease => '1 second');
	SELECT outbox.enqueue('auto', '{"n": 1}');
});
is($node->safe_psql('appdb', "SELECT count(*) FROM outbox.claim('auto', 10)"),
	'1', 'an event is claimed');
ok( $node->poll_query_until(
		'appdb',
		"SELECT last_error FROM outbox.dead_letters WHERE subscription = 'auto'",
		'lease expired'),
	'the worker expires the lease of the committed claim');

# outbox.start_worker() starts nothing while the worker runs
is($node->safe_psql('appdb', 'SELECT outbox.start_worker()'),
	'f', 'start_worker() returns false while a worker runs');
is(join(',', worker_pids($node, 'appdb')),
	$worker, 'still the one worker, the same one');

# the postgres database, without the extension, keeps no worker
wait_for_no_worker($node, 'postgres',
	'no worker lingers in a database without the extension');
like(
	slurp_file($node->logfile),
	qr/outbox worker started for database "appdb"/,
	'the worker names its database in the log');
unlike(
	slurp_file($node->logfile),
	qr/outbox worker started for database "postgres"/,
	'no worker ever served the postgres database');

# a worker that dies is replaced by the launcher
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker, 60000)");
$worker = wait_for_worker($node, 'appdb',
	'the launcher starts a new worker after its worker was terminated',
	$worker);

# databases that are templates or do not allow connections get no worker
$node->safe_psql('postgres', 'CREATE DATABASE tpl');
$node->safe_psql('tpl',      'CREATE EXTENSION outbox');
$node->safe_psql('postgres', 'CREATE DATABASE noconn');
$node->safe_psql('noconn',   'CREATE EXTENSION outbox');
wait_for_worker($node, 'tpl',    'tpl has a worker while it is an ordinary database');
wait_for_worker($node, 'noconn', 'noconn has a worker while it allows connections');
$node->safe_psql('postgres', 'ALTER DATABASE tpl IS_TEMPLATE true');
$node->safe_psql('postgres', 'ALTER DATABASE noconn ALLOW_CONNECTIONS false');

# after a restart: worker within the contract's bound (poll), launcher again
my $log_offset = -s $node->logfile;
$node->restart;
$launcher = wait_for_launcher($node, 'a launcher runs after a restart', $launcher);
$worker = wait_for_worker($node, 'appdb', 'appdb has a worker after a restart');

# nobody is connected to the template: it can be copied; the copy has the
# extension and so gets a worker of its own
my ($ret, $stdout, $stderr) =
  $node->psql('postgres', 'CREATE DATABASE fromtpl TEMPLATE tpl');
is($ret, 0, 'a template that has outbox can be copied after a restart')
  or diag $stderr;
wait_for_worker($node, 'fromtpl',
	'a database copied from a template with outbox gets a worker');

wait_for_no_worker($node, 'tpl',    'a template database has no worker');
wait_for_no_worker($node, 'noconn', 'a database with datallowconn = false has no worker');
my $log = log_since($node, $log_offset);
unlike($log, qr/outbox worker started for database "tpl"/,
	'no worker started in the template after the restart');
unlike($log, qr/outbox worker started for database "noconn"/,
	'no worker started in the database that allows no connections');

$node->stop;
done_testing();
