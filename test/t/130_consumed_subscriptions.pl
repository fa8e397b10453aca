
# The worker's work follows what nobody consumes (issue 9).
#
# A subscription whose consumer keeps claiming has its chain moved by its
# own claims, and one the worker notified will have it moved by the claim
# the notification calls for: the worker advances those only every half
# chain_rotation, not every round (before: one transaction per
# subscription every round, whatever its consumer did).  A subscription
# with no events of its own while other topics have traffic is advanced
# in every round with activity (past the others' events), and once
# activity stops every subscription is advanced, so that retention frees
# what was acked.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use OutboxBehaviour;

my $nsubs = 60;

my $node = PostgreSQL::Test::Cluster->new('consumed');
$node->init;
$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'outbox'",
		# a round a second (the default): traffic must not pause for a
		# round, or the worker takes it for the end of activity and
		# advances everything, as it should (a loaded CI machine made
		# 200 ms rounds outlast the loop's iterations)
		"outbox.naptime = '1s'",
		"outbox.chain_rotation = '1min'",
		"log_min_messages = debug1") . "\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION outbox');
wait_for_worker($node);
$node->safe_psql('postgres', qq{
	SELECT outbox.subscribe('s' || i, ARRAY['t' || i]) FROM generate_series(1, $nsubs) i;
	SELECT outbox.subscribe('unread', ARRAY['ta']);
	SELECT outbox.subscribe('quiet', ARRAY['tq']);
});

# what the worker's rounds said from a log offset: advanced counts
sub advanced_since
{
	my ($offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	return map { [ $1, $2 ] } ($log =~ /outbox advanced (\d+) of (\d+) subscriptions/g);
}

# Traffic on every topic, the consumer claiming (and acking) every busy
# subscription about every 100 ms, for 8 s: about 8 rounds of the worker.
my $consume = qq{
	SELECT outbox.ack('s' || i, (SELECT array_agg(event_id) FROM outbox.claim('s' || i, 100)))
	  FROM generate_series(1, $nsubs) i};
my $produce = qq{
	SELECT outbox.enqueue('t' || i, '{}') FROM generate_series(1, $nsubs) i;
	SELECT outbox.enqueue('ta', '{}')};
$node->safe_psql('postgres', $produce);
$node->safe_psql('postgres', $consume);
sleep(1);
my $offset = -s $node->logfile;
my $until = time() + 8;
while (time() < $until)
{
	$node->safe_psql('postgres', $produce);
	$node->safe_psql('postgres', $consume);
}
my @busy = advanced_since($offset);
cmp_ok(scalar(@busy), '>=', 5, scalar(@busy) . ' rounds advanced subscriptions while traffic went on');
my @counts = sort { $a <=> $b } map { $_->[0] } @busy;
my $median = $counts[ int(@counts / 2) ];
note('advanced per round: ' . join(' ', map { $_->[0] } @busy));
cmp_ok($median, '<=', 5,
	"a round advanced a median of $median of " . ($nsubs + 2)
	  . ' subscriptions: not those whose consumer claims, nor the one notified');
cmp_ok($median, '>=', 1, 'but the one without events of its own');

# activity stops: every subscription is advanced
$offset = -s $node->logfile;
ok(eval {
		$node->wait_for_log(qr/outbox advanced @{[ $nsubs + 2 ]} of @{[ $nsubs + 2 ]} subscriptions/,
			$offset);
		1;
	},
	'once activity stops, a round advances every subscription');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.claim('unread', 10000)"),
	$node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.event WHERE topic = 'ta'"),
	'the subscription nobody consumed has all its events');
is( $node->safe_psql('postgres',
		"SELECT sum(ready + leased + scheduled + dead) FROM outbox.stats WHERE subscription <> 'unread'"),
	'0', 'the consumed subscriptions have nothing left');

$node->stop;
done_testing();
