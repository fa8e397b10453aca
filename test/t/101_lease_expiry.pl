
# Lease expiry by the background worker: a lease that passed, of a claim
# that committed, is treated as fail(..., error => 'lease expired');
# a claim whose transaction is still open is not touched.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('lease_expiry');

sub stats
{
	my ($sub) = @_;
	return $node->safe_psql('postgres',
		"SELECT ready || '/' || scheduled || '/' || leased || '/' || dead"
		  . " FROM outbox.stats WHERE subscription = '$sub'");
}

# Claim one delivery of a subscription in a transaction of its own (it
# commits); returns "event_id:attempt", or '' when nothing was claimable.
sub claim
{
	my ($sub) = @_;
	return $node->safe_psql('postgres',
		"SELECT event_id || ':' || attempt FROM outbox.claim('$sub')");
}

$node->safe_psql(
	'postgres', q{
	SELECT outbox.subscribe('retry', ARRAY['t'], lease => '1 second',
		backoff_base => '100 milliseconds', backoff_max => '100 milliseconds');
	SELECT outbox.subscribe('one', ARRAY['t'], max_attempts => 1,
		lease => '1 second');
	SELECT outbox.subscribe('two', ARRAY['t'], max_attempts => 2,
		lease => '1 second', backoff_base => '100 milliseconds',
		backoff_max => '100 milliseconds');
});
my $id = $node->safe_psql('postgres',
	q{SELECT outbox.enqueue('t', '{"n": 1}')});

#
# Committed claims that are never acked.
#
is(claim('retry'), "$id:1", 'retry: first claim');
is(claim('one'), "$id:1", 'one: first claim');
is(claim('two'), "$id:1", 'two: first claim');
is(stats('retry'), '0/0/1/0', 'retry: leased after the claim committed');

# The worker returns the lease: scheduled at the backoff, then claimable
# again with the attempt counted.
ok( $node->poll_query_until(
		'postgres',
		"SELECT leased = 0 FROM outbox.stats WHERE subscription = 'retry'"),
	'retry: the expired lease was returned by the worker');
ok( $node->poll_query_until(
		'postgres',
		"SELECT ready = 1 FROM outbox.stats WHERE subscription = 'retry'"),
	'retry: the returned delivery becomes ready');
is(claim('retry'), "$id:2", 'retry: claimed again with attempt 2');

# A lease taken from a retried delivery expires the same way.
ok( $node->poll_query_until(
		'postgres',
		"SELECT ready = 1 AND leased = 0 FROM outbox.stats WHERE subscription = 'retry'"
	),
	'retry: the second lease expired too');
is(claim('retry'), "$id:3", 'retry: claimed again with attempt 3');
is( $node->safe_psql('postgres', "SELECT outbox.ack('retry', $id)"),
	't', 'retry: the third claim is acked');
is(stats('retry'), '0/0/0/0', 'retry: nothing left after the ack');

# max_attempts 1: the expired lease dead-letters the delivery, with the
# error 'lease expired'.
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM outbox.dead_letters WHERE subscription = 'one'"),
	'one: dead-lettered by lease expiry');
is( $node->safe_psql(
		'postgres',
		"SELECT event_id || '|' || attempts || '|' || last_error || '|' || (payload->>'n')"
		  . " FROM outbox.dead_letters WHERE subscription = 'one'"),
	"$id|1|lease expired|1",
	'one: dead letter has attempts 1, last_error "lease expired" and the payload');
is(stats('one'), '0/0/0/1', 'one: counted as dead, not leased');
is(claim('one'), '', 'one: a dead delivery is not claimable');

# max_attempts 2: the first expiry schedules a retry, the second (of a
# lease taken from outbox.delivery) dead-letters it.
ok( $node->poll_query_until(
		'postgres',
		"SELECT ready = 1 AND leased = 0 FROM outbox.stats WHERE subscription = 'two'"
	),
	'two: the first expired lease is returned for a retry');
is(claim('two'), "$id:2", 'two: claimed again with attempt 2');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM outbox.dead_letters WHERE subscription = 'two'"),
	'two: dead-lettered when the lease of the last attempt expired');
is( $node->safe_psql(
		'postgres',
		"SELECT attempts || '|' || last_error FROM outbox.dead_letters"
		  . " WHERE subscription = 'two'"),
	'2|lease expired',
	'two: dead letter has attempts 2 and last_error "lease expired"');
is(stats('two'), '0/0/0/1', 'two: counted as dead');

#
# A claim whose transaction is still open is not touched, even long after
# its lease passed.
#
$node->safe_psql(
	'postgres', q{
	SELECT outbox.subscribe('open', ARRAY['u'], lease => '1 second',
		backoff_base => '100 milliseconds');
	SELECT outbox.subscribe('control', ARRAY['u'], lease => '1 second');
});
my $u1 = $node->safe_psql('postgres', q{SELECT outbox.enqueue('u', '{"n": 1}')});
my $u2 = $node->safe_psql('postgres', q{SELECT outbox.enqueue('u', '{"n": 2}')});

# u1 gets a row in outbox.delivery (a retry due at once), u2 stays in the
# stream: the open claim below leases one of each kind.
is(claim('open'), "$u1:1", 'open: u1 claimed');
is( $node->safe_psql(
		'postgres', "SELECT outbox.fail('open', $u1, retry_in => '0')"),
	'scheduled',
	'open: u1 failed for an immediate retry');

my $open = $node->background_psql('postgres');
$open->query_safe('BEGIN');
is( $open->query_safe(
		"SELECT string_agg(event_id || ':' || attempt, ',' ORDER BY event_id)"
		  . " FROM outbox.claim('open', 10)"),
	"$u1:2,$u2:1",
	'open: u1 (retry) and u2 (stream) claimed in a transaction left open');

# The control subscription's lease ends after the open claim's: once the
# worker has returned it, the worker has also had the open claim's expired
# lease in view.
is(claim('control'), "$u1:1", 'control: claimed and committed');
ok( $node->poll_query_until(
		'postgres',
		"SELECT leased = 0 FROM outbox.stats WHERE subscription = 'control'"),
	'control: its lease, which ended after the open one, was returned');
# A few more worker rounds (naptime 1 s), without asserting any time.
sleep 2;

is( $open->query_safe(
		"SELECT ready || '/' || scheduled || '/' || leased || '/' || dead"
		  . " FROM outbox.stats WHERE subscription = 'open'"),
	'0/0/2/0',
	'open: both deliveries still leased, as the open transaction sees them');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM outbox.claim('open', 10)"),
	'0',
	'open: another consumer cannot claim them');
is( $open->query_safe("SELECT outbox.ack('open', ARRAY[$u1, $u2])"),
	'2', 'open: the open transaction acks both');
$open->query_safe('COMMIT');
$open->quit;

is(stats('open'), '0/0/0/0', 'open: done after the commit');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM outbox.dead_letters WHERE subscription = 'open'"),
	'0', 'open: no dead letter');

# Let the worker go round again: nothing comes back.
$node->safe_psql('postgres', "SELECT outbox.ack('control', $u1)");
is(claim('control'), "$u2:1", 'control: claims u2');
ok( $node->poll_query_until(
		'postgres',
		"SELECT leased = 0 FROM outbox.stats WHERE subscription = 'control'"),
	'control: lease of u2 returned');
is(stats('open'), '0/0/0/0', 'open: acked deliveries never come back');
is(claim('open'), '', 'open: nothing to claim');

$node->stop;
done_testing();
