
# One claim held open must not slow everyone (issue 8, fault 9).  A
# consumer claims and then works inside the same transaction while another
# consumer of the same subscription claims and acks thousands of times.
# Folding passes the open claim's slice, so the chain every claim reads
# stays short; then the held transaction ends in each of the three ways:
# it acks and commits (nothing is handed out again), it rolls back (its
# events are handed out again, attempt 1, exactly once), or it commits
# without acking (the worker returns its leases when they expire).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('held_claim', "outbox.chain_rotation = '200ms'",
	"outbox.naptime = '1s'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	CREATE TABLE seen (sub text, id bigint, attempt int, seq serial);
	-- claim and ack one event at a time, each in its own transaction
	CREATE PROCEDURE churn(sub text, topic text, rounds int)
	LANGUAGE plpgsql AS $$
	DECLARE
		chain_max int := 0;
		len int;
	BEGIN
		FOR i IN 1 .. rounds LOOP
			PERFORM outbox.enqueue(topic, jsonb_build_object('i', i));
			COMMIT;
			WITH c AS (SELECT * FROM outbox.claim(sub, 1)),
				 s AS (INSERT INTO seen SELECT sub, event_id, attempt FROM c)
			SELECT outbox.ack(sub, (SELECT array_agg(event_id) FROM c)) INTO len;
			COMMIT;
			-- the batch rows every claim reads: those from the newest cursor's scan_from on
			SELECT count(*) INTO len FROM outbox.batch b
			  JOIN outbox.cursor_now c ON c.sub_id = b.sub_id AND b.batch_no >= c.scan_from
			  JOIN outbox.subscription s ON s.id = c.sub_id
			 WHERE s.name = sub;
			chain_max := greatest(chain_max, len);
		END LOOP;
		RAISE NOTICE 'chain_max=%', chain_max;
		INSERT INTO seen VALUES ('chain_max', chain_max, 0);
	END
	$$;
});

# Claim everything there is for sub, recording it, until nothing comes.
sub drain
{
	my ($sub) = @_;
	while (1)
	{
		my $n = sql(
			    "WITH c AS (SELECT * FROM outbox.claim('$sub', 100)),"
			  . " s AS (INSERT INTO seen SELECT '$sub', event_id, attempt FROM c)"
			  . " SELECT count(*) FROM c");
		sql("SELECT outbox.ack('$sub', array_agg(id)) FROM seen"
			  . " WHERE sub = '$sub'");
		last if $n == 0;
	}
	return;
}

my $held_folds = 0;

# A held claim of 3 events of sub's topic, then 1000 rounds of another
# consumer; returns the held session and the ids it holds.
sub held_run
{
	my ($sub, $lease) = @_;

	sql("SELECT outbox.subscribe('$sub', ARRAY['$sub'])");
	# 8 settled slices, so that the held claim itself folds them: its fold
	# then stays in progress as long as it
	sql("CALL churn('$sub', '$sub', 8)");
	sql("SELECT outbox.enqueue('$sub', jsonb_build_object('held', g))"
		  . " FROM generate_series(1, 3) g");
	my $held = $node->background_psql('postgres');
	$held->query_safe('BEGIN');
	my $ids = $held->query_safe(
		"SELECT string_agg(event_id::text, ',' ORDER BY event_id)"
		  . " FROM outbox.claim('$sub', 3, '$lease')");
	is(scalar(split /,/, $ids), 3, "$sub: the held transaction claimed 3 events");
	$held_folds += $held->query_safe(
		"SELECT count(*) FROM outbox.cursor WHERE xmin::text = pg_current_xact_id()::text");

	sql("DELETE FROM seen WHERE sub = 'chain_max'");
	sql("CALL churn('$sub', '$sub', 1000)");
	my $chain_max = sql("SELECT id FROM seen WHERE sub = 'chain_max'");
	cmp_ok($chain_max, '<', 100,
		"$sub: the chain stayed short while a claim was held ($chain_max batch rows at most)");
	is( sql(
			"SELECT count(*) FROM seen WHERE sub = '$sub' AND id IN ($ids)"),
		'0',
		"$sub: the held events were not handed out meanwhile");
	is(sql("SELECT count(*) || '/' || count(DISTINCT id) FROM seen WHERE sub = '$sub'"),
		'1008/1008', "$sub: the other consumer got every other event once");
	return ($held, $ids);
}

# 1. The held transaction acks and commits: nothing is handed out again.
{
	my ($held, $ids) = held_run('acked', '1 hour');
	is($held->query_safe("SELECT outbox.ack('acked', '{$ids}'::bigint[])"),
		'3', 'acked: the held transaction acks its 3 events');
	$held->query_safe('COMMIT');
	$held->quit;
	drain('acked');
	is(sql("SELECT count(*) FROM seen WHERE sub = 'acked' AND id IN ($ids)"),
		'0', 'acked: nothing of the held claim is handed out again');
	is(sql("SELECT count(*) || '/' || count(DISTINCT id) FROM seen WHERE sub = 'acked'"),
		'1008/1008', 'acked: and nothing else twice');
	my $stats = sql("SELECT ready + leased FROM outbox.stats WHERE subscription = 'acked'");
	is($stats, '0', 'acked: nothing pending');
}

# 2. The held transaction rolls back: its events come again, attempt 1,
# exactly once.
{
	my ($held, $ids) = held_run('rolled', '1 hour');
	$held->query_safe('ROLLBACK');
	$held->quit;
	drain('rolled');
	is( sql(
			"SELECT string_agg(attempt::text, ',' ORDER BY id) FROM seen"
			  . " WHERE sub = 'rolled' AND id IN ($ids)"),
		'1,1,1',
		'rolled: the rolled-back claim is handed out again, once each, attempt 1');
	is(sql("SELECT count(*) || '/' || count(DISTINCT id) FROM seen WHERE sub = 'rolled'"),
		'1011/1011', 'rolled: every event once');
}

