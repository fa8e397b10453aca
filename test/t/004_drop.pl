# DROP EXTENSION stops the database's worker and CREATE EXTENSION brings it
# back; DROP DATABASE of a database with outbox succeeds without stopping
# anything by hand, and no worker ever comes back for it; a DROP DATABASE
# that fails leaves the worker serving its database.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('drop');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
# a short naptime: the launcher looks at pg_database often, so the checks
# that no worker comes back for a dropped database see many of its passes
$node->append_conf('postgresql.conf', "outbox.naptime = '100ms'\n");
$node->start;

# Commit a claim with a one-second lease in $db and wait until a worker
# returns it (dead letter, max_attempts 1): proof that $db is served.
my $served = 0;
sub check_served
{
	my ($db, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	$served++;
	my $sub = "served_$served";
	$node->safe_psql(
		$db, qq{
		SELECT outbox.subscribe('$sub', ARRAY['$sub'], max_attempts => 1, lease => '1 second');
		SELECT outbox.enqueue('$sub', '{}');
		SELECT count(*) FROM outbox.claim('$sub', 10);
	});
	ok( $node->poll_query_until(
			$db,
			"SELECT last_error FROM outbox.dead_letters WHERE subscription = '$sub'",
			'lease expired'),
		$name);
}

$node->safe_psql('postgres', 'CREATE DATABASE appdb');
$node->safe_psql('appdb',    'CREATE EXTENSION outbox');
my $worker = wait_for_worker($node, 'appdb', 'appdb has a worker');

# DROP EXTENSION stops the worker; CREATE EXTENSION brings one back
$node->safe_psql('appdb', 'DROP EXTENSION outbox');
wait_for_no_worker($node, 'appdb', 'DROP EXTENSION stops the worker of its database');
$node->safe_psql('appdb', 'CREATE EXTENSION outbox');
$worker = wait_for_worker($node, 'appdb', 'CREATE EXTENSION again brings a worker back',
	$worker);
check_served('appdb', 'the worker serves the re-created extension');

# dropped and created again in one transaction: the database is served
# by a worker that knows the new extension's objects
$node->safe_psql('appdb', 'BEGIN; DROP EXTENSION outbox; CREATE EXTENSION outbox; COMMIT;');
$worker = wait_for_worker($node, 'appdb',
	'a worker runs after DROP and CREATE EXTENSION in one transaction');
check_served('appdb', 'and it serves the new extension');

# DROP DATABASE while the worker runs: succeeds, nothing stopped by hand
my $oid = db_oid($node, 'appdb');
my $log_offset = -s $node->logfile;
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE appdb');
is($ret, 0, 'DROP DATABASE of a database with a running worker succeeds')
  or diag $stderr;
wait_for_no_worker($node, 'appdb', 'no worker for the dropped database');

# many launcher passes later (another database gets its worker and is
# served), still no worker ever came back for the dropped one
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other',    'CREATE EXTENSION outbox');
wait_for_worker($node, 'other', 'a database created after the drop gets a worker');
check_served('other', 'and is served');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datid = $oid OR datname = 'appdb'"),
	'0',
	'nothing is connected to the dropped database');
my $log = log_since($node, $log_offset);
unlike($log, qr/outbox worker started for database "appdb"/,
	'no worker started again for the dropped database');
unlike($log, qr/database $oid does not exist|database "appdb" does not exist/,
	'no worker tried to connect to the dropped database');

# DROP DATABASE just after CREATE EXTENSION, while the worker is starting
for my $i (1 .. 3)
{
	$node->safe_psql('postgres', "CREATE DATABASE race_$i");
	$node->safe_psql("race_$i", 'CREATE EXTENSION outbox');
	($ret, $stdout, $stderr) = $node->psql('postgres', "DROP DATABASE race_$i");
	is($ret, 0, "DROP DATABASE right after CREATE EXTENSION succeeds ($i)")
	  or diag $stderr;
}

# DROP DATABASE ... WITH (FORCE) works as well
$node->safe_psql('postgres', 'CREATE DATABASE forced');
$node->safe_psql('forced',   'CREATE EXTENSION outbox');
wait_for_worker($node, 'forced', 'forced has a worker');
($ret, $stdout, $stderr) =
  $node->psql('postgres', 'DROP DATABASE forced WITH (FORCE)');
is($ret, 0, 'DROP DATABASE WITH (FORCE) succeeds') or diag $stderr;
wait_for_no_worker($node, 'forced', 'no worker for the force-dropped database');

# A DROP DATABASE that fails does not take the worker away from a database
# that stays: notifications (100 ms) and lease expiry (lease + 2 s) depend
# on it.  Checked at once after the failed command.
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
for my $db ('keep_a', 'keep_b')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION outbox');
}
my $worker_a = wait_for_worker($node, 'keep_a', 'keep_a has a worker');
my $worker_b = wait_for_worker($node, 'keep_b', 'keep_b has a worker');

($ret, $stdout, $stderr) =
  $node->psql('postgres', 'BEGIN; DROP DATABASE keep_a; ROLLBACK;');
like($stderr, qr/cannot run inside a transaction block/,
	'DROP DATABASE in a transaction block fails');
is(join(',', worker_pids($node, 'keep_a')),
	$worker_a, 'the worker still runs after a DROP DATABASE that failed');

($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE keep_b',
	extra_params => [ '-U', 'mallory' ]);
like($stderr, qr/must be owner of database keep_b/,
	'DROP DATABASE by a role that does not own the database fails');
is(join(',', worker_pids($node, 'keep_b')),
	$worker_b, 'the worker still runs after a non-owner tried to drop its database');

$node->stop;
done_testing();
