
# An error in one subscription's maintenance never stops another's (issue
# 8, faults 3 and 4): a subscription whose lease expiry fails is logged,
# naming it, and another subscription's expired leases are still returned.
# In 1.0 a backoff so long that now() + backoff was out of range did that;
# input validation and the overflow-safe backoff now prevent it, so the
# failure is injected with a trigger that refuses the subscription's rows.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('sub_containment');

# "bad" first, so that its leases are found first too
$node->safe_psql(
	'postgres', q{
	SELECT outbox.subscribe('bad', ARRAY['t'], lease => '1 second');
	SELECT outbox.subscribe('good', ARRAY['t'], lease => '1 second',
		max_attempts => 1);
	CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.sub_id = (SELECT id FROM outbox.subscription WHERE name = 'bad') THEN
			RAISE EXCEPTION 'injected failure for subscription bad';
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_bad BEFORE INSERT OR UPDATE ON outbox.delivery
		FOR EACH ROW EXECUTE FUNCTION refuse_bad();
	SELECT outbox.enqueue('t', '{"n": 1}');
});
my $log_offset = -s $node->logfile;

# both claim and commit; neither acks
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('bad')"),
	'1', 'bad: claimed');
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.claim('good')"),
	'1', 'good: claimed');

# good's lease is returned (max_attempts 1: a dead letter) although bad's
# lease expiry fails every time it is tried
ok( $node->poll_query_until(
		'postgres',
		"SELECT last_error FROM outbox.dead_letters WHERE subscription = 'good'",
		'lease expired'),
	'good: its expired lease was returned despite bad');

# bad's failure is logged, with the subscription it concerns
ok( eval {
		$node->wait_for_log(
			qr/ERROR:  injected failure for subscription bad\n(?:[^\n]*\n){1,8}?\toutbox: expire leases of subscription "bad"\n/,
			$log_offset);
	},
	'bad: its lease expiry error is logged, naming it');
is( $node->safe_psql('postgres',
		"SELECT leased FROM outbox.stats WHERE subscription = 'bad'"),
	'1', 'bad: its lease stays until it can be returned');

# once the failure is gone, bad is served too
$node->safe_psql('postgres',
	'DROP TRIGGER refuse_bad ON outbox.delivery');
ok( $node->poll_query_until(
		'postgres',
		"SELECT leased FROM outbox.stats WHERE subscription = 'bad'", '0'),
	'bad: served once the failure is gone');

done_testing();
