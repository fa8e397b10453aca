# ALTER EXTENSION outbox UPDATE of a database with live 1.0 data (issue 10,
# part 3).
#
# The released 1.0 library (built by test/run from the 1.0 release commit,
# OUTBOX_V10_BUILD) runs in a copy of this PostgreSQL installation and makes
# every kind of delivery: ready, done, leased (lease running), scheduled for
# a retry (due at once, and in an hour, with its error), delayed, ordered
# events held behind their key, dead letters; a paused subscription,
# consumer and producer grants, a dedup key.  Then the library is replaced
# by this one, as a package upgrade does, and before the update producers
# keep enqueuing; after ALTER EXTENSION outbox UPDATE nothing is lost: the
# counts, dead letters and retries are as they were, grants hold, the dedup
# key dedups, and each subscription hands out exactly what it had left
# (ordered keys in order), then new events.

use strict;
use warnings FATAL => 'all';

use File::Basename;
use File::Copy;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $v10 = $ENV{OUTBOX_V10_BUILD};
plan skip_all => 'OUTBOX_V10_BUILD (the 1.0 library, built by test/run) not set'
  unless $v10;

# A copy of this installation (binaries find their libraries and share
# directory relative to themselves), with the 1.0 library in it.
sub pg_config { my $v = `pg_config --$_[0]`; chomp $v; return $v; }
my ($bindir, $pkglibdir, $sharedir) = map { pg_config($_) } qw(bindir pkglibdir sharedir);
my $copy = PostgreSQL::Test::Utils::tempdir();
for my $d (dirname($bindir), $sharedir)
{
	make_path("$copy" . dirname($d));
	system('cp', '-a', $d, "$copy$d") == 0 or die "cp $d failed";
}
my $extdir = "$copy$sharedir/extension";

sub install_library
{
	my ($so, $control, @sql) = @_;
	unlink glob("$extdir/outbox*");
	copy($so, "$copy$pkglibdir/outbox.so") or die "copy $so: $!";
	copy($control, "$extdir/outbox.control") or die "copy $control: $!";
	copy($_, "$extdir/" . basename($_)) or die "copy $_: $!" for @sql;
}
install_library("$v10/outbox.so", "$v10/outbox.control", "$v10/sql/outbox--1.0.sql");

my $node = PostgreSQL::Test::Cluster->new('live', install_path => "$copy" . dirname($bindir));
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'outbox'\noutbox.naptime = '100ms'\n");
$node->start;
sub q10 { return $node->safe_psql('postgres', $_[0]); }

q10(q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE zed LOGIN;
	CREATE EXTENSION outbox;
	SELECT outbox.subscribe('plain', ARRAY['t'], max_attempts => 5,
		lease => '3 seconds', backoff_base => '1 second');
	SELECT outbox.subscribe('once', ARRAY['t'], max_attempts => 1);
	SELECT outbox.subscribe('ord', ARRAY['o'], ordered => true, lease => '3 seconds');
	SELECT outbox.subscribe('idle', ARRAY['t']);
	SELECT outbox.pause('idle');
	SELECT outbox.grant_consume('alice', 'plain');
	SELECT outbox.grant_consume('zed', 'ord');
	SELECT outbox.grant_produce('zed');
});
is(q10(q{SELECT extversion FROM pg_extension WHERE extname = 'outbox'}), '1.0',
	'the extension is at 1.0');

my @t = split /\n/, q10(q{SELECT outbox.enqueue('t', jsonb_build_object('n', n)) FROM generate_series(1, 40) n});
my $delayed = q10(q{SELECT outbox.enqueue('t', '{"delayed": true}', deliver_at => now() + interval '1 hour')});
my $dedup = q10(q{SELECT outbox.enqueue('t', '{"dedup": true}', dedup_key => 'd1')});
my @o = split /\n/, q10(q{SELECT outbox.enqueue('o', jsonb_build_object('k', n), key => 'k' || (n % 3))
	FROM generate_series(1, 12) n});
my %key_of = map { ($o[$_ - 1] => 'k' . ($_ % 3)) } 1 .. 12;

my @acked = split / /, q10(q{
	WITH c AS (SELECT event_id FROM outbox.claim('plain', 5))
	SELECT string_agg(event_id::text, ' ') FROM c, LATERAL outbox.ack('plain', c.event_id) a});
my @failed = split / /, q10(q{
	WITH c AS (SELECT event_id, row_number() OVER (ORDER BY event_id) AS r FROM outbox.claim('plain', 2)),
	f AS (SELECT event_id, outbox.fail('plain', event_id, 'try ' || r,
	             CASE r WHEN 1 THEN interval '0 seconds' ELSE interval '1 hour' END) AS s FROM c)
	SELECT string_agg(event_id::text, ' ' ORDER BY event_id) FROM f});
q10(q{SELECT count(*) FROM outbox.claim('plain', 4)});
my @dead = split / /, q10(q{
	WITH c AS (SELECT event_id FROM outbox.claim('once', 3))
	SELECT string_agg(event_id::text, ' ') FROM c, LATERAL outbox.fail('once', c.event_id, 'boom') f});