# 3. The held transaction commits without acking: the worker returns its
# leases when they expire, and they are handed out again (attempt 2).
{
	my ($held, $ids) = held_run('expired', '3 seconds');
	$held->query_safe('COMMIT');
	$held->quit;
	ok( $node->poll_query_until(
			'postgres',
			"WITH c AS (SELECT * FROM outbox.claim('expired', 100)),"
			  . " s AS (INSERT INTO seen SELECT 'expired', event_id, attempt FROM c)"
			  . " SELECT count(*) FROM seen WHERE sub = 'expired' AND id IN ($ids)",
			'3'),
		'expired: the leases of the committed claim came back');
	drain('expired');
	is( sql(
			"SELECT string_agg(attempt::text, ',' ORDER BY id) FROM seen"
			  . " WHERE sub = 'expired' AND id IN ($ids)"),
		'2,2,2',
		'expired: each handed out again once, attempt 2');
	is(sql("SELECT count(*) || '/' || count(DISTINCT id) FROM seen WHERE sub = 'expired'"),
		'1011/1011', 'expired: and nothing else twice');
}

# 4. An ack held open: a committed claim's ack stays in progress (a
# settlement in progress also stopped folding); it commits at last.
{
	sql("SELECT outbox.subscribe('ackheld', ARRAY['ackheld'])");
	sql("CALL churn('ackheld', 'ackheld', 8)");
	sql("SELECT outbox.enqueue('ackheld', jsonb_build_object('held', g))"
		  . " FROM generate_series(1, 3) g");
	my $ids = sql(
		"SELECT string_agg(event_id::text, ',' ORDER BY event_id)"
		  . " FROM outbox.claim('ackheld', 3, '1 hour')");
	my $held = $node->background_psql('postgres');
	$held->query_safe('BEGIN');
	is($held->query_safe("SELECT outbox.ack('ackheld', '{$ids}'::bigint[])"),
		'3', 'ackheld: the held transaction acks 3 events');
	sql("DELETE FROM seen WHERE sub = 'chain_max'");
	sql("CALL churn('ackheld', 'ackheld', 1000)");
	my $chain_max = sql("SELECT id FROM seen WHERE sub = 'chain_max'");
	cmp_ok($chain_max, '<', 100,
		"ackheld: the chain stayed short while an ack was held ($chain_max batch rows at most)");
	$held->query_safe('COMMIT');
	$held->quit;
	drain('ackheld');
	is(sql("SELECT count(*) FROM seen WHERE sub = 'ackheld' AND id IN ($ids)"),
		'0', 'ackheld: the acked events are not handed out again');
	is(sql("SELECT count(*) || '/' || count(DISTINCT id) FROM seen WHERE sub = 'ackheld'"),
		'1008/1008', 'ackheld: every other event once');
}

# 5. Ordered: the held claim's key stays busy while it is held, and after
# it rolls back its events come again before the key's later event.
{
	sql("SELECT outbox.subscribe('ordered', ARRAY['ordered'], ordered => true)");
	sql("CALL churn('ordered', 'ordered', 8)");
	sql("SELECT outbox.enqueue('ordered', jsonb_build_object('k', g), key => 'k')"
		  . " FROM generate_series(1, 3) g");
	my $held = $node->background_psql('postgres');
	$held->query_safe('BEGIN');
	my $ids = $held->query_safe(
		"SELECT string_agg(event_id::text, ',' ORDER BY event_id)"
		  . " FROM outbox.claim('ordered', 3)");
	is(scalar(split /,/, $ids), 1,
		'ordered: the held transaction claimed the first event of key k (the others wait)');
	sql("SELECT outbox.enqueue('ordered', '{\"k\": 4}', key => 'k')");
	sql("DELETE FROM seen WHERE sub = 'chain_max'");
	sql("CALL churn('ordered', 'ordered', 1000)");
	cmp_ok(sql("SELECT id FROM seen WHERE sub = 'chain_max'"), '<', 100,
		'ordered: the chain stayed short while a claim was held');
	is(sql("SELECT count(*) FROM seen s JOIN outbox.event e ON e.id = s.id"
			  . " WHERE s.sub = 'ordered' AND e.key = 'k'"),
		'0', 'ordered: nothing of key k was handed out meanwhile');
	$held->query_safe('ROLLBACK');
	$held->quit;
	drain('ordered');
	is( sql(
			"SELECT string_agg((e.payload->>'k') || ':' || s.attempt, ',' ORDER BY s.seq)"
			  . " FROM seen s JOIN outbox.event e ON e.id = s.id"
			  . " WHERE s.sub = 'ordered' AND e.key = 'k'"),
		'1:1,2:1,3:1,4:1',
		'ordered: key k in order after the rollback, each once, attempt 1');
}

# The folds of the held claims (the worker may have been first) stayed in
# progress while the others went on folding.
cmp_ok($held_folds, '>', 0, 'a held claim folded itself');

# Rotation, which stopped at the partition the held claims locked, goes on
# under traffic that writes chain rows: claims (an idle database starts no
# generations).
my $gen = sql("SELECT gen FROM outbox.chain_state");
my $rotated = 0;
for my $i (1 .. 180)
{
	sql("CALL churn('ordered', 'ordered', 5)");
	$rotated = sql("SELECT gen >= $gen + 5 FROM outbox.chain_state") eq 't';
	last if $rotated;
	sleep(1);
}
ok($rotated, 'chain generations rotate again after the held claims ended');

done_testing();
