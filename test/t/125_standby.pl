# Every function on a hot standby (issue 9): each one that writes raises
# 25006 read_only_sql_transaction with the message of any write in a
# read-only transaction, and each one that only reads, and the views, work.
#
# The lists below name every function of the schema: a function added
# later without being put in one of them fails the first test, so that its
# behaviour on a standby is decided rather than found out.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION outbox;
	CREATE ROLE sb_role;
	SELECT outbox.subscribe('sb', ARRAY['sb.t'], max_attempts => 1);
	SELECT outbox.subscribe('sb_ordered', ARRAY['sb.t'], ordered => true);
	SELECT outbox.enqueue('sb.t', '{"n": 1}', key => 'k');
	SELECT outbox.enqueue('sb.t', '{"n": 2}', key => 'k');
	SELECT outbox.enqueue('sb.t', '{"n": 3}');
});
# one leased delivery and one dead letter of 'sb'
my ($leased, $dead) = split /\n/, $primary->safe_psql('postgres', q{
	SELECT event_id FROM outbox.claim('sb', 2, '1 day') ORDER BY event_id});
$primary->safe_psql('postgres', "SELECT outbox.fail('sb', $dead, 'broken')");

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

# Functions that write, with a call each; all must raise 25006.
my %writes = (
	'enqueue(text,jsonb,text,jsonb,timestamp with time zone,text)' =>
	  [ q{SELECT outbox.enqueue('sb.t', '{}')},
		q{SELECT outbox.enqueue('sb.t', '{}', key => 'k', dedup_key => 'd')} ],
	'enqueue_many(text,jsonb[],text[],jsonb[],timestamp with time zone,text[])' =>
	  [ q{SELECT outbox.enqueue_many('sb.t', ARRAY['{}']::jsonb[])} ],
	'claim(text,integer,interval,interval)' =>
	  [ q{SELECT * FROM outbox.claim('sb')}, q{SELECT * FROM outbox.claim('sb_ordered', 10, '1 minute')},
		q{SELECT * FROM outbox.claim('no_such')}, q{SELECT * FROM outbox.claim('sb', wait => '1 minute')} ],
	'ack(text,bigint)' => [ "SELECT outbox.ack('sb', ${leased}::bigint)", "SELECT outbox.ack('sb', ${dead}::bigint)" ],
	'ack(text,bigint[])' => [ "SELECT outbox.ack('sb', ARRAY[$leased]::bigint[])", q{SELECT outbox.ack('sb', NULL::bigint[])} ],
	'fail(text,bigint,text,interval,integer,boolean)' =>
	  [ "SELECT outbox.fail('sb', $leased, 'x')", "SELECT outbox.fail('sb', $leased, dead => true)" ],
	'release(text,bigint,integer,interval)' => [ "SELECT outbox.release('sb', $leased)" ],
	'extend_lease(text,bigint[],integer[],interval)' =>
	  [ "SELECT outbox.extend_lease('sb', ARRAY[$leased]::bigint[], ARRAY[1])" ],
	'subscribe(text,text[],integer,interval,interval,interval,boolean)' =>
	  [ q{SELECT outbox.subscribe('sb_new', ARRAY['sb.t'])}, q{SELECT outbox.subscribe('sb', ARRAY['sb.t', 'sb.u'])} ],
	'unsubscribe(text)' => [ q{SELECT outbox.unsubscribe('sb')} ],
	'pause(text)' => [ q{SELECT outbox.pause('sb')} ],
	'resume(text)' => [ q{SELECT outbox.resume('sb')} ],
	'replay(text,bigint)' => [ q{SELECT outbox.replay('sb')}, "SELECT outbox.replay('sb', $dead)" ],
	'grant_produce(name)' => [ q{SELECT outbox.grant_produce('sb_role')} ],
	'revoke_produce(name)' => [ q{SELECT outbox.revoke_produce('sb_role')} ],
	'grant_consume(name,text)' => [ q{SELECT outbox.grant_consume('sb_role', 'sb')} ],
	'revoke_consume(name,text)' => [ q{SELECT outbox.revoke_consume('sb_role', 'sb')} ],
	'start_worker()' => [ q{SELECT outbox.start_worker()} ],
	'finish_restore()' => [ q{SELECT outbox.finish_restore()} ],
	'create_cdc_publication(text)' => [ q{SELECT outbox.create_cdc_publication()} ],
	'cdc_resend(bigint,bigint)' => [ q{SELECT outbox.cdc_resend(0)} ],
);
# Functions that only read, with a call and its answer.
my %reads = (
	'channel(text)' => [ q{SELECT outbox.channel('sb')}, 'outbox.sb' ],
	'_stats()' => [ q{SELECT count(*) FROM outbox._stats()}, '2' ],
	'stats(text)' => [ q{SELECT subscription FROM outbox.stats('sb')}, 'sb' ],
	'event_status(bigint)' => [ "SELECT string_agg(subscription || ' ' || state, ',' ORDER BY 1) FROM outbox.event_status($leased)",
		'sb leased,sb_ordered ready' ],
);
# Internal functions: not callable by users (no EXECUTE for PUBLIC), called
# only from the functions above or from the worker.
my @internal = split ' ', q{
  _may_consume(integer) _check_name(text) _subscriptions_changed() _wake()
  _worker_on_create() _sub_id(text) _check_interval(interval,text) _check_role(name)
  _consumer_objects() _sync_schema_usage(name,oid) _chain_gen_for_insert()
  _hold_subscription(text) _drop_subscription(text) _resubscribed(text,text[],boolean)
  _latest_snapshot() _lock_extension() _state_changed() _restore_started() _refuse_read_only(text)
};

