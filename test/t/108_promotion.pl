# Exactly once across a standby promotion (issue 8, fault 1).
#
# A consumer in the exactly-once style (claim, record, ack in one
# transaction) drains part of a subscription on the primary while chain
# generations rotate every 100 ms; a streaming standby is promoted and the
# consumer carries on against it.  Every committed event is recorded once:
# acks that committed on the primary (and reached the standby) are never
# undone by the promotion, and the new primary's worker carries on rotating
# from the generation the old one had reached.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'outbox'",
		"outbox.chain_rotation = '100ms'",
		"outbox.naptime = '100ms'") . "\n");
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION outbox;
	SELECT outbox.subscribe('promo', ARRAY['promo']);
});
exactly_once_consumer($primary, 'promo');
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

# many small transactions of events and of consumption, so that batch,
# settle and cursor rows are spread over several generations
my $enqueued = 0;
for my $i (1 .. 60)
{
	$primary->safe_psql('postgres',
		"SELECT outbox.enqueue('promo', '{}') FROM generate_series(1, 5)");
	$enqueued += 5;
	$primary->safe_psql('postgres', 'SELECT consume(3)');
	select(undef, undef, undef, 0.02);
}

# Hold the bookkeeping partitions, so that the oldest generation cannot be
# emptied and rotation stops within a few rounds; then the generation the
# primary ends with is known exactly.
my $holder = $primary->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe(join('; ',
		map { "LOCK TABLE outbox.${_}_0, outbox.${_}_1, outbox.${_}_2, outbox.${_}_3 IN ACCESS SHARE MODE" }
		  qw(cursor batch settle)));
my ($gen_before, $previous) = (-1, -2);
for my $wait (1 .. 60)
{
	last if $gen_before == $previous;
	$previous = $gen_before;
	select(undef, undef, undef, 1.5);
	$gen_before = $primary->safe_psql('postgres', 'SELECT gen FROM outbox.chain_state');
}
cmp_ok($gen_before, '>', 3, "generations rotated on the primary (now $gen_before)");
$primary->wait_for_catchup($standby);
$primary->stop('immediate');

$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';
my $gen_after = $standby->safe_psql('postgres', 'SELECT gen FROM outbox.chain_state');
note("generation on the primary before it stopped: $gen_before; on the promoted standby: $gen_after");
is($gen_after, $gen_before, 'the promoted standby has exactly the generation the primary had reached');

# the consumer carries on against the new primary, with new events too
for my $i (1 .. 20)
{
	$standby->safe_psql('postgres',
		"SELECT outbox.enqueue('promo', '{}') FROM generate_series(1, 5)");
	$enqueued += 5;
	$standby->safe_psql('postgres', 'SELECT consume(3)');
	select(undef, undef, undef, 0.02);
}
my $rounds = 0;
while ($rounds++ < 1000 && $standby->safe_psql('postgres', 'SELECT consume(50)') > 0) { }

is($standby->safe_psql('postgres', 'SELECT count(*) FROM seen'),
	$enqueued, 'every committed event was consumed');
is($standby->safe_psql('postgres', 'SELECT coalesce(sum(dups), 0) FROM seen'),
	'0', 'no event whose ack committed was handed out again');
ok( $standby->poll_query_until(
		'postgres', "SELECT gen > $gen_before FROM outbox.chain_state"),
	"the new primary's worker carries on rotating");

$standby->stop;
done_testing();
