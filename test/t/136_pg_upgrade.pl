# pg_upgrade with outbox installed and live data: ready, scheduled (by
# deliver_at and by a failed attempt's backoff), leased, dead, acked, a
# paused subscription, and an ordered subscription with keys held behind
# leased deliveries.  pg_upgrade --check passes, and the servers pg_upgrade
# starts run no outbox worker.  After the upgrade outbox.stats is the same,
# the worker serves the database again, and consuming goes on as before:
# the held keys stay held and come in order, the leases taken before are
# still the holders' (they ack), the scheduled deliveries still wait, the
# dead letter replays, payloads and headers are intact, and new events sort
# after the old ones.
#
# In the suite the old cluster is of the same major (15 to 15 in CI);
# test/upgrade/run sets OUTBOX_OLD_INSTALL to a PostgreSQL 15 with outbox
# installed and runs it on 17 and 18.

use strict;
use warnings FATAL => 'all';

use Cwd;
use File::Find;
use File::Spec;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $old_path = $ENV{OUTBOX_OLD_INSTALL};

# no JIT: the 15 here comes without its LLVM
my $conf = "shared_preload_libraries = 'outbox'\njit = off\n";

# Both with checksums: 18's initdb enables them by default, 15's does not,
# and pg_upgrade needs the two clusters to agree.
my $old = PostgreSQL::Test::Cluster->new('old', $old_path ? (install_path => $old_path) : ());
$old->init(extra => ['--data-checksums']);
$old->append_conf('postgresql.conf', $conf);
$old->start;
if ($old_path)
{
	like($old->safe_psql('postgres', 'SHOW server_version'), qr/^15\./, 'the old cluster runs 15');
}
my $old_bindir = $old_path ? "$old_path/bin" : $old->config_data('--bindir');

my $new = PostgreSQL::Test::Cluster->new('new');
$new->init(extra => ['--data-checksums']);
$new->append_conf('postgresql.conf', $conf);

# Debian 12's 15.20 (like 17.12) keeps an attribute option pg_attver on
# every column of every table, which the restore of pg_upgrade into a
# server that does not know it (Debian testing's 18.6 here) refuses with
# "unrecognized parameter": pg_upgrade between these two builds fails for
# any table, with outbox or without, and ALTER TABLE cannot take it off.
$old->safe_psql('postgres', 'CREATE TABLE probe (a int)');
my $old_attver = $old->safe_psql('postgres',
	q{SELECT count(*) FROM pg_attribute WHERE attrelid = 'probe'::regclass AND attoptions::text LIKE '%pg_attver=%'});
$old->safe_psql('postgres', 'DROP TABLE probe');
$new->start;
my ($refused) = $new->psql('postgres',
	'CREATE TEMP TABLE t (a int); ALTER TABLE t ALTER COLUMN a SET (pg_attver = 1)');
$new->stop;
if ($old_attver ne '0' && $refused != 0)
{
	$old->stop;
	diag('SKIPPED: this PostgreSQL 15 writes pg_attver column options that this '
		  . $new->config_data('--version') . ' cannot restore; pg_upgrade fails for any table');
	done_testing();
	exit 0;
}

sub osql { return $old->safe_psql('postgres', $_[0]); }

osql(q{
	CREATE EXTENSION outbox;
	CREATE TABLE ids (n int PRIMARY KEY, id bigint NOT NULL);
	SELECT outbox.subscribe('plain', ARRAY['orders'], max_attempts => 3,
		backoff_base => '1 day', backoff_max => '1 day', lease => '1 day');
	SELECT outbox.subscribe('ord', ARRAY['orders'], ordered => true, lease => '1 day');
	SELECT outbox.subscribe('dl', ARRAY['orders'], max_attempts => 1);
	SELECT outbox.subscribe('held', ARRAY['orders']);
	SELECT outbox.pause('held');
});
wait_for_worker($old, 'postgres', 'a worker serves the database before the upgrade');

# 12 events on three keys, one transaction each, then one due tomorrow
for my $n (0 .. 11)
{
	osql(qq{INSERT INTO ids SELECT $n, outbox.enqueue('orders', '{"n": $n}',
		key => 'k' || $n % 3, headers => '{"h": $n}')});
}
osql(q{INSERT INTO ids SELECT 12, outbox.enqueue('orders', '{"n": 12}',
	deliver_at => now() + interval '1 day')});

# plain: n=0 acked, n=1 scheduled by a failure, n=2..4 leased
is(osql(q{SELECT string_agg(c.payload->>'n', ',' ORDER BY c.event_id)
	FROM outbox.claim('plain', 5) c}), '0,1,2,3,4', 'plain claims n=0..4');
osql(q{
	SELECT outbox.ack('plain', (SELECT id FROM ids WHERE n = 0));
	SELECT outbox.fail('plain', (SELECT id FROM ids WHERE n = 1), 'try later');
});
# dl: n=0 dead after its only attempt
is(osql(q{SELECT outbox.fail('dl', (SELECT event_id FROM outbox.claim('dl')), 'poison')}),
	'dead', 'dl dead-letters n=0');
# ord: the heads of k0 and k1 leased, k2's head acked; k0, k1 held behind them
is(osql(q{SELECT string_agg(key, ',' ORDER BY key) FROM outbox.claim('ord', 3)}),
	'k0,k1,k2', 'ord claims the head of each key');
