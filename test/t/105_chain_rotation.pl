
# Subscription bookkeeping rotates.  Cursor, batch and settle rows are only
# ever inserted, into the partitions of the current generation; the worker
# starts a new generation every outbox.chain_rotation and empties the
# oldest with TRUNCATE once nothing needs it.  So claims, acks and folds
# leave no dead tuples, even while another transaction holds its snapshot
# (and with it vacuum) back; delivery stays exactly once across rotations;
# a subscription nobody claims from does not hold rotation back.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use OutboxBehaviour;

my $node = outbox_node('rotation', "outbox.chain_rotation = '200ms'",
	"outbox.naptime = '100ms'", "autovacuum = off");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	SELECT outbox.subscribe('busy', ARRAY['r']);
	SELECT outbox.subscribe('idle', ARRAY['nobody-sends-this']);
	SELECT outbox.subscribe('slow', ARRAY['r'], lease => '1 hour');
	CREATE TABLE seen (sub text, n int);
});

# Dead tuples of the bookkeeping tables, as the statistics count them.
sub dead_tuples
{
	return sql(
		"SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables"
		  . " WHERE schemaname = 'outbox'"
		  . " AND relname ~ '^(cursor|batch|settle)_[0-3]\$'");
}

sub generation
{
	return sql("SELECT gen FROM outbox.chain_state");
}

# A snapshot held open for the whole run, as a long report would.
my $held = $node->background_psql('postgres');
$held->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$held->query_safe('SELECT count(*) FROM pg_class');
my $held_xmin = sql(
	"SELECT backend_xmin FROM pg_stat_activity WHERE backend_xmin IS NOT NULL"
	  . " AND state = 'idle in transaction'");
ok($held_xmin ne '', 'a snapshot is held');

# "slow" keeps one lease out for the whole run, in a committed claim.
sql("SELECT outbox.enqueue('r', jsonb_build_object('n', 0))");
my $slow_id = sql(
	    "WITH c AS (SELECT * FROM outbox.claim('slow', 1)),"
	  . " s AS (INSERT INTO seen SELECT 'slow', (payload->>'n')::int FROM c)"
	  . " SELECT event_id FROM c");
ok($slow_id > 0, 'slow holds a lease');

# Produce and consume for a few rotations: 10 events per transaction, claims
# of 7 with an ack of all of them.
my $start_gen = generation();
my $produced = 1;
my $deadline = time() + 4;
my $round = 0;
while (time() < $deadline || generation() < $start_gen + 6)
{
	$round++;
	sql("SELECT count(outbox.enqueue('r', jsonb_build_object('n', $round * 100 + i)))"
		  . " FROM generate_series(1, 10) i");
	$produced += 10;
	for my $sub ('busy', 'slow')
	{
		sql(    "WITH c AS (SELECT * FROM outbox.claim('$sub', 7)),"
			  . " s AS (INSERT INTO seen SELECT '$sub', (payload->>'n')::int FROM c)"
			  . " SELECT outbox.ack('$sub', (SELECT array_agg(event_id) FROM c))")
		  for 1 .. 2;
	}
	last if $round > 2000;
}
ok(generation() >= $start_gen + 6,
	'the worker started new generations while the snapshot was held');

# drain what is left
for my $sub ('busy', 'slow')
{
	while (1)
	{
		my $n = sql(
			    "WITH c AS (SELECT * FROM outbox.claim('$sub', 100)),"
			  . " s AS (INSERT INTO seen SELECT '$sub', (payload->>'n')::int FROM c)"
			  . " SELECT outbox.ack('$sub', (SELECT array_agg(event_id) FROM c))");
		last if $n == 0;
	}
}
is( sql(
		"SELECT count(*) || '/' || count(DISTINCT n) FROM seen WHERE sub = 'busy'"),
	"$produced/$produced",
	'busy received every event once across the rotations');
is( sql(
		"SELECT count(*) || '/' || count(DISTINCT n) FROM seen WHERE sub = 'slow'"),
	"$produced/$produced",
	'slow received every event once across the rotations');
is(dead_tuples(), '0',
	'claims, acks and folds left no dead tuples in the bookkeeping tables');

# The oldest partitions were emptied: far fewer batch rows are kept than
# the claims wrote.  The batch row of slow's lease was handed over to
# outbox.delivery once enough batches followed it, so it did not hold the
# partitions back.
my $claims = $round * 4;
my $kept = sql("SELECT count(*) FROM outbox.batch");
cmp_ok($kept, '<', $claims / 2,
	"old batch rows went with their partitions ($kept kept of about $claims)");
is( sql(
		"SELECT state FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id"
		  . " WHERE s.name = 'slow' AND d.event_id = $slow_id"),
	'leased',
	'the long lease lives on in outbox.delivery');
is(sql("SELECT outbox.ack('slow', $slow_id)"), 't', 'and can still be acked');

# The idle subscription's cursor moved to new generations with the others.
ok( $node->poll_query_until(
		'postgres',
		"SELECT c.gen >= (SELECT gen FROM outbox.chain_state) - 1"
		  . " FROM outbox.cursor_now c JOIN outbox.subscription s ON s.id = c.sub_id"
		  . " WHERE s.name = 'idle'"),
	'the idle subscription does not hold rotation back');

# The held snapshot still works, and events enqueued after it are still
# delivered after it ends.
is($held->query_safe('SELECT count(*) > 0 FROM pg_class'), 't',
	'the held snapshot is still usable');
$held->query_safe('COMMIT');
$held->quit;

sql("SELECT outbox.enqueue('r', '{\"n\": -1}')");
is(sql("SELECT payload->>'n' FROM outbox.claim('busy', 10)"),
	'-1', 'delivery goes on after the snapshot is released');

$node->stop;
done_testing();
