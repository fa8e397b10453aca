
# The worker survives subscriptions disappearing under it (issue 8,
# fault 2): while it advances thousands of subscriptions, unsubscribe()
# commits again and again.  An unsubscribed subscription's advance used to
# fall through its error handler into the end of a unit whose transaction
# was already aborted: SIGSEGV, and the postmaster restarted every backend.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('worker_survives', 'outbox.naptime = 100ms');
my $log_offset = -s $node->logfile;

my $nsubs = 2000;
$node->safe_psql(
	'postgres', qq{
	SELECT outbox.subscribe('s' || i, ARRAY['t']) FROM generate_series(1, $nsubs) i;
	SELECT outbox.enqueue('t', '{}');
});
my $worker = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'");
like($worker, qr/^\d+$/, 'one worker runs');

# Unsubscribe from the end of the list, each in a transaction of its own,
# so that every commit removes a subscription the worker has listed but not
# yet reached.  The worker's round over 2000 subscriptions takes long
# enough for this to hit it many times.
my ($rc, $out, $err) = $node->psql(
	'postgres', qq{
	DO \$\$
	BEGIN
		FOR i IN REVERSE $nsubs .. 1001 LOOP
			PERFORM outbox.unsubscribe('s' || i);
			COMMIT;
			PERFORM pg_sleep(0.005);
		END LOOP;
	END \$\$;
});
is($rc, 0, 'the unsubscribing session ran to its end') or diag($err);

is( $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'"),
	$worker,
	'the same worker still runs');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM outbox.subscription"),
	'1000', 'the remaining subscriptions are there');

my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/terminated by signal/, 'no process was terminated by a signal');
unlike($log, qr/does not exist/, 'a vanished subscription is not an error');

done_testing();
