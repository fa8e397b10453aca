
# outbox.stats from the worker's tally of the stream (issue 9).
#
# The worker counts each settled stretch of the stream once, by topic
# (outbox.tally); stats then take the counts of the stream from it instead
# of reading the backlog, and read only what the tally has not reached.
# What must hold: the same counts and oldest_ready_at as reading the
# stream (the tally's rows deleted, in a transaction rolled back), and as
# outbox.stats(name) gives each (which reads its chain alone), with
# everything that makes a stream count differ from a count of events:
# delayed events (due and not), acks ahead (done markers), retries and
# dead letters, slices claimed and held open, claims rolled back (holes),
# a transaction open while the worker counted, subscriptions of every
# topic, of two topics and ordered ones, ranges that start at the first or
# last id of a row; and, with the tally, stats fetch
# a small part of the backlog.  Stretches that every chain has passed are
# deleted, the newest kept.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxTest;

my $node = PostgreSQL::Test::Cluster->new('tally');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION outbox');
wait_for_worker($node, 'postgres');
$node->safe_psql('postgres', q{
	SELECT outbox.subscribe('one', ARRAY['a']);
	SELECT outbox.subscribe('two', ARRAY['a', 'b']);
	SELECT outbox.subscribe('every', ARRAY['*']);
	SELECT outbox.subscribe('held', ARRAY['c']);
});

# Wait until the tally has counted every event there is.
sub wait_for_tally
{
	my $ok = $node->poll_query_until('postgres', q{
		SELECT coalesce((SELECT max(upto) FROM outbox.tally WHERE topic = ''), -1)
			   >= (SELECT max(id) FROM outbox.event)});
	ok($ok, "the tally reached the newest event ($_[0])");
}

# stats with the tally, and as reading the stream gives them
sub stats_both
{
	my $q = q{SELECT subscription, ready, scheduled, leased, dead,
					 coalesce(oldest_ready_at::text, '-') FROM outbox.stats ORDER BY 1};
	my $tallied = $node->safe_psql('postgres', $q);
	my $read = $node->safe_psql('postgres', "BEGIN; DELETE FROM outbox.tally; $q; ROLLBACK;");
	return ($tallied, $read);
}

sub compare
{
	my ($what) = @_;
	my ($tallied, $read) = stats_both();
	is($tallied, $read, "stats from the tally are those from the stream: $what");
	# the view reads all chains at once, outbox.stats(name) its own
	my $each = $node->safe_psql('postgres', q{
		SELECT x.subscription, x.ready, x.scheduled, x.leased, x.dead,
			   coalesce(x.oldest_ready_at::text, '-')
		  FROM outbox.subscription s, outbox.stats(s.name) x ORDER BY 1});
	is($each, $tallied, "the view's chains read in bulk are each one's: $what");
	return $tallied;
}

# Event tuples one statement fetched, from its transaction's statistics.
sub stats_fetches
{
	my ($delete) = @_;
	my $out = $node->safe_psql('postgres', qq{
		BEGIN;
		$delete
		SELECT count(*) FROM outbox.stats;
		SELECT coalesce(sum(idx_tup_fetch + seq_tup_read), 0) FROM pg_stat_xact_user_tables
		 WHERE schemaname = 'outbox' AND relname LIKE 'event%';
		ROLLBACK;});
	return (split /\n/, $out)[-1];
}

# 1. A backlog of plain events in many transactions
for my $i (1 .. 20)
{
	$node->safe_psql('postgres', qq{
		SELECT count(outbox.enqueue(t, jsonb_build_object('i', g), key => 'k' || (g % 7)))
		  FROM generate_series(1, 200) g, unnest(ARRAY['a', 'b', 'c', 'x']) t});
}
wait_for_tally('plain');
my $first = compare('plain backlog');
like($first, qr/^one\|4000\|0\|0\|0\|/m, 'one: 4,000 ready');
like($first, qr/^every\|16000\|0\|0\|0\|/m, 'every: 16,000 ready');
my $with = stats_fetches('');
my $without = stats_fetches('DELETE FROM outbox.tally;');
cmp_ok($without, '>=', 16000, "reading the stream fetches the backlog ($without)");
cmp_ok($with, '<', 1000, "with the tally, stats fetch a small part of it ($with)");

