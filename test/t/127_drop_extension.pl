# DROP EXTENSION outbox while everything runs (issue 9).  It deadlocked
# with the worker when a consumer held a claim open and producers ran
# (DROP waited for the worker's lock on a table, the worker for DROP's on
# another), enqueues in flight failed with "could not open relation with
# OID ...", and the outbox schema stayed behind.  Must hold: DROP succeeds,
# no deadlock anywhere, every call in flight either completes or fails with
# a clear error, the schema is gone, and the worker goes and comes back
# with CREATE EXTENSION.

use strict;
use warnings FATAL => 'all';

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('drop_extension');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'outbox'
outbox.naptime = '20ms'
outbox.chain_rotation = '100ms'
deadlock_timeout = '50ms'
max_connections = 40
log_statement = none
});
$node->start;
my $bindir = $node->config_data('--bindir');
my $script = $node->basedir . '/enqueue.sql';
append_to_file($script, q{SELECT outbox.enqueue('t', '{"n": 1}', key => (random() * 10)::int::text);} . "\n");

for my $round (1 .. 3)
{
	$node->safe_psql('postgres', q{
		CREATE EXTENSION outbox;
		SELECT outbox.subscribe('s', ARRAY['t'], lease => '100 ms', max_attempts => 1000);
		SELECT outbox.subscribe('o', ARRAY['t'], lease => '100 ms', ordered => true);
	});
	wait_for_worker($node, 'postgres', "round $round: the worker serves the database");
	my $offset = -s $node->logfile;

	# producers, in a loop, until DROP EXTENSION makes each fail (a
	# pgbench client stops at its first error)
	my ($out, $err) = ('', '');
	my $producers = IPC::Run::start(
		[ "$bindir/pgbench", '-n', '-c', '4', '-R', '200', '-T', '600', '-f', $script,
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
	# consumers: committed claims whose leases the worker returns, acks
	for my $i (1 .. 10)
	{
		$node->safe_psql('postgres', q{
			SELECT count(*) FROM outbox.claim('s', 20);
			SELECT count(*) FROM outbox.claim('o', 20);
			SELECT count(outbox.ack('s', event_id)) FROM outbox.claim('s', 20);
		});
	}
	# a consumer holds a claim (and an ack) open
	my $holder = $node->background_psql('postgres', on_error_stop => 0);
	$holder->query_safe('BEGIN');
	$holder->query_safe(q{SELECT count(outbox.ack('s', event_id)) FROM outbox.claim('s', 5)});
	$holder->query_safe(q{SELECT count(*) FROM outbox.claim('o', 5)});

	my ($dout, $derr) = ('', '');
	my $drop = IPC::Run::start(
		[ "$bindir/psql", '-X', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		  '-d', 'postgres', '-c', 'DROP EXTENSION outbox' ],
		'>', \$dout, '2>', \$derr);
	# DROP waits for the holder; the worker and the producers go on meanwhile
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT outbox.enqueue%'}),
		'4', "round $round: the producers run");
	ok( $node->poll_query_until('postgres', q{
			SELECT count(*) > 0 FROM pg_stat_activity
			 WHERE query = 'DROP EXTENSION outbox' AND wait_event_type = 'Lock'}),
		"round $round: DROP EXTENSION waits for the consumer's open transaction");
	sleep 1;
	$holder->query('COMMIT');
	$holder->quit;
	$drop->finish;
	is($derr, '', "round $round: DROP EXTENSION succeeds");
	$producers->finish;
	like($err, qr/aborted/, "round $round: the producers ran until DROP EXTENSION stopped them");

	my $log = log_since($node, $offset);
	unlike($log, qr/deadlock detected/, "round $round: no deadlock");
	unlike($log, qr/could not open relation with OID/, "round $round: no call in flight fails on a relation gone");
	my @errors = grep { /ERROR:/ } split /\n/, $log;
	my @unclear = grep { !/function outbox\.\w+\(.*\) does not exist|extension "outbox" (was dropped|does not exist)/ } @errors;
	is(join("\n", @unclear), '', "round $round: every call that failed says the extension is gone");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'outbox'}),
		'0', "round $round: the schema is gone");
	wait_for_no_worker($node, 'postgres', "round $round: the worker has stopped");
}

# Administration functions (PL/pgSQL) in an open transaction: they take
# the extension's lock before any table, as the C functions do, so DROP
# EXTENSION waits for them holding nothing.  Before, grant_produce() held
# outbox.producer without it; DROP took the extension's lock and locked
# tables, in the order they were created, until it waited for that one,
# and the pause() that followed wanted outbox.subscription, which DROP
# held: a deadlock.
{
	$node->safe_psql('postgres', q{
		CREATE ROLE r1;
		CREATE EXTENSION outbox;
		SELECT outbox.subscribe('s', ARRAY['t']);
	});
	my $offset = -s $node->logfile;
	my $admin = $node->background_psql('postgres', on_error_stop => 0);
	$admin->query_safe('BEGIN');
	$admin->query_safe(q{SELECT outbox.grant_produce('r1')});
	my ($dout, $derr) = ('', '');
	my $drop = IPC::Run::start(
		[ "$bindir/psql", '-X', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		  '-d', 'postgres', '-c', 'DROP EXTENSION outbox' ],
		'>', \$dout, '2>', \$derr);
	ok( $node->poll_query_until('postgres', q{
			SELECT count(*) > 0 FROM pg_stat_activity
			 WHERE query = 'DROP EXTENSION outbox' AND wait_event_type = 'Lock'}),
		'DROP EXTENSION waits for the administration function');
	sleep 1;
	$admin->query(q{SELECT outbox.pause('s')});
	is($admin->{stderr}, '', 'pause() in the same transaction goes on');
	$admin->query('COMMIT');
	$admin->quit;
	$drop->finish;
	is($derr, '', 'then DROP EXTENSION succeeds');
	unlike(log_since($node, $offset), qr/deadlock detected/, 'no deadlock');
}

# pg_upgrade's restore creates the schema, then runs DROP EXTENSION IF
# EXISTS outbox before it creates the (empty) extension in the schema: a
# DROP that removes no extension must leave the schema alone.
$node->safe_psql('postgres', q{CREATE SCHEMA outbox; DROP EXTENSION IF EXISTS outbox;});
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'outbox'}),
	'1', 'DROP EXTENSION IF EXISTS without the extension keeps the schema');
$node->safe_psql('postgres', 'DROP SCHEMA outbox');

# and it comes back, and serves
$node->safe_psql('postgres', q{
	CREATE EXTENSION outbox;
	SELECT outbox.subscribe('s', ARRAY['t'], lease => '100 ms', max_attempts => 1);
	SELECT outbox.enqueue('t', '{}');
	SELECT count(*) FROM outbox.claim('s');
});
wait_for_worker($node, 'postgres', 'the worker serves again after CREATE EXTENSION');
ok($node->poll_query_until('postgres', q{SELECT dead = 1 FROM outbox.stats WHERE subscription = 's'}),
	'and returns an expired lease');
isnt(launcher_pid($node), '', 'the launcher runs');

$node->stop;
done_testing();
