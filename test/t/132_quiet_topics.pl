
# Reads of a quiet topic skip other topics' events (issue 9), and lose none.
#
# Enqueue publishes, before its transaction can commit, that its xid wrote
# the topic (shared memory, one entry per topic hash).  A claim, an advance
# or outbox.stats of a subscription whose topics no transaction after the
# delta's xmin wrote covers the delta without reading the stream: with
# traffic on other topics it fetches no event.  What must not happen: an
# event skipped because its transaction was still open when the reader
# looked, or because it was prepared before a restart emptied shared
# memory (the slot then only vouches for transactions that start after it
# was made).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = PostgreSQL::Test::Cluster->new('quiet');
$node->init;
$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'outbox'",
		"max_prepared_transactions = 4") . "\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION outbox');
wait_for_worker($node);
$node->safe_psql('postgres', q{
	SELECT outbox.subscribe('busy', ARRAY['tb']);
	SELECT outbox.subscribe('q' || i, ARRAY['tq' || i]) FROM generate_series(1, 3) i;
});

# 3,000 events of another topic, in 30 transactions
for my $i (1 .. 30)
{
	$node->safe_psql('postgres',
		"SELECT count(outbox.enqueue('tb', '{}')) FROM generate_series(1, 100)");
}

# Event tuples this claim fetched, from its own transaction's statistics.
sub claim_fetches
{
	my ($sub) = @_;
	return $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT count(*) FROM outbox.claim('$sub', 10);
		SELECT coalesce(sum(idx_tup_fetch), 0) FROM pg_stat_xact_user_tables
		 WHERE schemaname = 'outbox' AND relname LIKE 'event%';
		COMMIT;});
}

is(claim_fetches('q1'), "0\n0", 'a quiet topic claims without reading 3,000 events of another');
is($node->safe_psql('postgres', q{
	SELECT ready FROM outbox.stats WHERE subscription = 'q1'}), '0', 'stats: nothing ready');
ok((split /\n/, claim_fetches('busy'))[1] >= 10, 'the busy topic reads its events');

# An event of a quiet topic whose transaction was open when a claim looked
my $open = $node->background_psql('postgres');
$open->query_safe("BEGIN; SELECT outbox.enqueue('tq2', '{\"n\": 1}')");
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('q2', 10)"), '0',
	'not visible while open');
$node->safe_psql('postgres',
	"SELECT count(outbox.enqueue('tb', '{}')) FROM generate_series(1, 100)");
$open->query_safe('COMMIT');
$open->quit;
is($node->safe_psql('postgres', q{SELECT ready FROM outbox.stats WHERE subscription = 'q2'}),
	'1', 'stats counts it once committed');
is($node->safe_psql('postgres', "SELECT payload->>'n' FROM outbox.claim('q2', 10)"), '1',
	'claimed once committed');

# Prepared before a restart: the slot made after it does not vouch for it
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT outbox.enqueue('tq3', '{"n": 2}');
	PREPARE TRANSACTION 'p1';});
$node->restart;
wait_for_worker($node);
$node->safe_psql('postgres',
	"SELECT count(outbox.enqueue('tb', '{}')) FROM generate_series(1, 100)");
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('q3', 10)"), '0',
	'not visible while prepared');
$node->safe_psql('postgres', "COMMIT PREPARED 'p1'");
is($node->safe_psql('postgres', q{SELECT ready FROM outbox.stats WHERE subscription = 'q3'}),
	'1', 'stats counts the prepared event after the restart');
is($node->safe_psql('postgres', "SELECT payload->>'n' FROM outbox.claim('q3', 10)"), '2',
	'the prepared event is claimed after the restart');

$node->stop;
done_testing();
