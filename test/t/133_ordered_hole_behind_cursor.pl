
# Per-key order when a passed claim rolls back (found by the randomized
# test on PostgreSQL 17 and 18).
#
# Two producers of one key commit in the opposite order of their xids.  A
# claim takes the first committed one and makes the other wait, and stays
# open while 70 other claims go by: a fold passes its slice, and the cursor
# moves beyond both transactions.  Then it rolls back: both events come
# back as a hole behind the cursor.  The next claim must again hand out
# the event committed first, and hold back the other.  Before, it looked
# up the key's commit order only from the cursor's xmin on, found neither
# transaction, and handed out the one with the smaller id.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = PostgreSQL::Test::Cluster->new('hole');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'outbox'\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION outbox;
	SELECT outbox.subscribe('s', ARRAY['t'], ordered => true);
});

# the smaller xid commits second
my $late = $node->background_psql('postgres');
$late->query_safe(q{BEGIN; SELECT outbox.enqueue('t', '{"n": "late"}', key => 'k')});
my $first = $node->safe_psql('postgres',
	q{SELECT outbox.enqueue('t', '{"n": "first"}', key => 'k')});
$late->query_safe('COMMIT');
$late->quit;

my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
is($holder->query_safe(q{SELECT payload->>'n' FROM outbox.claim('s', 10)}), 'first',
	'the event committed first is handed out first');

# 70 claims of other keys, each acked: folds pass the open claim's slice
for my $i (1 .. 70)
{
	$node->safe_psql('postgres', qq{
		SELECT outbox.enqueue('t', '{}', key => 'o$i');
		SELECT outbox.ack('s', (SELECT array_agg(event_id) FROM outbox.claim('s', 10)));});
}
ok($node->safe_psql('postgres', q{
	SELECT count(*) > 0 FROM outbox.cursor c, unnest(c.held) h
	 WHERE c.sub_id = (SELECT id FROM outbox.subscription WHERE name = 's')
	   AND c.fold_no = (SELECT max(fold_no) FROM outbox.cursor)}),
	'a fold passed the open claim');

$holder->query_safe('ROLLBACK');
$holder->quit;

is($node->safe_psql('postgres', q{SELECT string_agg(payload->>'n', ',') FROM outbox.claim('s', 10)}),
	'first', 'after the rollback, again only the event committed first');
is($node->safe_psql('postgres', q{SELECT outbox.ack('s', } . $first . q{)}), 't', 'acked');
is($node->safe_psql('postgres', q{SELECT string_agg(payload->>'n', ',') FROM outbox.claim('s', 10)}),
	'late', 'then the other');

$node->stop;
done_testing();
