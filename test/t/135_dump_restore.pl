# pg_dump and restore (issue 10, part 1).
#
# A source cluster that has burned a few hundred thousand xids holds every
# kind of delivery: ready, leased (a claim committed, lease running), done,
# scheduled for a retry (soon, and in an hour, with its error), delayed,
# ordered events held behind their key, dead letters, a paused
# subscription, consumer and producer grants, a dedup key.  It is dumped in
# plain and custom format and with pg_dumpall, and restored into another
# database of the same cluster, into fresh clusters whose xid counter is far
# lower (psql, pg_restore, pg_restore --single-transaction), and from
# pg_dumpall.  Each copy, once outbox.finish_restore() has run, must hand out
# exactly what the source hands out, keep its dead letters and settings,
# know its grants by role name, dedup the old key, and give new events ids
# above every restored one.  Before finish_restore() every call refuses.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use OutboxTest;

my $conf = join("\n",
	"shared_preload_libraries = 'outbox'",
	"outbox.naptime = '100ms'") . "\n";

my $src = PostgreSQL::Test::Cluster->new('src');
$src->init;
$src->append_conf('postgresql.conf', $conf);
$src->start;

# roles made in an order that gives them other oids in the copies
$src->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN;
	CREATE ROLE zed LOGIN;
	CREATE DATABASE app;
	CREATE PROCEDURE burn(n int) LANGUAGE plpgsql AS $$
	BEGIN
		FOR i IN 1 .. n LOOP
			PERFORM pg_current_xact_id();
			COMMIT;
		END LOOP;
	END $$;
	SET synchronous_commit = off;
	CALL burn(300000);
});

$src->safe_psql('app', q{
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
	SELECT outbox.enqueue('t', jsonb_build_object('n', n)) FROM generate_series(1, 40) n;
	SELECT outbox.enqueue('t', '{"delayed": true}', deliver_at => now() + interval '1 hour');
	SELECT outbox.enqueue('t', '{"dedup": true}', dedup_key => 'd1');
	SELECT outbox.enqueue('o', jsonb_build_object('k', n), key => 'k' || (n % 3))
	  FROM generate_series(1, 12) n;
});
# claimed and acked: done
$src->safe_psql('app', q{
	SELECT outbox.ack('plain', array_agg(event_id)) FROM outbox.claim('plain', 5);
});
# claimed, failed: one due again at once, one in an hour (with its error)
$src->safe_psql('app', q{
	WITH c AS (SELECT event_id, row_number() OVER (ORDER BY event_id) AS r
	             FROM outbox.claim('plain', 2))
	SELECT outbox.fail('plain', event_id, 'try ' || r,
	                   CASE r WHEN 1 THEN interval '0 seconds' ELSE interval '1 hour' END)
	  FROM c;
});
# claimed and committed, lease running at dump time
$src->safe_psql('app', q{SELECT count(*) FROM outbox.claim('plain', 4)});
# dead letters
$src->safe_psql('app', q{
	SELECT outbox.fail('once', event_id, 'boom ' || event_id) FROM outbox.claim('once', 3);
});
# ordered: one leased per key, the rest held behind their keys
$src->safe_psql('app', q{SELECT count(*) FROM outbox.claim('ord', 10)});

my $restored_max = $src->safe_psql('app', 'SELECT max(id) FROM outbox.event');
my $stats_sql = q{
	SELECT string_agg(format('%s pending=%s dead=%s paused=%s',
		subscription, ready + leased + scheduled, dead, paused), E'\n' ORDER BY subscription)
	  FROM outbox.stats};
# (leases run out meanwhile, and lease expiry schedules a retry: only the
# sum is stable)
my $retry_sql = q{
	SELECT string_agg(format('%s %s %s %s', s.name, d.event_id, d.visible_at, d.last_error),
		E'\n' ORDER BY d.event_id)
	  FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id
	 WHERE d.last_error = 'try 2'};
my $dead_sql = q{
	SELECT string_agg(format('%s %s %s %s', subscription, event_id, attempts, last_error),
		E'\n' ORDER BY subscription, event_id) FROM outbox.dead_letters};
