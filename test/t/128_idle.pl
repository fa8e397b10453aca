
# An idle database costs nothing (issue 9).
#
# After traffic that is fully drained, with timers short enough to fire
# many times (chain rotation every 100 ms, retention 2 s, a round every
# 100 ms), the worker writes no WAL, runs no transaction per subscription
# (300 idle subscriptions), and a long query on a hot standby is not
# cancelled.  Before, every round advanced every subscription (a cursor
# row each, and TRUNCATEs of chain partitions every rotation).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use OutboxBehaviour;

my $primary = PostgreSQL::Test::Cluster->new('idle_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'outbox'",
		"outbox.chain_rotation = '100ms'",
		"outbox.retention = '2s'",
		"outbox.naptime = '100ms'",
		# only the worker may write: no autovacuum, no ANALYZE
		"autovacuum = off") . "\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION outbox');
wait_for_worker($primary);

# three busy subscriptions, 300 that never get an event
$primary->safe_psql('postgres', q{
	SELECT outbox.subscribe('busy' || i, ARRAY['t' || i]) FROM generate_series(1, 3) i;
	SELECT outbox.subscribe('idle' || i, ARRAY['never' || i]) FROM generate_series(1, 300) i;
});

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('idle_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->append_conf('postgresql.conf', "max_standby_streaming_delay = '500ms'\n");
$standby->start;

# traffic, claimed and acked to the last event
for my $round (1 .. 20)
{
	$primary->safe_psql('postgres',
		"SELECT outbox.enqueue('t' || (i % 3 + 1), jsonb_build_object('i', i))"
		  . " FROM generate_series(1, 10) i");
	for my $s (1 .. 3)
	{
		$primary->safe_psql('postgres',
			"SELECT outbox.ack('busy$s', array_agg(event_id)) FROM outbox.claim('busy$s', 100)");
	}
}
is( $primary->safe_psql('postgres',
		'SELECT sum(ready + scheduled + leased + dead) FROM outbox.stats'),
	'0', 'everything was delivered and acked');

# PostgreSQL's own one-off writes out of the way: hint bits and pruning
# of catalog pages that new sessions would otherwise do in the window
$primary->safe_psql('postgres', 'VACUUM (FREEZE)');

sub lsn
{
	return $primary->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
}

sub wal_since
{
	my ($from) = @_;
	return $primary->safe_psql('postgres',
		"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$from')");
}

# Let what traffic left behind settle: events past retention, folds, the
# last rotations.  Quiet means two seconds without a write; the bound is
# only a safety net, the window below is the assertion.
for my $i (1 .. 30)
{
	my $from = lsn();
	sleep(2);
	last if wal_since($from) == 0;
}

# Reads of outbox's tables, by every backend: the worker flushes its
# statistics at least once a second while it runs rounds, and looks at
# its activity count every naptime even when idle.
sub outbox_scans
{
	return $primary->safe_psql('postgres', q{
		SELECT pg_stat_force_next_flush();
		SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)
		  FROM pg_stat_user_tables WHERE schemaname = 'outbox'});
}

my $from = lsn();
my $scans_from = outbox_scans();
my $gen_from = $primary->safe_psql('postgres', 'SELECT gen FROM outbox.chain_state');

# meanwhile, a long read on the standby holding every bookkeeping and
# event partition
$primary->wait_for_catchup($standby);
my ($out, $err) = ('', '');
my $ok = $standby->psql(
	'postgres', q{
	BEGIN;
	SELECT count(*) FROM outbox.event, outbox.cursor, outbox.batch, outbox.settle, outbox.stats;
	SELECT pg_sleep(10);
	COMMIT;
},
	stdout => \$out,
	stderr => \$err,
	on_error_stop => 1);
is($ok, 0, 'a long query on the standby was not cancelled while the primary was idle');
unlike($err, qr/conflict with recovery/, 'no recovery conflict');

my $wal = wal_since($from);
note("idle window from $from to " . lsn());
sleep(2);						# a flush of the worker's statistics
my $scans = outbox_scans() - $scans_from;
cmp_ok($wal, '<=', 512, "the idle primary wrote no WAL in 10 s ($wal bytes)");
is($primary->safe_psql('postgres', 'SELECT gen FROM outbox.chain_state'),
	$gen_from, 'no chain generation was started');

# the worker sleeps: no round of reads every 100 ms (let alone one per
# subscription, 303 of them); what is counted is this test's own reads
cmp_ok($scans, '<', 20, "the worker read outbox's tables in no round ($scans scans in 12 s)");
is( $primary->safe_psql('postgres',
		"SELECT state || ' ' || wait_event FROM pg_stat_activity WHERE backend_type = 'outbox worker'"),
	'idle Extension', 'the worker is asleep on its latch');

# and it still works: a new event is delivered
$primary->safe_psql('postgres', "SELECT outbox.enqueue('t1', '{}')");
is($primary->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('busy1', 10)"),
	'1', 'a new event is claimed after the idle time');

# A subscription whose consumer is away, with a backlog of its own, and
# traffic on other topics behind that backlog: the worker's rounds do not
# read that backlog (before, every round read it through, looking for
# other topics' events ahead to advance past, and notifications waited),

$standby->stop;
$primary->stop;
done_testing();