my $listed = join(' ', sort(keys %writes, keys %reads, @internal));
my $schema = $standby->safe_psql('postgres', q{
	SELECT string_agg(substr(p.oid::regprocedure::text, length('outbox.') + 1), ' ' ORDER BY 1)
	  FROM pg_proc p WHERE p.pronamespace = 'outbox'::regnamespace});
$schema = join(' ', sort split /\n| (?![^(]*\))/, $schema);
is($schema, $listed, 'every function of the schema is listed here as writing, reading or internal');

for my $f (sort keys %writes)
{
	for my $call (@{ $writes{$f} })
	{
		my ($ret, $out, $err) = $standby->psql('postgres', "\\set VERBOSITY verbose\n$call");
		like($err, qr/ERROR:  25006: cannot execute \S+ (in a read-only transaction|during recovery)/,
			"$call: 25006 on the standby")
		  or diag("stderr: $err");
	}
}
for my $f (sort keys %reads)
{
	my ($call, $want) = @{ $reads{$f} };
	is($standby->safe_psql('postgres', $call), $want, "$call works on the standby");
}

# the views: on the standby as on the primary (nothing changes there meanwhile:
# the lease is a day long and no event is due)
my $stats_sql = q{
	SELECT string_agg(format('%s %s %s %s %s %s', subscription, ready, scheduled, leased, dead, paused), ';' ORDER BY subscription)
	  FROM outbox.stats};
my $stats = $standby->safe_psql('postgres', $stats_sql);
is($stats, $primary->safe_psql('postgres', $stats_sql), "outbox.stats works on the standby ($stats)");
like($stats, qr/^sb 1 0 1 1 f;/, 'and shows the lease and the dead letter');
is($standby->safe_psql('postgres', q{
	SELECT string_agg(format('%s %s %s', subscription, event_id, last_error), ';') FROM outbox.dead_letters}),
	"sb $dead broken", 'outbox.dead_letters works on the standby');

# nothing changed on the primary's side either; it still works
is($primary->safe_psql('postgres', "SELECT outbox.ack('sb', ${leased}::bigint)"), 't', 'the primary acks the lease');

$standby->stop;
$primary->stop;
done_testing();