# An ordered subscription's stream is read (it counts keys), from here on
$node->safe_psql('postgres', q{
	SELECT outbox.subscribe('keyed', ARRAY['b'], ordered => true)});

# 2. Delayed events (due and not), acks ahead, retries, dead letters,
# partial claims, a claim held open, rolled-back claims
$node->safe_psql('postgres', q{
	SELECT outbox.enqueue('a', '{"late": 1}', deliver_at => now() + interval '1 hour');
	SELECT outbox.enqueue('a', '{"due": 1}', deliver_at => now() - interval '1 minute');
	SELECT outbox.enqueue('x', '{"late": 2}', deliver_at => now() + interval '1 hour');
});
# ack ahead: ids no claim of 'one' has reached (its backlog's middle)
$node->safe_psql('postgres', q{
	SELECT outbox.ack('one', array_agg(id)) FROM (
		SELECT id FROM outbox.event WHERE topic = 'a' ORDER BY id OFFSET 2000 LIMIT 25) s;
	SELECT outbox.ack('every', array_agg(id)) FROM (
		SELECT id FROM outbox.event WHERE topic = 'x' ORDER BY id OFFSET 3000 LIMIT 10) s;
});
$node->safe_psql('postgres', q{
	SELECT count(*) FROM outbox.claim('two', 300);
	SELECT count(*) FROM outbox.claim('keyed', 50);
});
$node->safe_psql('postgres', q{
	SELECT outbox.fail('two', event_id, 'try again', retry_in => interval '1 hour')
	  FROM outbox.claim('two', 5) c;
	SELECT outbox.fail('every', event_id, 'no', retry_in => interval '0 s')
	  FROM outbox.claim('every', 3) c;
});
$node->safe_psql('postgres', q{
	BEGIN; SELECT count(*) FROM outbox.claim('one', 40); ROLLBACK;
	BEGIN; SELECT count(*) FROM outbox.claim('every', 40); ROLLBACK;
});
my $held = $node->background_psql('postgres');
$held->query_safe(q{BEGIN; SELECT count(*) FROM outbox.claim('held', 30)});
# a transaction open while the worker counts: it enqueues, waits, enqueues
my $open = $node->background_psql('postgres');
$open->query_safe(q{BEGIN; SELECT outbox.enqueue('a', '{"open": 1}')});
for my $i (1 .. 5)
{
	$node->safe_psql('postgres', q{
		SELECT count(outbox.enqueue(t, '{}')) FROM generate_series(1, 50) g,
			   unnest(ARRAY['a', 'b', 'c']) t});
}
# the tally waits for a transaction that has written events (a bulk
# enqueue ends soon): what follows it is read
sleep(2);
compare('a transaction open, waited for');
# ... for ten seconds while activity goes on; then it passes it, lists it
# as open, and stats read its events
my $xid = $open->query_safe('SELECT pg_current_xact_id()');
my $passed = 0;
for my $i (1 .. 60)
{
	$node->safe_psql('postgres', q{SELECT outbox.enqueue('b', '{"tick": 1}')});
	$passed = $node->safe_psql('postgres', qq{
		SELECT count(*) FROM outbox.tally WHERE topic = '' AND $xid = ANY (open)});
	last if $passed;
	sleep(1);
}
is($passed, '1', 'the tally passed the transaction held open and listed it');
compare('a transaction open, passed');
$open->query_safe(q{SELECT outbox.enqueue('b', '{"open": 2}'); COMMIT});
$open->quit;
wait_for_tally('after the open transaction');
compare('delayed, acked ahead, failed, claimed, rolled back, held');

