
# An error in one subscription's maintenance never stops another's (issue
# 8, faults 3 and 4): a subscription whose row makes its lease expiry fail
# (a backoff so long that now() + backoff is out of range, which a 1.0
# database can hold) is logged, naming it, and another subscription's
# expired leases are still returned.

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
	-- what input validation refuses today, but an older database may hold
	UPDATE outbox.subscription
	   SET backoff_base = '1000000 years', backoff_max = '1000000 years'
	 WHERE name = 'bad';
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
			qr/ERROR:  timestamp out of range\n[^\n]*CONTEXT:  [^\n]*\n\toutbox: expire leases of subscription "bad"\n/,
			$log_offset);
	},
	'bad: its lease expiry error is logged, naming it');
is( $node->safe_psql('postgres',
		"SELECT leased FROM outbox.stats WHERE subscription = 'bad'"),
	'1', 'bad: its lease stays until it can be returned');

# once its row is repaired, bad is served too
$node->safe_psql('postgres',
	"UPDATE outbox.subscription SET backoff_base = '1 second', backoff_max = '1 second'"
	  . " WHERE name = 'bad'");
ok( $node->poll_query_until(
		'postgres',
		"SELECT leased FROM outbox.stats WHERE subscription = 'bad'", '0'),
	'bad: served once its row is repaired');

done_testing();