osql(q{SELECT outbox.ack('ord', (SELECT id FROM ids WHERE n = 2))});

my $stats_sql = q{SELECT * FROM outbox.stats ORDER BY subscription};
my $stats_before = osql($stats_sql);
like($stats_before, qr/^plain\|7\|2\|3\|0\|/m, 'plain: 7 ready, 2 scheduled, 3 leased');
like($stats_before, qr/^dl\|11\|1\|0\|1\|/m, 'dl: 11 ready, 1 scheduled, 1 dead');
my $max_id = osql(q{SELECT max(id) FROM ids});

$old->stop;

# pg_upgrade writes its logs to the current directory (15) or into the new
# data directory (16 on)
my ($old_data, $new_data) = map { File::Spec->rel2abs($_) } ($old->data_dir, $new->data_dir);
my $cwd = getcwd();
chdir $PostgreSQL::Test::Utils::tmp_check;
my @upgrade = (
	'pg_upgrade', '--no-sync', '--retain',
	'-d', $old_data, '-D', $new_data,
	'-b', $old_bindir, '-B', $new->config_data('--bindir'),
	'-s', $new->host, '-p', $old->port, '-P', $new->port);
ok(run_log([ @upgrade, '--check' ]), 'pg_upgrade --check with outbox installed');
ok(run_log(\@upgrade), 'pg_upgrade with outbox installed')
  or BAIL_OUT('pg_upgrade failed');

# the servers pg_upgrade ran (in binary upgrade mode) started no launcher
my @server_logs;
find(sub { push @server_logs, $File::Find::name if /^pg_upgrade_server\.log$/ },
	'.', $new_data);
my $server_log = join('', map { slurp_file($_) } @server_logs);
like($server_log, qr/database system is ready to accept connections/,
	'pg_upgrade kept the logs of the servers it ran');
unlike($server_log, qr/outbox launcher started/, 'no outbox launcher ran during pg_upgrade');
chdir $cwd;

$new->start;
sub nsql { return $new->safe_psql('postgres', $_[0]); }
wait_for_worker($new, 'postgres', 'the worker serves the database after the upgrade');

is(nsql($stats_sql), $stats_before, 'outbox.stats is the same after the upgrade');
is(nsql(q{SELECT extversion FROM pg_extension WHERE extname = 'outbox'}),
	'1.1', 'the extension version is kept');

# ordered: k0 and k1 are still held behind their leased heads, so only
# k2's next event is claimable; the leases are still the holders'.
is(nsql(q{SELECT string_agg(key, ',') FROM outbox.claim('ord', 100)}),
	'k2', 'held keys stay held behind their leased deliveries');
is(nsql(q{SELECT outbox.ack('ord', ARRAY(SELECT id FROM ids WHERE n IN (0, 1, 5)))}),
	'3', 'the leases taken before are acked on the new cluster');

# drain ord: each key's events come in order
my @seen;
for (1 .. 20)
{
	my $got = nsql(q{
		SELECT string_agg(i.n::text, ',' ORDER BY i.n)
		  FROM outbox.claim('ord', 100) c JOIN ids i ON i.id = c.event_id});
	last if $got eq '';
	nsql(qq{SELECT outbox.ack('ord', ARRAY(SELECT id FROM ids WHERE n IN ($got)))});
	push @seen, split /,/, $got;
}
my %next = (k0 => -1, k1 => -1, k2 => -1);
my $in_order = 1;
for my $n (@seen)
{
	my $k = 'k' . ($n % 3);
	$in_order = 0 if $n <= $next{$k};
	$next{$k} = $n;
}
ok($in_order, 'ordered keys are delivered in order after the upgrade');
is(scalar(@seen), 12 - 4, 'ord delivers each remaining keyed event once');

# plain: the leases taken on 15 ack, the scheduled ones wait
is(nsql(q{SELECT outbox.ack('plain', ARRAY(SELECT id FROM ids WHERE n IN (2, 3, 4)))}),
	'3', 'plain leases taken before the upgrade ack');
my $new_id = nsql(q{SELECT outbox.enqueue('orders', '{"n": 13}', key => 'k1')});
cmp_ok($new_id, '>', $max_id, 'a new event sorts after the upgraded ones');
is( nsql(q{
	SELECT string_agg(c.payload->>'n', ',' ORDER BY c.event_id)
		   || ' ' || bool_and(c.headers IS NOT DISTINCT FROM
							  CASE WHEN i.n IS NOT NULL THEN jsonb_build_object('h', i.n) END)
	  FROM outbox.claim('plain', 100) c LEFT JOIN ids i ON i.id = c.event_id}),
	'5,6,7,8,9,10,11,13 true', 'plain claims the ready and new events with their headers, not the scheduled ones');
is(nsql(q{SELECT outbox.replay('dl')}), '1', 'the dead letter replays');
is(nsql(q{SELECT count(*) || ' ' || min(attempt) FROM outbox.claim('dl', 100)}),
	'13 1', 'dl claims the replayed, ready and new events');
is(nsql(q{SELECT ready || '/' || paused FROM outbox.stats WHERE subscription = 'held'}),
	'13/true', 'the paused subscription stays paused with all its events pending');

$new->stop;
done_testing();
