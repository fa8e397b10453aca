
# The launcher's slots, for databases that have the extension, are limited
# (outbox.max_databases; 128 by default).  When every slot is taken the
# launcher says so in the log, once; a worker started by
# outbox.start_worker() in a database without a slot still serves it (it
# looks for work every outbox.naptime), and takes a slot once one is free.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('slot_limit');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'outbox'\noutbox.max_databases = 2\n");
$node->start;

for my $db (qw(a b c))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
}
my $log_offset = -s $node->logfile;
for my $db (qw(a b))
{
	$node->safe_psql($db, 'CREATE EXTENSION outbox');
	wait_for_worker($node, $db, "$db has a worker");
}

# the third database with the extension finds no slot
$node->safe_psql('c', 'CREATE EXTENSION outbox');
my $full = qr/outbox launcher has no slot for database "c": all 2 serve databases with the extension/;
ok(eval { $node->wait_for_log($full, $log_offset); 1 },
	'the launcher logs that c cannot be served');

# more launcher passes (one a second) say nothing more
sleep(3);
my @said = (log_since($node, $log_offset) =~ /outbox launcher has no slot for database "c"/g);
is(scalar(@said), 1, 'the launcher said it once');
is($node->safe_psql('postgres', worker_query('c')), '', 'c has no worker');

# a worker started by hand serves c without a slot
is($node->safe_psql('c', 'SELECT outbox.start_worker()'), 't',
	'start_worker() starts a worker in c');
my $worker = wait_for_worker($node, 'c', 'c has a worker');
ok( eval {
		$node->wait_for_log(qr/outbox worker for database "c" has no slot/, $log_offset);
		1;
	},
	'the worker logs that it has no slot');

sub lease_comes_back
{
	my ($db, $sub, $name) = @_;
	$node->safe_psql(
		$db, qq{
		SELECT outbox.subscribe('$sub', ARRAY['t'], lease => '1 second', max_attempts => 1);
		SELECT outbox.enqueue('t', '{}');
	});
	is($node->safe_psql($db, "SELECT count(*) FROM outbox.claim('$sub')"), '1',
		"$db: $sub claims a delivery");
	ok( $node->poll_query_until(
			$db,
			"SELECT last_error FROM outbox.dead_letters WHERE subscription = '$sub'",
			'lease expired'),
		$name);
}

# Wait until a LISTENing session of the database receives a notification
# of the subscription's channel after an enqueue.
sub notified
{
	my ($db, $sub) = @_;
	my $listener = $node->background_psql($db);
	$listener->query_safe(qq{LISTEN "outbox.$sub"});
	$node->safe_psql($db, "SELECT outbox.enqueue('t', '{}')");
	my $seen = 0;
	for (1 .. 300)
	{
		my ($out) = $listener->query('SELECT 1');
		if (($out // '') =~ /Asynchronous notification "outbox\.$sub"/)
		{
			$seen = 1;
			last;
		}
		usleep(100_000);
	}
	$listener->quit;
	return $seen;
}

lease_comes_back('c', 's1', 'c: the expired lease came back (served without a slot)');
ok(notified('c', 's1'), 'c: a LISTENing consumer is notified (without a slot)');

# b gives its slot back; c's worker takes it
$node->safe_psql('b', 'DROP EXTENSION outbox');
ok( eval {
		$node->wait_for_log(qr/outbox worker for database "c" now has a slot/, $log_offset);
		1;
	},
	'c\'s worker takes the slot b gave back');
is(join(',', worker_pids($node, 'c')), $worker, 'still the same one worker in c');
ok(notified('c', 's1'), 'c: a LISTENing consumer is notified (with a slot)');

done_testing();
