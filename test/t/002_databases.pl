# Two databases with the extension: each gets a worker of its own, and each
# worker serves its own database only.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('databases');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;

my @dbs = ('db_one', 'db_two');
my %pid;
for my $db (@dbs)
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION outbox');
}
for my $db (@dbs)
{
	$pid{$db} = wait_for_worker($node, $db, "$db has a worker");
}
isnt($pid{db_one}, $pid{db_two}, 'the two databases have different workers');

# each worker is connected to its own database, and there are exactly two
is( $node->safe_psql(
		'postgres', q{
		SELECT string_agg(datname || '=' || pid, ',' ORDER BY datname)
		  FROM pg_stat_activity WHERE backend_type = 'outbox worker'}),
	"db_one=$pid{db_one},db_two=$pid{db_two}",
	'one worker per database, each with its own datname');

# each database's queue works, and its worker returns its expired leases;
# the same subscription name and topic in both databases stay apart
for my $db (@dbs)
{
	$node->safe_psql(
		$db, qq{
		SELECT outbox.subscribe('jobs', ARRAY['job'], max_attempts => 1, lease => '1 second');
		SELECT outbox.enqueue('job', jsonb_build_object('db', '$db'));
	});
}
for my $db (@dbs)
{
	is($node->safe_psql($db, "SELECT payload->>'db' FROM outbox.claim('jobs', 10)"),
		$db, "a claim in $db gets the event of $db only");
}
for my $db (@dbs)
{
	ok( $node->poll_query_until(
			$db, q{
			SELECT string_agg(payload->>'db' || ':' || last_error, ',')
			  FROM outbox.dead_letters WHERE subscription = 'jobs'},
			"$db:lease expired"),
		"the lease of $db is returned by a worker, once");
}

# stopping one database's worker leaves the other's alone
$node->safe_psql('db_one', 'DROP EXTENSION outbox');
wait_for_no_worker($node, 'db_one', 'DROP EXTENSION in db_one stops its worker');
is(join(',', worker_pids($node, 'db_two')),
	$pid{db_two}, 'the worker of db_two is untouched');

# and db_two is still served: a new expired lease is returned there
$node->safe_psql('db_two', q{SELECT outbox.enqueue('job', '{"db": "db_two", "n": 2}')});
is( $node->safe_psql(
		'db_two', "SELECT payload->>'n' FROM outbox.claim('jobs', 10)"),
	'2',
	'db_two: the second event is claimed');
ok( $node->poll_query_until(
		'db_two',
		"SELECT count(*) FROM outbox.dead_letters WHERE subscription = 'jobs'",
		'2'),
	'db_two: its worker still returns expired leases');

$node->stop;

# Room for one worker only (the launcher takes the other slot): the second
# database gets its worker as soon as the first one's is gone, also when
# someone tried outbox.start_worker() there while there was no room.
my $scarce = PostgreSQL::Test::Cluster->new('scarce');
$scarce->init;
$scarce->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'outbox'
max_worker_processes = 2
max_logical_replication_workers = 0
max_parallel_workers_per_gather = 0
});
$scarce->start;
for my $db (@dbs)
{
	$scarce->safe_psql('postgres', "CREATE DATABASE $db");
}
$scarce->safe_psql('db_one', 'CREATE EXTENSION outbox');
wait_for_worker($scarce, 'db_one', 'db_one has the only worker slot');
$scarce->safe_psql('db_two', 'CREATE EXTENSION outbox');
my ($ret, $stdout, $stderr) = $scarce->psql('db_two', 'SELECT outbox.start_worker()');
like($stderr, qr/could not start an outbox worker/,
	'start_worker() in db_two fails while no worker slot is free');
$scarce->safe_psql('db_one', 'DROP EXTENSION outbox');
wait_for_no_worker($scarce, 'db_one', 'db_one gives up its worker');
wait_for_worker($scarce, 'db_two',
	'db_two gets a worker once a slot is free, after the failed start_worker()');

$scarce->stop;
done_testing();
