# Committed acks survive crashes while chain generations rotate fast.
#
# Cursor, batch and settle rows are written into the current generation of
# four rotating partitions (docs/design.md).  In 1.0 that generation was a
# sequence's last value; crash recovery can move a sequence ahead by up to
# 32 values, after which readers took a stale cursor for the newest one and
# handed out again events whose ack had committed.  Here a consumer in the
# exactly-once style (claim, record, ack in one transaction) runs through
# several crash-restarts with outbox.chain_rotation at 100 ms; no event may
# be recorded twice, every event must be recorded, and no subscription may
# have two cursor rows with the same fold number.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;
use OutboxTest qw(kill9);

my $node = outbox_node('crash_generation', "restart_after_crash = on",
	"outbox.chain_rotation = '100ms'", "outbox.naptime = '100ms'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql("SELECT outbox.subscribe('gen', ARRAY['gen'])");
exactly_once_consumer($node, 'gen');

my $enqueued = 0;
for my $crash (1 .. 4)
{
	# events in many small transactions, consumed in small batches, so
	# that generations rotate with batch and settle rows in several
	for my $i (1 .. 40)
	{
		sql("SELECT outbox.enqueue('gen', '{}') FROM generate_series(1, 5)");
		$enqueued += 5;
		sql('SELECT consume(3)');
		usleep_ms(20);
	}

	# kill -9 of a backend: the postmaster restarts every process and
	# the database goes through crash recovery
	my $bg = $node->background_psql('postgres');
	my $victim = $bg->query_safe('SELECT pg_backend_pid()');
	my $log_offset = -s $node->logfile;
	kill9($node, $victim);
	$node->wait_for_log(qr/database system is ready to accept connections/, $log_offset);
	eval { $bg->quit; };
	$node->poll_query_until('postgres', 'SELECT 1', '1');
	note("crash $crash: generation now "
		  . sql('SELECT gen FROM outbox.chain_state'));
}

# drain: everything enqueued is recorded, nothing twice
my $rounds = 0;
while ($rounds++ < 1000 && sql('SELECT consume(50)') > 0) { }
is(sql('SELECT count(*) FROM seen'), $enqueued, 'every committed event was consumed');
is(sql('SELECT coalesce(sum(dups), 0) FROM seen'),
	'0', 'no event whose ack committed was handed out again');
is( sql(
		'SELECT count(*) FROM (SELECT sub_id, fold_no FROM outbox.cursor'
		  . ' GROUP BY 1, 2 HAVING count(*) > 1) x'),
	'0',
	'no fold number was written twice');

sub usleep_ms { select(undef, undef, undef, $_[0] / 1000); }

$node->stop;
done_testing();
