
# The worker at the edges of what its settings allow (issue 8):
#
# - fault 4: a delivery whose backoff doubles far past the interval range
#   (a base of days, tens of attempts) is returned by lease expiry like any
#   other, and so is another subscription's lease in the same round; the
#   SQL backoff of lease expiry overflowed ("interval out of range") and
#   failed every round;
# - fault 14: outbox.retention over 49.7 days overflowed an int of
#   milliseconds, and '60d' rotated the event bucket at once; with '60d' a
#   bucket must not rotate while it does with '1s';
# - settings stored by 1.0 beyond the limits are brought down to them by
#   the update to 1.1.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('worker_limits', "outbox.retention = '60d'",
	"outbox.naptime = '100ms'", "outbox.chain_rotation = '100ms'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

#
# Fault 4: lease expiry with a backoff of 3 days * 2^39, capped at 100
# years, beside another subscription's ordinary lease.
#
sql(q{
	SELECT outbox.subscribe('wide', ARRAY['w'], max_attempts => 100, lease => '1 second',
		backoff_base => '3 days', backoff_max => '100 years');
	SELECT outbox.subscribe('other', ARRAY['o'], max_attempts => 100, lease => '1 second',
		backoff_base => '1 hour', backoff_max => '1 hour');
	SELECT outbox.enqueue('w', '{}');
	SELECT outbox.enqueue('o', '{}');
});
# wide: a delivery row, leased at its 40th attempt (as if 38 retries had
# gone before); other: leased from the stream at its first
sql(q{SELECT outbox.fail('wide', event_id, retry_in => '0') FROM outbox.claim('wide')});
sql(q{
	UPDATE outbox.delivery SET attempts = 39, visible_at = now() - interval '1 second'
	 WHERE sub_id = (SELECT id FROM outbox.subscription WHERE name = 'wide');
});
is(sql(q{SELECT attempt FROM outbox.claim('wide')}), '40', 'wide: claimed at attempt 40');
is(sql(q{SELECT attempt FROM outbox.claim('other')}), '1', 'other: claimed at attempt 1');

ok( $node->poll_query_until(
		'postgres', q{
		SELECT count(*) = 2 FROM outbox.delivery
		 WHERE state = 'scheduled' AND last_error = 'lease expired'}),
	'both expired leases are returned');
is( sql(q{
		SELECT s.name || ':' || d.attempts FROM outbox.delivery d
		  JOIN outbox.subscription s ON s.id = d.sub_id ORDER BY s.name}),
	"other:1\nwide:40",
	'each at its attempts');
is( sql(q{
		SELECT visible_at BETWEEN now() + interval '18000 days' - interval '1 day'
		                      AND now() + interval '36000 days'
		  FROM outbox.delivery
		 WHERE sub_id = (SELECT id FROM outbox.subscription WHERE name = 'wide')}),
	't',
	'wide: retried after its backoff_max (100 years), with jitter');
is( sql(q{
		SELECT visible_at BETWEEN now() + interval '30 minutes' - interval '1 minute'
		                      AND now() + interval '1 hour'
		  FROM outbox.delivery
		 WHERE sub_id = (SELECT id FROM outbox.subscription WHERE name = 'other')}),
	't',
	'other: retried after its backoff_base (1 hour), with jitter');
sql(q{SELECT outbox.unsubscribe('wide'); SELECT outbox.unsubscribe('other');});

#
# Fault 14: with outbox.retention = '60d' the current bucket does not
# rotate.  Rotation needs the next bucket empty and the current one not,
# and half the retention since the current one started.  The witness that
# the worker ran its retention step several times meanwhile is the chain
# generation, which the same maintenance round moves on after it (every
# 100 ms while there are chain rows, which consuming writes).
#
sql(q{SELECT outbox.subscribe('r', ARRAY['r'])});
my $bucket = sql('SELECT bucket FROM outbox.state');
sql(q{SELECT outbox.enqueue('r', '{}')});
my $gen = sql(q{SELECT (SELECT gen FROM outbox.chain_state)});
# enqueue one, consume what is there, and (the rest of) a condition
my $consume = q{
	SELECT outbox.enqueue('r', '{}') > 0
	   AND (SELECT count(outbox.ack('r', event_id)) FROM outbox.claim('r', 100)) >= 0
	   AND };
ok( $node->poll_query_until(
		'postgres', $consume
		  . "(SELECT gen FROM outbox.chain_state) >= $gen + 5"),
	'the worker ran five maintenance rounds');
is(sql('SELECT bucket FROM outbox.state'),
	$bucket, "retention '60d': the bucket did not rotate");

# the same with a short retention: the bucket rotates, so the check above
# can see a rotation
$node->append_conf('postgresql.conf', "outbox.retention = '1s'");
$node->reload;
ok( $node->poll_query_until(
		'postgres', $consume . "(SELECT bucket <> $bucket FROM outbox.state)"),
	"retention '1s': the bucket rotates");

#
# Settings that 1.0 accepted beyond the limit are brought down to it by
# ALTER EXTENSION UPDATE: a lease of a million years made every claim of
# its subscription fail ("timestamp out of range").
#
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql(
	'upgraded', q{
	CREATE EXTENSION outbox VERSION '1.0';
	SELECT outbox.subscribe('huge', ARRAY['h'], lease => '1000000 years',
		backoff_base => '1000000 years');
	SELECT outbox.enqueue('h', '{}');
	ALTER EXTENSION outbox UPDATE;
});
is( $node->safe_psql(
		'upgraded',
		"SELECT lease || ' ' || backoff_base || ' ' || backoff_max FROM outbox.subscription"),
	'36000 days 36000 days 01:00:00',
	'the update brings 1.0 settings beyond the limit down to it');
is($node->safe_psql('upgraded', "SELECT count(*) FROM outbox.claim('huge')"),
	'1', 'and the subscription can be claimed from');

$node->stop;
done_testing();
