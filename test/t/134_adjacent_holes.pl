
# Two passed claims of one delta, side by side, both roll back.
#
# Two consumers each hold a claim open on consecutive parts of one delta
# while 70 other claims go by: a fold passes both slices, and the cursor
# moves beyond them.  Both roll back: their ranges come back as two holes
# that touch.  Every event of them must be handed out again, once, and
# nothing handed out before may come back.  Before, merging the touching
# holes stepped over the second one (a Max() of an expression with ++),
# and read past the list for the end of the merged range.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = PostgreSQL::Test::Cluster->new('holes');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION outbox;
	SELECT outbox.subscribe('s', ARRAY['t']);
	SELECT count(outbox.enqueue('t', jsonb_build_object('n', i))) FROM generate_series(1, 300) i;
});

my @holders;
for my $want ('1,2,3,4,5', '6,7,8,9,10')
{
	my $h = $node->background_psql('postgres');
	$h->query_safe('BEGIN');
	is($h->query_safe(q{SELECT string_agg(payload->>'n', ',' ORDER BY event_id) FROM outbox.claim('s', 5)}),
		$want, "an open claim takes $want");
	push @holders, $h;
}

# 70 claims of one event each, acked: folds pass both open claims
for my $i (1 .. 70)
{
	$node->safe_psql('postgres',
		q{SELECT outbox.ack('s', (SELECT array_agg(event_id) FROM outbox.claim('s', 1)))});
}
is($node->safe_psql('postgres', q{
	SELECT cardinality(c.held) FROM outbox.cursor_now c
	 WHERE c.sub_id = (SELECT id FROM outbox.subscription WHERE name = 's')}),
	'2', 'a fold passed both open claims');

$_->query_safe('ROLLBACK') for @holders;
$_->quit for @holders;

# drain: the two holes, then the rest, each event once
my %seen;
my @twice;
for (1 .. 100)
{
	my $got = $node->safe_psql('postgres', q{
		WITH c AS (SELECT * FROM outbox.claim('s', 50)),
		a AS (SELECT outbox.ack('s', (SELECT array_agg(event_id) FROM c)))
		SELECT string_agg(payload->>'n', ',') FROM c, a});
	last if $got eq '';
	for my $n (split /,/, $got)
	{
		push @twice, $n if $seen{$n}++;
	}
}
is(join(',', @twice), '', 'no event handed out twice');
my @want = (1 .. 10, 81 .. 300);
is(join(',', sort { $a <=> $b } keys %seen), join(',', @want),
	'the held events and the rest are handed out, the acked ones are not');

$node->stop;
done_testing();