# 3. Consumers drain part: new slices past tallied stretches
$node->safe_psql('postgres', q{
	SELECT outbox.ack('one', array_agg(event_id)) FROM outbox.claim('one', 1000) c;
	SELECT outbox.ack('every', array_agg(event_id)) FROM outbox.claim('every', 5000) c;
	SELECT outbox.ack('keyed', array_agg(event_id)) FROM outbox.claim('keyed', 100) c;
});
for my $i (1 .. 3)
{
	$node->safe_psql('postgres', q{
		SELECT count(outbox.enqueue(t, '{}', key => 'k' || (g % 3))) FROM generate_series(1, 100) g,
			   unnest(ARRAY['a', 'b', 'x']) t});
}
wait_for_tally('after draining part');
compare('part drained');
$held->query_safe('COMMIT');
$held->quit;
compare('the held claim committed');

# 3b. Ranges that start at a row's first id or end at its last: a row's
# ids are read only when a range ends inside it, a row the range covers
# whole is counted by its summary (n, first_id, last_id, oldest_at)
$node->safe_psql('postgres', q{SELECT outbox.subscribe('edge', ARRAY['z'])});
$node->safe_psql('postgres', qq{SELECT outbox.enqueue('z', '{"e": $_}')}) for 1 .. 4;
wait_for_tally('edges');
like(compare('a row whole'), qr/^edge\|4\|0\|0\|0\|/m, 'edge: 4 ready');
for my $n (1, 2, 1)
{
	$node->safe_psql('postgres', qq{
		SELECT outbox.ack('edge', array_agg(event_id)) FROM outbox.claim('edge', $n) c});
	compare("edge: from the next of a row's ids after claiming $n");
}
like(compare('edge drained'), qr/^edge\|0\|0\|0\|0\|-$/m, 'edge: none ready');

# 3c. The oldest ready event five rows on: stats read the first rows past
# the chain with the count, and row after row past them only while the
# oldest is not settled; here the first four rows hold nothing ready (all
# acked ahead)
$node->safe_psql('postgres', q{SELECT outbox.subscribe('far', ARRAY['y'])});
for my $r (1 .. 5)
{
	$node->safe_psql('postgres', qq{SELECT outbox.enqueue('y', '{"r": $r}') FROM generate_series(1, 3)});
	wait_for_tally("row $r of topic y");
}
is($node->safe_psql('postgres', q{
	SELECT count(DISTINCT upto) FROM outbox.tally WHERE topic = 'y'}), '5', 'topic y: five rows');
$node->safe_psql('postgres', q{
	SELECT outbox.ack('far', array_agg(id)) FROM (
		SELECT id FROM outbox.event WHERE topic = 'y' ORDER BY id LIMIT 12) e});
like(compare('the oldest five rows on'), qr/^far\|3\|0\|0\|0\|/m, 'far: 3 ready');
is($node->safe_psql('postgres', q{
	SELECT s.oldest_ready_at = (SELECT min(enqueued_at) FROM outbox.event
								 WHERE topic = 'y' AND payload->>'r' = '5')
	  FROM outbox.stats s WHERE subscription = 'far'}), 't',
	'far: the oldest is the first of the fifth row');

# 4. Everything drained: the stretches go, the newest stays
my $stretches = $node->safe_psql('postgres', q{SELECT count(*) FROM outbox.tally WHERE topic = ''});
cmp_ok($stretches, '>', 1, "stretches counted ($stretches)");
drain($node, 'postgres', $_) for qw(one two every keyed held edge far);
my $last = compare('drained');
like($last, qr/^one\|0\|1\|0\|0\|-$/m, 'one: nothing left but the event due in an hour');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM outbox.tally WHERE topic = ''}),
	'stretches every chain passed are deleted, the newest kept');

done_testing();
