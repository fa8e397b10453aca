
# The worker does not busy-loop on an expired lease it cannot return yet
# (issue 8, fault 8): while an expired lease's batch row is locked by an
# open ack, the worker used to think the lease was due at once and woke
# every millisecond.  Now it tries again at its next regular round.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('no_busy_loop');

# The database's transaction count, with the worker's counts flushed: a
# background worker reports its statistics when it exits, so it is stopped
# (the launcher starts a new one) and this waits for it to be gone.
sub xacts_after_worker_exit
{
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'");
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid")
	  or die "the worker did not exit";
	my $n = $node->safe_psql('postgres',
		"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'");
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'outbox worker'")
	  or die "no new worker";
	return $n;
}

my $before = xacts_after_worker_exit();

# an open ack of one of them holds the batch row; the lease of the other
# runs out meanwhile
$node->safe_psql(
	'postgres', q{
	SELECT outbox.subscribe('s', ARRAY['t'], lease => '2 seconds');
	SELECT outbox.enqueue('t', jsonb_build_object('n', i)) FROM generate_series(1, 2) i;
});
my ($id1, $id2) = split /\n/,
  $node->safe_psql('postgres', "SELECT event_id FROM outbox.claim('s', 2) ORDER BY 1");
ok($id1 && $id2, 'two deliveries claimed in one batch');

my $bg = $node->background_psql('postgres');
$bg->query_safe('BEGIN');
is($bg->query_safe("SELECT outbox.ack('s', $id1)"), 't', 'an ack is open');

# a few seconds with the lease of the other one expired but its batch row
# locked: the worker runs a round a second (a dozen transactions or so),
# not one a millisecond
sleep(6);
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.delivery WHERE last_error = 'lease expired'"),
	'0', 'no lease is returned while the batch row is locked');
my $xacts = xacts_after_worker_exit() - $before;
cmp_ok($xacts, '<', 500,
	"the worker did not busy-loop while the batch row was locked ($xacts transactions)");

# the ack commits: the other lease is returned
$bg->query_safe('COMMIT');
$bg->quit;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM outbox.delivery WHERE last_error = 'lease expired'"
		  . " AND event_id = $id2"),
	'the other lease is returned once the ack committed');

done_testing();
