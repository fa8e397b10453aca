
# While traffic goes on, the worker advances each subscription at most once
# every half chain_rotation (issue 9): its consumer's claims move its chain
# in between, and a quiet topic's claims read nothing of other topics
# (t/132).  Before, every subscription whose consumer had not claimed and
# that had not been notified in the last round was advanced every round
# (and before that, every subscription every round: one transaction per
# subscription a second).  Once activity stops every subscription is
# advanced, so that retention frees what was acked.

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
		"log_min_messages = debug2") . "\n");
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
# chain_rotation 1 min: at most once in the 8 s, with traffic on its topic
# or none
my $log = slurp_file($node->logfile, $offset);
for my $sub ('unread', 'quiet', 's1')
{
	my $n = () = $log =~ /outbox advances subscription "$sub"/g;
	cmp_ok($n, '<=', 1, "\"$sub\" advanced $n times while traffic went on");
}

# activity stops: every subscription is advanced
$offset = -s $node->logfile;
ok(eval {
		$node->wait_for_log(qr/outbox advanced @{[ $nsubs + 2 ]} of @{[ $nsubs + 2 ]} subscriptions/,
			$offset);
		1;
	},
	'once activity stops, a round advances every subscription');
like(slurp_file($node->logfile, $offset), qr/outbox advances subscription "quiet"/,
	'the log names each subscription advanced (what the counts above rely on)');
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
