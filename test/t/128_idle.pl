
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

# the database's transaction count, the worker's stats flushed (it reports
# them at least once a second while it runs rounds)
sub xacts
{
	return $primary->safe_psql('postgres',
		"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'");
}

my $from = lsn();
my $xacts_from = xacts();
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
my $xacts = xacts() - $xacts_from;
cmp_ok($wal, '<=', 512, "the idle primary wrote no WAL in 10 s ($wal bytes)");
is($primary->safe_psql('postgres', 'SELECT gen FROM outbox.chain_state'),
	$gen_from, 'no chain generation was started');

# the worker sleeps: no round of transactions every 100 ms (let alone one
# per subscription, 303 of them); what is counted is this test's queries
cmp_ok($xacts, '<', 50, "the worker ran no transactions ($xacts in 10 s)");
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
# nor do the other subscriptions read it to pass it (they step over other
# topics' events through the topic index).
my $backlog = 50000;
$primary->safe_psql('postgres', qq{
	SELECT outbox.subscribe('away', ARRAY['backlog']);
	SELECT count(outbox.enqueue('backlog', '{}')) FROM generate_series(1, $backlog);
});

# event rows read from the event tables, by every backend, stats flushed
sub event_rows_read
{
	return $primary->safe_psql('postgres', q{
		SELECT pg_stat_force_next_flush();
		SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0)
		  FROM pg_stat_user_tables WHERE schemaname = 'outbox' AND relname LIKE 'event%'});
}

# A first round of traffic, and time for what follows it to settle.
$primary->safe_psql('postgres', "SELECT outbox.enqueue('t1', '{}')");
$primary->safe_psql('postgres',
	"SELECT outbox.ack('busy1', array_agg(event_id)) FROM outbox.claim('busy1', 100)");
my $read_from = event_rows_read();
for my $i (1 .. 120)
{
	sleep(1);
	my $now = event_rows_read();
	last if $now - $read_from < $backlog;
	$read_from = $now;
}
my $rounds = 20;
for my $round (1 .. $rounds)
{
	$primary->safe_psql('postgres', "SELECT outbox.enqueue('t1', '{}')");
	$primary->safe_psql('postgres',
		"SELECT outbox.ack('busy1', array_agg(event_id)) FROM outbox.claim('busy1', 100)");
	usleep(250_000);			# more than a round (naptime 100 ms)
}
usleep(500_000);
my $read = event_rows_read() - $read_from;

# Bounded work per round: the claims' few rows, and the clean-up's window
# of kept copies (1,000 a maintenance round, up to ten of those a second
# here): far less than a pass over the backlog each round.
cmp_ok($read, '<', $rounds * $backlog / 5,
	"$rounds rounds of traffic read $read event rows, less than a fifth of the away backlog ($backlog) a round");
is($primary->safe_psql('postgres', "SELECT ready FROM outbox.stats WHERE subscription = 'away'"),
	$backlog, 'the away backlog is all there');
my $claimed = 0;
for my $i (1 .. $backlog / 10000 + 1)
{
	$claimed += $primary->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('away', 10000)");
}
is($claimed, $backlog, 'and all of it is claimed when its consumer comes back');

$standby->stop;
$primary->stop;
done_testing();