my $src_stats = $src->safe_psql('app', $stats_sql);
my $src_dead = $src->safe_psql('app', $dead_sql);
my $src_retry = $src->safe_psql('app', $retry_sql);
like($src_retry, qr/try 2/, 'the source has a retry scheduled in an hour');

# the dumps, back to back
my $dir = PostgreSQL::Test::Utils::tempdir();
$src->command_ok([ 'pg_dump', '-d', $src->connstr('app'), '-f', "$dir/app.sql" ], 'pg_dump, plain');
$src->command_ok([ 'pg_dump', '-Fc', '-d', $src->connstr('app'), '-f', "$dir/app.dump" ],
	'pg_dump, custom format');
$src->command_ok([ 'pg_dumpall', '-d', $src->connstr('postgres'), '-f', "$dir/all.sql" ],
	'pg_dumpall');

sub drained { return join(' ', sort { $a <=> $b } drain(@_)); }

sub check_copy
{
	my ($node, $db, $label) = @_;

	my ($ret, $out, $err) = $node->psql($db, "SELECT * FROM outbox.claim('plain')");
	like($err, qr/outbox is waiting for the restore of this database to finish/,
		"$label: claim refuses before finish_restore");
	($ret, $out, $err) = $node->psql($db, "SELECT outbox.enqueue('t', '{}')");
	like($err, qr/finish_restore/, "$label: enqueue refuses before finish_restore");
	$node->safe_psql($db, 'SELECT outbox.finish_restore()');

	# leases taken before the dump have no holder here: claimable at once,
	# at the attempt they had
	is($node->safe_psql($db, 'SELECT sum(leased) FROM outbox.stats'), '0',
		"$label: nothing is leased after finish_restore");
	is($node->safe_psql($db, q{
		BEGIN;
		SELECT string_agg(key || ':' || attempt, ' ' ORDER BY key) FROM outbox.claim('ord', 10);
		ROLLBACK;}), 'k0:1 k1:1 k2:1',
		"$label: the ordered heads leased at dump time are claimable at once, attempt 1 again");

	is($node->safe_psql($db, $stats_sql), $src_stats, "$label: stats as on the source");
	is($node->safe_psql($db, $dead_sql), $src_dead, "$label: dead letters as on the source");
	is($node->safe_psql($db, $retry_sql), $src_retry,
		"$label: retries keep their time and error");

	# grants by role name
	for my $case ([ 'alice', 'plain', 0 ], [ 'alice', 'ord', 1 ], [ 'zed', 'ord', 0 ],
		[ 'zed', 'plain', 1 ])
	{
		my ($role, $sub, $refused) = @$case;
		($ret, $out, $err) = $node->psql($db,
			"SET ROLE $role; BEGIN; SELECT count(*) FROM outbox.claim('$sub', 0 + 1); ROLLBACK;");
		if ($refused)
		{
			like($err, qr/permission denied|may not consume/, "$label: $role may not consume $sub");
		}
		else
		{
			is($ret, 0, "$label: $role may consume $sub") or diag($err);
		}
	}
	($ret, $out, $err) = $node->psql($db,
		"SET ROLE zed; BEGIN; SELECT outbox.enqueue('t', '{}'); ROLLBACK;");
	is($ret, 0, "$label: zed may produce") or diag($err);
	($ret, $out, $err) = $node->psql($db,
		"SET ROLE alice; BEGIN; SELECT outbox.enqueue('t', '{}'); ROLLBACK;");
	isnt($ret, 0, "$label: alice may not produce");

	# the restored dedup key still dedups
	is($node->safe_psql($db,
		"SELECT outbox.enqueue('t', '{\"dedup\": true}', dedup_key => 'd1') <= $restored_max"),
		't', "$label: a restored dedup key still dedups");

	# the sequence of subscription ids came along
	$node->safe_psql($db, "SELECT outbox.subscribe('later', ARRAY['t'])");
	pass("$label: subscribe after the restore");

	# new events sort after every restored one, and are delivered
	my $new = $node->safe_psql($db, "SELECT outbox.enqueue('t', '{\"new\": true}')");
	cmp_ok($new, '>', $restored_max, "$label: a new event's id is above every restored one");
	return $new;
}

my %expected;
my @copies;

