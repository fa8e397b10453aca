# extend_lease() against the worker's lease expiry (contract 1.1): a
# consumer that extends every third of its lease keeps its delivery for
# three times the lease, at its one attempt, while another consumer keeps
# claiming; once it stops extending, the worker returns the lease, the
# delivery goes to the other consumer at attempt 2, and the first
# consumer's extension and release, at attempt 1, are refused.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('extend', "outbox.naptime = '100ms'");
$node->safe_psql('postgres', q{
	SELECT outbox.subscribe('long', ARRAY['long'], lease => '2 seconds', backoff_base => '0');
	SELECT outbox.enqueue('long', '{"work": "slow"}');
});
my $id = $node->safe_psql('postgres', q{SELECT event_id FROM outbox.claim('long')});
ok($id > 0, 'claimed with a lease of two seconds');

# three leases long: extend every 300 ms, another consumer claims meanwhile
my ($extended, $stolen) = (0, '');
for my $i (1 .. 15)
{
	$extended++ if $node->safe_psql('postgres',
		"SELECT outbox.extend_lease('long', ARRAY[$id]::bigint[], ARRAY[1]) = ARRAY[$id]::bigint[]") eq 't';
	$stolen .= $node->safe_psql('postgres', q{
		SELECT string_agg(event_id || '@' || attempt, ' ') FROM outbox.claim('long', 10)});
	select(undef, undef, undef, 0.3);
}
is($extended, 15, 'every extension succeeded');
is($stolen, '', 'no other claim got the delivery while it was extended');
is($node->safe_psql('postgres', "SELECT attempts FROM outbox.delivery WHERE event_id = $id"), '1',
	'it kept its one attempt');

# stop extending: the worker returns the lease, another claim takes it
my $second = '';
for my $i (1 .. 100)
{
	$second = $node->safe_psql('postgres', q{
		SELECT string_agg(event_id || '@' || attempt, ' ') FROM outbox.claim('long', 10, '1 hour')});
	last if $second ne '';
	select(undef, undef, undef, 0.1);
}
is($second, "$id\@2", 'after its lease ran out it was claimed again, at attempt 2');
is($node->safe_psql('postgres', "SELECT outbox.extend_lease('long', ARRAY[$id]::bigint[], ARRAY[1])"),
	'{}', 'the first consumer can no longer extend it');
is($node->safe_psql('postgres', "SELECT outbox.release('long', $id, 1) IS NULL"), 't',
	'nor release it');
is($node->safe_psql('postgres', "SELECT outbox.release('long', $id, 2)"), 'ready',
	'the second consumer can');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');
done_testing();
