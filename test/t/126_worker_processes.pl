# Too few max_worker_processes (issue 9).  The launcher used to log a line
# with a hint every second for every database it could not start a worker
# in, also for databases without outbox that it only wanted to look at.
# Must hold: one line per database known to have outbox, again at most
# every few minutes, saying how many worker processes outbox needs; no
# line naming a database without outbox (those not looked at yet are
# counted in one line); and the workers come once there are processes
# enough.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('worker_processes');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'outbox'
max_logical_replication_workers = 0
max_parallel_workers_per_gather = 0
outbox.naptime = '100ms'
});
$node->start;
for my $db (qw(has_a has_b without_c without_d late))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
}
$node->safe_psql('has_a', 'CREATE EXTENSION outbox');
$node->safe_psql('has_b', 'CREATE EXTENSION outbox');

# After a restart with room for the launcher and one worker: the launcher
# looks at the databases one at a time, and the first with outbox keeps the
# only process.  The others cannot even be looked at.  The launcher runs a
# pass every 100 ms (outbox.naptime) and tries again at each.
$node->append_conf('postgresql.conf', "max_worker_processes = 2\n");
my $offset = -s $node->logfile;
$node->restart;
wait_for_worker($node, 'has_a', 'max_worker_processes = 2: has_a gets the only worker process');
sleep 5;
my $log = log_since($node, $offset);
unlike($log, qr/database "(without_c|without_d|late|postgres|template[01])"/,
	'no line names a database without outbox');
my @lines = $log =~ /^.*outbox launcher could not.*$/mg;
is(scalar @lines, 1, 'one line for the databases not looked at, not one per pass')
  or diag(join("\n", @lines));
like($log, qr/LOG:  outbox launcher could not start a worker to look for the extension in \d+ databases: no background worker process is free/,
	'it says the databases could not be looked at');
like($log, qr/DETAIL:  outbox needs max_worker_processes of at least \d+ here: 1 for the launcher, 2 to look for the extension in databases/,
	'and what outbox needs');

# late gets the extension while no process is free: the launcher now knows
# it has outbox, and says it has no worker, once
$offset = -s $node->logfile;
$node->safe_psql('late', 'CREATE EXTENSION outbox');
for my $i (1 .. 1800)
{
	$log = log_since($node, $offset);
	last if $log =~ /for database "late"/;
	select(undef, undef, undef, 0.1);
}
like($log, qr/LOG:  outbox launcher could not start a worker for database "late": no background worker process is free/,
	'the log says late has no worker');
like($log, qr/DETAIL:  outbox needs max_worker_processes of at least 5 here: 1 for the launcher, 2 to look for the extension in databases, and 1 for each of the 2 databases known to have outbox; other background workers \(parallel queries, logical replication\) take theirs from the same 2\./,
	'and how many worker processes outbox needs (has_a and late are known)');
sleep 5;
$log = log_since($node, $offset);
my @late = $log =~ /could not start a worker for database "late"/g;
is(scalar @late, 1, 'late: said once, not at every pass of the launcher');
unlike($log, qr/database "(without_c|without_d|postgres|template[01])"/,
	'still no line names a database without outbox');

# processes enough (the count the log gave, plus has_b): every database
# with outbox gets its worker, and nothing is said of missing workers
$node->append_conf('postgresql.conf', "max_worker_processes = 6\n");
$offset = -s $node->logfile;
$node->restart;
wait_for_worker($node, $_, "max_worker_processes = 6: $_ has a worker") for qw(has_a has_b late);
wait_for_no_worker($node, $_, "$_ has none") for qw(without_c without_d postgres);
unlike(log_since($node, $offset), qr/could not start/, 'and the log says nothing of missing workers');

$node->stop;
done_testing();
