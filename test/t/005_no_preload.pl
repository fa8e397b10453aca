# Without shared_preload_libraries: CREATE EXTENSION still starts a worker
# for its database, outbox.start_worker() starts one when none runs, and
# DROP DATABASE ... WITH (FORCE) drops a database whose worker runs.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'', 'outbox is not preloaded');

$node->safe_psql('postgres', 'CREATE DATABASE appdb');
$node->safe_psql('appdb',    'CREATE EXTENSION outbox');
my $worker = wait_for_worker($node, 'appdb',
	'CREATE EXTENSION starts a worker without preloading');
is(launcher_pid($node), '', 'and no launcher runs');

# the worker does the worker's work
$node->safe_psql(
	'appdb', q{
	SELECT outbox.subscribe('np', ARRAY['np'], max_attempts => 1, lease => '1 second');
	SELECT outbox.enqueue('np', '{"n": 1}');
});
is($node->safe_psql('appdb', "SELECT count(*) FROM outbox.claim('np', 10)"),
	'1', 'an event is claimed');
ok( $node->poll_query_until(
		'appdb',
		"SELECT last_error FROM outbox.dead_letters WHERE subscription = 'np'",
		'lease expired'),
	'the worker expires the lease of the committed claim');

# start_worker() while one runs
is($node->safe_psql('appdb', 'SELECT outbox.start_worker()'),
	'f', 'start_worker() returns false while a worker runs');
is(join(',', worker_pids($node, 'appdb')), $worker, 'still one worker, the same');

# nothing restarts a terminated worker here; start_worker() does
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($worker, 60000)"),
	't', 'the worker is terminated');
wait_for_no_worker($node, 'appdb', 'the terminated worker is gone');
is($node->safe_psql('appdb', 'SELECT outbox.start_worker()'),
	't', 'start_worker() returns true when no worker runs');
my $new = wait_for_worker($node, 'appdb', 'a worker runs again', $worker);
is($node->safe_psql('appdb', 'SELECT outbox.start_worker()'),
	'f', 'and a second start_worker() returns false');
is(join(',', worker_pids($node, 'appdb')), $new, 'still one worker');

# start_worker() is for the owner or a superuser
$node->safe_psql('postgres', 'CREATE ROLE someone LOGIN');
my ($ret, $stdout, $stderr) = $node->psql('appdb', 'SELECT outbox.start_worker()',
	extra_params => [ '-U', 'someone' ]);
like($stderr, qr/permission denied/, 'start_worker() is refused to other roles');

# a worker per database here too
$node->safe_psql('postgres', 'CREATE DATABASE second');
$node->safe_psql('second',   'CREATE EXTENSION outbox');
wait_for_worker($node, 'second', 'a second database gets its own worker');
is(join(',', worker_pids($node, 'appdb')), $new, 'the first keeps its own');

# DROP EXTENSION stops the worker here as well
$node->safe_psql('second', 'DROP EXTENSION outbox');
wait_for_no_worker($node, 'second', 'DROP EXTENSION stops the worker');

# DROP DATABASE WITH (FORCE) drops a database whose worker runs
($ret, $stdout, $stderr) =
  $node->psql('postgres', 'DROP DATABASE appdb WITH (FORCE)');
is($ret, 0, 'DROP DATABASE WITH (FORCE) succeeds without preloading')
  or diag $stderr;
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'appdb'"),
	'0', 'the database is gone');
wait_for_no_worker($node, 'appdb', 'and so is its worker');

$node->stop;
done_testing();
