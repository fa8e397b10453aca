# Failover under load, and the old primary back as a standby (issue 10,
# part 2).
#
# Producers and an exactly-once consumer (claim, record, ack in one
# transaction) run against a primary with a synchronous standby; a claim is
# committed and left leased.  The primary dies (immediate stop) under that
# load and the standby is promoted.  On the new primary a worker starts by
# itself, and draining it records every event it has exactly once: no
# delivery whose ack committed before the failover comes back, none is
# missing, and the lease held at failover comes back when it runs out.  The
# old primary is then rewound with pg_rewind and re-attached as a standby of
# the new one: there nothing of outbox writes or runs a worker, stats read,
# and it follows the new primary.

use strict;
use warnings FATAL => 'all';

use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use OutboxBehaviour;

my $conf = join("\n",
	"shared_preload_libraries = 'outbox'",
	"outbox.naptime = '100ms'",
	'wal_log_hints = on',
	# pg_rewind reads the old primary's WAL back to the last checkpoint
	# before the timelines diverged
	"wal_keep_size = '256MB'") . "\n";

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $conf);
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION outbox;
	SELECT outbox.subscribe('fo', ARRAY['fo'], lease => '3 seconds');
});
exactly_once_consumer($primary, 'fo');
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
# commits wait for the standby: what committed is on it
$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'standby'\n");
$primary->reload;
$primary->poll_query_until('postgres',
	"SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'standby'")
  or die 'the standby did not become synchronous';

# a claim committed and never acked: leased at the failover
$primary->safe_psql('postgres', "SELECT outbox.enqueue('fo', '{}') FROM generate_series(1, 3)");
is($primary->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('fo', 2)"), '2',
	'two deliveries leased before the failover');

# load: producers and consumers for a few seconds, the primary dies under it
my $dir = PostgreSQL::Test::Utils::tempdir();
PostgreSQL::Test::Utils::append_to_file("$dir/produce.sql",
	"SELECT outbox.enqueue('fo', '{}') FROM generate_series(1, 3);\n");
PostgreSQL::Test::Utils::append_to_file("$dir/consume.sql", "SELECT consume(5);\n");
my @load;
for my $script ('produce.sql', 'produce.sql', 'consume.sql', 'consume.sql')
{
	my ($out, $err) = ('', '');
	push @load, IPC::Run::start(
		[ 'pgbench', '-n', '-T', '30', '-c', '1', '-f', "$dir/$script",
		  '-h', $primary->host, '-p', $primary->port, 'postgres' ],
		'>', \$out, '2>', \$err);
}
$primary->poll_query_until('postgres', 'SELECT count(*) >= 300 FROM seen')
  or die 'the load did not get going';
$primary->stop('immediate');
$_->finish for @load;    # their connections are gone

my $t0 = time();
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';
wait_for_worker($standby);
note(sprintf('a worker ran on the new primary %.1f s after promotion began', time() - $t0));
pass('a worker starts on the new primary with no manual step');

# the new primary carries on: more events, then drain (the lease held at
# the failover runs out meanwhile)
$standby->safe_psql('postgres', "SELECT outbox.enqueue('fo', '{}') FROM generate_series(1, 50)");
my $idle = 0;
for my $round (1 .. 400)
{
	my $n = $standby->safe_psql('postgres', 'SELECT consume(100)');
	$idle = $n > 0 ? 0 : $idle + 1;
	last if $idle >= 20;    # 5 s with nothing: every lease has run out
	select(undef, undef, undef, 0.25) if $n == 0;
}
my $events = $standby->safe_psql('postgres', "SELECT count(*) FROM outbox.event WHERE topic = 'fo'");
cmp_ok($events, '>', 300, "events on the new primary: $events");
is($standby->safe_psql('postgres', 'SELECT count(*) FROM seen'), $events,
	'every event the new primary has was consumed');
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM outbox.event e WHERE e.topic = 'fo' AND NOT EXISTS (SELECT FROM seen s WHERE s.event_id = e.id)"),
	'0', 'none is missing');
is($standby->safe_psql('postgres', 'SELECT coalesce(sum(dups), 0) FROM seen'), '0',
	'none whose ack committed was handed out again');
is($standby->safe_psql('postgres',
		"SELECT ready + leased + scheduled FROM outbox.stats WHERE subscription = 'fo'"),
	'0', 'nothing is left, the leases held at the failover included');

# the old primary, rewound, follows the new one
my $new_primary = $standby;
my $old = $primary;
# the control file shows the new timeline only after a checkpoint
$new_primary->safe_psql('postgres', 'CHECKPOINT');
command_ok(
	[ 'pg_rewind', '--target-pgdata', File::Spec->rel2abs($old->data_dir),
	  '--source-server', $new_primary->connstr('postgres') ],
	'pg_rewind of the old primary');
# pg_rewind copied the new primary's configuration, its port included
$old->append_conf('postgresql.conf', "port = " . $old->port . "\nsynchronous_standby_names = ''\n");
$old->enable_streaming($new_primary);
$old->start;
is($old->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the old primary is a standby now');
$new_primary->safe_psql('postgres', "SELECT outbox.enqueue('fo', '{}')");
$new_primary->wait_for_catchup($old);
is($old->safe_psql('postgres', "SELECT count(*) FROM outbox.event WHERE topic = 'fo'"),
	$events + 1, 'it follows the new primary');
is($old->safe_psql('postgres', "SELECT ready FROM outbox.stats WHERE subscription = 'fo'"),
	'1', 'outbox.stats reads there');
my ($ret, $out, $err) = $old->psql('postgres', "SELECT outbox.enqueue('fo', '{}')");
like($err, qr/read-only transaction|during recovery/, 'enqueue refuses there');
select(undef, undef, undef, 2);
is($old->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker'"),
	'0', 'and no worker runs there');

$old->stop;
$new_primary->stop;
for my $node ($old, $new_primary)
{
	unlike(slurp_file($node->logfile), qr/terminated by signal/, $node->name . ': no process crashed');
}
done_testing();