# another database of the same cluster
$src->safe_psql('postgres', 'CREATE DATABASE copy1');
$src->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $src->connstr('copy1'),
	'-f', "$dir/app.sql" ], 'plain dump restored into another database');
push @copies, [ $src, 'copy1', 'same cluster', check_copy($src, 'copy1', 'same cluster') ];

# fresh clusters, with far lower xids than the source
my $src_xid = $src->safe_psql('app', 'SELECT pg_current_xact_id()');
my $n = 0;
for my $how ('psql', 'pg_restore', 'pg_restore --single-transaction', 'pg_dumpall',
	'pg_restore into a database that has the extension')
{
	my $dst = PostgreSQL::Test::Cluster->new('dst' . $n++);
	$dst->init;
	$dst->append_conf('postgresql.conf', $conf);
	$dst->start;
	$dst->safe_psql('postgres', q{
		CREATE ROLE other;
		CREATE ROLE zed LOGIN;
		CREATE ROLE alice LOGIN;
	}) unless $how eq 'pg_dumpall';
	cmp_ok($dst->safe_psql('postgres', 'SELECT pg_current_xact_id()'), '<', $src_xid - 250000,
		"$how: the new cluster's xids are far below the source's");
	if ($how eq 'psql')
	{
		$dst->safe_psql('postgres', 'CREATE DATABASE app');
		$dst->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $dst->connstr('app'),
			'-f', "$dir/app.sql" ], "$how: restored");
	}
	elsif ($how eq 'pg_dumpall')
	{
		# the dump makes the roles too; "postgres" exists already
		$dst->command_ok([ 'psql', '-X', '-q', '-d', $dst->connstr('postgres'),
			'-f', "$dir/all.sql" ], "$how: restored");
	}
	elsif ($how =~ /has the extension/)
	{
		# not recognised as a restore when the extension is created: the
		# first rows loaded into the event tables switch restore mode on
		$dst->safe_psql('postgres', 'CREATE DATABASE app');
		$dst->safe_psql('app', 'CREATE EXTENSION outbox');
		is($dst->safe_psql('app', 'SELECT restoring FROM outbox.state'), 'f',
			"$how: not in restore mode before the restore");
		my ($stdout, $stderr);
		IPC::Run::run([ 'pg_restore', '-d', $dst->connstr('app'), "$dir/app.dump" ],
			'>', \$stdout, '2>', \$stderr);
		my @errors = grep { /ERROR/ && !/already exists/ } split /\n/, $stderr;
		is(join("\n", @errors), '', "$how: restored (no error but objects that exist)");
	}
	else
	{
		$dst->safe_psql('postgres', 'CREATE DATABASE app');
		my @opts = $how =~ /single/ ? ('--single-transaction') : ();
		$dst->command_ok([ 'pg_restore', @opts, '-d', $dst->connstr('app'), "$dir/app.dump" ],
			"$how: restored");
	}
	ok($dst->wait_for_log(qr/outbox worker is waiting for outbox\.finish_restore\(\) in database "app"/),
		"$how: the worker waits for finish_restore") if $how eq 'psql';
	push @copies, [ $dst, 'app', $how, check_copy($dst, 'app', $how) ];
}

# What the source hands out from here is what every copy must hand out.
for my $sub ('plain', 'once', 'ord', 'idle')
{
	$src->safe_psql('app', "SELECT outbox.resume('idle')") if $sub eq 'idle';
	$expected{$sub} = drained($src, 'app', $sub);
}
ok($expected{plain} ne '' && $expected{ord} ne '', 'the source had deliveries left');

for my $copy (@copies)
{
	my ($node, $db, $label, $new) = @$copy;
	$node->safe_psql($db, "SELECT outbox.resume('idle')");
	for my $sub ('plain', 'once', 'ord', 'idle')
	{
		my $want = $expected{$sub};
		$want = join(' ', sort { $a <=> $b } split(/ /, $want), $new)
		  if $sub ne 'ord' && $want ne '';
		$want = $new if $sub ne 'ord' && $want eq '';
		is(drained($node, $db, $sub), $want, "$label: $sub hands out what the source does, and the new event");
	}
	is(drained($node, $db, 'later'), $new, "$label: a subscription made after the restore gets the new event");
}

done_testing();
