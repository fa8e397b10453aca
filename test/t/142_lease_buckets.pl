
# The worker looks for expired leases of slices only where a claim said
# one would end (issue 9): a committed claim publishes its lease's end in
# its subscription's bucket (subscription id modulo 256), and the worker
# reads a bucket when that time comes, not every subscription every round.
# So every way a claim can commit must publish: a plain commit, a commit of
# a claim held open past its lease, COMMIT PREPARED in another session,
# and claims of subscriptions that share a bucket.  The contract: a lease
# is returned within lease + 2 s.  Every subscription here also holds a
# settled claim whose lease ends in ten minutes, which is when a worker
# that missed a publication would next look at the bucket.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use OutboxBehaviour;

my $node = outbox_node('lease_buckets', 'max_prepared_transactions = 5');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# 300 subscriptions on topics of their own: ids 1..300, so that 1-44
# share their buckets with 257-300.
sql(q{
	SELECT count(outbox.subscribe('s_' || i, ARRAY['t_' || i],
		backoff_base => '1 hour', backoff_max => '1 hour'))
	  FROM generate_series(1, 300) i;
	SELECT count(outbox.enqueue('t_' || i, '{"n": 0}')) FROM generate_series(1, 300) i;
});
is(sql("SELECT min(id) || '-' || max(id) FROM outbox.subscription"), '1-300',
	'subscription ids 1 to 300');

# Every subscription claims and acks, with a lease of ten minutes.
is( sql(q{
	SELECT sum((SELECT count(outbox.ack('s_' || i, c.event_id))
	              FROM outbox.claim('s_' || i, 10, '10 minutes') c))
	  FROM generate_series(1, 300) i}),
	'300',
	'every subscription claimed and acked its first event');

# Let the worker take in those publications: its first look at a bucket
# learns of the ten-minute leases.
sleep 2;

# The state of subscription $sub's deliveries: leased/scheduled.
sub leased_scheduled
{
	my ($sub) = @_;
	return sql("SELECT leased || '/' || scheduled FROM outbox.stats('$sub')");
}

# Wait until $sub has no lease and one scheduled retry; returns the
# seconds it took from $since, or undef after 60 s.
sub wait_returned
{
	my ($sub, $since) = @_;
	while (time() - $since < 60)
	{
		return time() - $since if leased_scheduled($sub) eq '0/1';
		usleep(100_000);
	}
	return undef;
}

# A claim that commits with a lease of one second, on subscriptions 5 and
# 261 (one bucket) and 300: each is returned within lease + 2 s.  Allowed:
# 6 s, for a loaded machine; a missed publication takes ten minutes.
sql(q{SELECT outbox.enqueue(t, '{"n": 1}') FROM unnest(ARRAY['t_5', 't_261', 't_300']) t});
my $claimed = time();
for my $sub ('s_5', 's_261', 's_300')
{
	is(sql("SELECT count(*) FROM outbox.claim('$sub', 1, '1 second')"),
		'1', "$sub: claimed with a lease of one second");
}
for my $sub ('s_5', 's_261', 's_300')
{
	my $took = wait_returned($sub, $claimed);
	ok(defined $took && $took < 6,
		"$sub: the expired lease was returned by the worker ("
		  . (defined $took ? sprintf('%.1f s', $took) : 'not in 60 s')
		  . ')');
}

# A claim held open past its lease, committed later: its publication says
# the lease is already over, and the worker returns it at once.
sql(q{SELECT outbox.enqueue('t_7', '{"n": 1}')});
my $open = $node->background_psql('postgres');
$open->query_safe('BEGIN');
is($open->query_safe(q{SELECT count(*) FROM outbox.claim('s_7', 1, '1 second')}),
	'1', 's_7: claimed in a transaction held open');
sleep 3;
is(leased_scheduled('s_7'), '0/0',
	's_7: an open claim is not visible, and its lease is not returned');
$open->query_safe('COMMIT');
my $committed = time();
my $took = wait_returned('s_7', $committed);
ok(defined $took && $took < 5,
	's_7: once committed, the past lease was returned ('
	  . (defined $took ? sprintf('%.1f s', $took) : 'not in 60 s') . ')');
$open->quit;

# A claim in a prepared transaction, committed by another session after
# its lease ended.
sql(q{SELECT outbox.enqueue('t_9', '{"n": 1}')});
sql(q{
	BEGIN;
	SELECT count(*) FROM outbox.claim('s_9', 1, '1 second');
	PREPARE TRANSACTION 'lease_p1';
});
sleep 3;
is(leased_scheduled('s_9'), '0/0', 's_9: a prepared claim is not visible');
sql(q{COMMIT PREPARED 'lease_p1'});
$committed = time();
$took = wait_returned('s_9', $committed);
ok(defined $took && $took < 5,
	's_9: after COMMIT PREPARED the past lease was returned ('
	  . (defined $took ? sprintf('%.1f s', $took) : 'not in 60 s') . ')');

# A prepared claim rolled back leaves nothing leased: the event is
# claimable again at once.
sql(q{SELECT outbox.enqueue('t_11', '{"n": 1}')});
sql(q{
	BEGIN;
	SELECT count(*) FROM outbox.claim('s_11', 1, '1 second');
	PREPARE TRANSACTION 'lease_p2';
});
sql(q{ROLLBACK PREPARED 'lease_p2'});
is(sql(q{SELECT count(*) FROM outbox.claim('s_11', 10, '10 minutes')}),
	'1', 's_11: after ROLLBACK PREPARED the event is claimable');

# Many claims at once in one transaction, over every bucket: each lease is
# returned.
sql(q{SELECT count(outbox.enqueue('t_' || i, '{"n": 2}')) FROM generate_series(100, 299) i});
$claimed = time();
is( sql(q{
	SELECT sum((SELECT count(*) FROM outbox.claim('s_' || i, 1, '1 second')))
	  FROM generate_series(100, 299) i}),
	'200',
	'200 subscriptions claimed in one transaction');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT sum(leased) = 0 AND sum(scheduled) >= 200 FROM outbox.stats
		   WHERE subscription IN (SELECT 's_' || i FROM generate_series(100, 299) i)}),
	'all 200 leases were returned');
my $all = time() - $claimed;
ok($all < 8, sprintf('within lease + 2 s and some (%.1f s)', $all));

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal/, 'no process was terminated by a signal');
done_testing();