is(scalar(@dead), 3, 'three dead letters on 1.0');
q10(q{SELECT count(*) FROM outbox.claim('ord', 10)});

my $stats_sql = q{
	SELECT string_agg(format('%s pending=%s dead=%s paused=%s',
		subscription, ready + leased + scheduled, dead, paused), E'\n' ORDER BY subscription)
	  FROM outbox.stats};
my $dead_sql = q{
	SELECT string_agg(format('%s %s %s %s', subscription, event_id, attempts, last_error),
		E'\n' ORDER BY subscription, event_id) FROM outbox.dead_letters};
my $retry_sql = q{
	SELECT string_agg(format('%s %s %s', d.event_id, d.visible_at, d.last_error), E'\n')
	  FROM outbox.delivery d WHERE d.last_error = 'try 2'};
my $stats_before = q10($stats_sql);
my $dead_before = q10($dead_sql);
my $retry_before = q10($retry_sql);
like($retry_before, qr/try 2/, 'a retry in an hour on 1.0');

# the package upgrade: this library replaces 1.0's, the schema stays 1.0
$node->stop;
install_library("$pkglibdir/outbox.so", "$sharedir/extension/outbox.control",
	glob("$sharedir/extension/outbox--*.sql"));
$node->start;
my $before_update = q10(q{SELECT outbox.enqueue('t', '{"before update": true}')});
ok($before_update > 0, 'producers keep enqueuing into the 1.0 schema with the new library');

q10('ALTER EXTENSION outbox UPDATE');
is(q10(q{SELECT extversion FROM pg_extension WHERE extname = 'outbox'}), '1.1', 'updated to 1.1');

# the event enqueued before the update is one more pending on t's subscriptions
my $stats_want = $stats_before;
$stats_want =~ s/^(plain|once|idle) pending=(\d+)/"$1 pending=" . ($2 + 1)/gme;
is(q10($stats_sql), $stats_want, 'stats as before the update, with the event enqueued meanwhile');
is(q10($dead_sql), $dead_before, 'dead letters kept');
is(q10($retry_sql), $retry_before, 'a scheduled retry keeps its time and error');

for my $case ([ 'alice', 'plain', 0 ], [ 'alice', 'ord', 1 ], [ 'zed', 'ord', 0 ], [ 'zed', 'plain', 1 ])
{
	my ($role, $sub, $refused) = @$case;
	my ($ret, $out, $err) = $node->psql('postgres',
		"SET ROLE $role; BEGIN; SELECT count(*) FROM outbox.claim('$sub'); ROLLBACK;");
	if ($refused) { isnt($ret, 0, "$role may not consume $sub"); }
	else { is($ret, 0, "$role may consume $sub") or diag($err); }
}
my ($ret) = $node->psql('postgres', "SET ROLE zed; BEGIN; SELECT outbox.enqueue('t', '{}'); ROLLBACK;");
is($ret, 0, 'zed may produce');
($ret) = $node->psql('postgres', "SET ROLE alice; BEGIN; SELECT outbox.enqueue('t', '{}'); ROLLBACK;");
isnt($ret, 0, 'alice may not produce');
is(q10(q{SELECT outbox.enqueue('t', '{"dedup": true}', dedup_key => 'd1')}), $dedup,
	'the dedup key of 1.0 still dedups');
my $new = q10(q{SELECT outbox.enqueue('t', '{"new": true}')});
cmp_ok($new, '>', $o[-1], 'a new event sorts after the 1.0 ones');

sub sorted { return join(' ', sort { $a <=> $b } @_); }
sub without
{
	my ($all, @gone) = @_;
	my %g = map { $_ => 1 } @gone;
	return grep { !$g{$_} } @$all;
}

my @t_all = (@t, $dedup, $before_update, $new);
is(sorted(drain($node, 'postgres', 'plain')), sorted(without(\@t_all, @acked, $failed[1])),
	'plain hands out everything not acked (leases and the due retry included), then new events');
is(sorted(drain($node, 'postgres', 'once')), sorted(without(\@t_all, @dead)), 'once hands out everything not dead');
q10(q{SELECT outbox.resume('idle')});
is(sorted(drain($node, 'postgres', 'idle')), sorted(@t_all), 'the paused subscription kept all its events');

my @ord = drain($node, 'postgres', 'ord');
is(sorted(@ord), sorted(@o), 'ord hands out each keyed event once');
my %last;
my $in_order = 1;
for my $id (@ord)
{
	my $k = $key_of{$id};
	$in_order = 0 if defined $last{$k} && $id < $last{$k};
	$last{$k} = $id;
}
ok($in_order, 'ordered keys come in order across the update');
is(q10(q{SELECT ready || ' ' || leased || ' ' || scheduled FROM outbox.stats WHERE subscription = 'plain'}),
	'0 0 2', 'plain keeps only the delayed event and the hour-long retry');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');
done_testing();
