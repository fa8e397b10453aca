
# With many topics a commit wakes the subscriptions of its topics, and
# hardly any other (issue 9).  The worker knows a commit's topics by bits
# of their hashes; with 64 bits and 1,000 topics each bit stood for about
# 16 topics, and every commit notified the subscriptions of all of them,
# which then claimed and found nothing (320,000 notifications for 20,000
# events in bench/scale.sh).  With 1,024 bits a commit on one topic
# notifies its own subscription and about one other in a thousand topics.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use OutboxBehaviour;

my $ntopics = 1000;
my $nevents = 20;

my $node = outbox_node('many_topics');
$node->safe_psql('postgres',
	"SELECT outbox.subscribe('s' || i, ARRAY['t' || i]) FROM generate_series(1, $ntopics) i");

my $listener = OutboxBehaviour::Listener->new($node,
	map { "outbox.s$_" } 1 .. $ntopics);

# one event on each of 20 topics, each in its own transaction
for my $i (1 .. $nevents)
{
	my $topic = 't' . ($i * 37);
	$node->safe_psql('postgres', "SELECT outbox.enqueue('$topic', '{}')");
}

# every one of those subscriptions is notified
for my $i (1 .. $nevents)
{
	my $sub = 's' . ($i * 37);
	ok($listener->wait_for("outbox.$sub"), "$sub is notified");
}
usleep(500_000);
$listener->sync;
my $others = 0;
$others += $listener->take("outbox.s$_") for 1 .. $ntopics;

# With 64 bits about 20 x 15 others would have been; with 1,024 about 20.
cmp_ok($others, '<=', 60,
	"$others notifications reached subscriptions of other topics, for $nevents commits");
$listener->quit;

$node->stop;
done_testing();
