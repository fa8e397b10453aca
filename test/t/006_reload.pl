# outbox.retention and outbox.naptime: time settings with units, checked
# ranges, reloaded on SIGHUP without a restart and without a new worker.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('reload');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE appdb');
$node->safe_psql('appdb',    'CREATE EXTENSION outbox');
my $worker   = wait_for_worker($node, 'appdb', 'appdb has a worker');
my $launcher = wait_for_launcher($node, 'a launcher runs');

# what they are
is( $node->safe_psql(
		'postgres', q{
		SELECT string_agg(name || ' ' || vartype || ' ' || unit || ' ' || context
		                  || ' ' || boot_val, ', ' ORDER BY name)
		  FROM pg_settings WHERE name IN ('outbox.naptime', 'outbox.retention')}),
	'outbox.naptime integer ms sighup 1000, outbox.retention integer s sighup 604800',
	'naptime is in ms and retention in s, both reloadable, defaults 1 s and 7 days');
is($node->safe_psql('postgres', 'SHOW outbox.retention'), '7d', 'SHOW outbox.retention: 7d');
is($node->safe_psql('postgres', 'SHOW outbox.naptime'),   '1s', 'SHOW outbox.naptime: 1s');

# good values with units are accepted, bad ones refused with 22023
for my $ok ([ 'outbox.retention', '1s' ], [ 'outbox.retention', '7d' ],
	[ 'outbox.retention', '36h' ], [ 'outbox.naptime', '250ms' ],
	[ 'outbox.naptime', '1s' ], [ 'outbox.naptime', '10ms' ])
{
	my ($name, $value) = @$ok;
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "ALTER SYSTEM SET $name = '$value'");
	is($ret, 0, "$name = '$value' is accepted") or diag $stderr;
}
for my $bad ([ 'outbox.retention', '0' ], [ 'outbox.retention', '-1s' ],
	[ 'outbox.retention', 'forever' ], [ 'outbox.retention', '1 fortnight' ],
	[ 'outbox.naptime', '0' ], [ 'outbox.naptime', '5ms' ],
	[ 'outbox.naptime', '-1s' ], [ 'outbox.naptime', '2h' ],
	[ 'outbox.naptime', 'soon' ])
{
	my ($name, $value) = @$bad;
	my ($ret, $stdout, $stderr) = $node->psql(
		'postgres', "ALTER SYSTEM SET $name = '$value'",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($stderr, qr/ERROR:  22023: .*(invalid value|outside the valid range)/,
		"$name = '$value' is refused");
}
$node->safe_psql('postgres', 'ALTER SYSTEM RESET ALL');

# they are reloadable, not settable in a session
my ($ret, $stdout, $stderr) = $node->psql('postgres', "SET outbox.naptime = '2s'");
like($stderr, qr/cannot be changed now/, 'SET outbox.naptime in a session is refused');

# postgresql.conf + SIGHUP: new sessions see the new values, the worker
# and the launcher stay the same processes
$node->append_conf('postgresql.conf',
	"outbox.naptime = '250ms'\noutbox.retention = '1h'\n");
$node->reload;
ok( $node->poll_query_until(
		'postgres',
		"SELECT current_setting('outbox.naptime') || ' ' || current_setting('outbox.retention')",
		'250ms 1h'),
	'postgresql.conf values are in force after a reload');
is(join(',', worker_pids($node, 'appdb')), $worker, 'the worker was not restarted');
is(launcher_pid($node), $launcher, 'nor was the launcher');

# ALTER SYSTEM + reload
$node->safe_psql('postgres', "ALTER SYSTEM SET outbox.naptime = '2s'");
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW outbox.naptime', '2s'),
	'ALTER SYSTEM SET outbox.naptime is in force after a reload');
is(join(',', worker_pids($node, 'appdb')), $worker, 'the worker was not restarted');

# a bad value in postgresql.conf is refused at reload; the old one stays
$node->safe_psql('postgres', 'ALTER SYSTEM RESET outbox.naptime');
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW outbox.naptime', '250ms'),
	'ALTER SYSTEM RESET outbox.naptime is in force after a reload');
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "outbox.naptime = '1ms'\n");
$node->reload;
ok( eval {
		$node->wait_for_log(
			qr/outside the valid range for parameter "outbox\.naptime"/,
			$log_offset);
	},
	'the bad value is reported in the log');
is($node->safe_psql('postgres', 'SHOW outbox.naptime'),
	'250ms', 'a bad value at reload leaves the previous one in force');
ok($node->safe_psql('postgres',
		"SELECT count(*) > 0 FROM pg_file_settings WHERE name = 'outbox.naptime' AND error IS NOT NULL"),
	'pg_file_settings shows the error');
is(join(',', worker_pids($node, 'appdb')), $worker, 'the worker is still running');

# the running worker applies a reloaded retention: with 1 s, the events
# every subscription is done with are removed by it
$node->safe_psql(
	'appdb', q{
	SELECT outbox.subscribe('ret', ARRAY['ret']);
	SELECT outbox.enqueue('ret', jsonb_build_object('n', g)) FROM generate_series(1, 3) g;
});
is( $node->safe_psql(
		'appdb', q{
		WITH c AS (SELECT * FROM outbox.claim('ret', 10))
		SELECT outbox.ack('ret', array_agg(event_id)) FROM c}),
	'3',
	'three events claimed and acked');
$node->append_conf('postgresql.conf', "outbox.naptime = '100ms'\noutbox.retention = '1s'\n");
$node->reload;
ok($node->poll_query_until('postgres', 'SHOW outbox.retention', '1s'),
	'retention 1s is in force');
ok($node->poll_query_until('appdb', 'SELECT count(*) FROM outbox.event', '0'),
	'the running worker removes done events after the reloaded retention');
is(join(',', worker_pids($node, 'appdb')), $worker, 'still the same worker');

$node->stop;
done_testing();
