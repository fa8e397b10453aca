# The randomized, model-based fault-injection test (issue 8, "the test that
# would have found them"): producers, consumers and the owner perform random
# operations while consumers' backends and the worker are killed with
# kill -9 and the server is stopped with "pg_ctl stop -m immediate"; a model
# of the contract (t/OutboxRandom.pm) checks every answer, the counts of
# outbox.stats, durability, exactly-once effects and bounded storage, and at
# the end drains every subscription and checks that every committed event
# reached every subscription it was for.
#
#   OUTBOX_RANDOM_SEED=n       the seed (default 21; "random": from the clock;
#                              printed either way)
#   OUTBOX_RANDOM_SECONDS=n    how long to run operations (default 50)
#   OUTBOX_RANDOM_HOLD=n       after a failure, keep the cluster up n seconds
#                              for a look (the failure prints its host and port)
#   OUTBOX_RANDOM_SKIP=a,b     switch operation kinds or checks off:
#     prepared      PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED
#     isolation     REPEATABLE READ and SERIALIZABLE (consumers, producers,
#                   the owner's subscribe in a REPEATABLE READ transaction)
#     readonly      enqueue in READ ONLY transactions (must raise 25006)
#     resubscribe   re-subscribe with changed topics
#     ordered       ordered subscriptions altogether
#     ordered_switch re-subscribe switching "ordered"
#     unsubscribe, pause, replay, ackahead, tinylease, longkey (3,800-byte
#     keys), farfuture (deliver_at a day ahead), huge (a subscription with
#     backoff_base '1000000 years')
#     killbackend, killworker, restart    the injected faults
#     leasecheck, storage, workerlog, stats   checks (stats: the counts of
#                   outbox.stats against the model at quiescent points)
#     reclaim       allow a transaction to claim again an event whose lease
#                   in that same transaction ran out (the contract is silent)
#
# A failure prints the seed, the step and the last operations; the same seed
# chooses the same operations (what the worker does in the meantime depends
# on time, so a replay may differ in results).
#
# On 1.0 every operation kind and check fails the test (faults 1, 7, 10,
# 11, 13 of issue 8, and what the test found besides: see the history of
# this file and of src/).  OUTBOX_RANDOM_SKIP defaults to @default_skip
# below:
#   reclaim       a transaction gets again an event whose lease in that
#                 same transaction ran out (the contract is silent)
# Everything else, faults included, runs by default.
use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxRandom;

my @default_skip = qw(reclaim);
# The suite runs one fixed seed, so that a run of it repeats the same
# operations; exploring takes other seeds (OUTBOX_RANDOM_SEED=random picks
# one from the clock).
my $seed = $ENV{OUTBOX_RANDOM_SEED} // 21;
$seed = time % 1000000 if $seed eq 'random';
my $seconds = $ENV{OUTBOX_RANDOM_SECONDS} // 50;
my @skip = defined $ENV{OUTBOX_RANDOM_SKIP}
  ? grep { $_ ne '' } split /,/, $ENV{OUTBOX_RANDOM_SKIP}
  : @default_skip;
diag("OUTBOX_RANDOM_SEED=$seed OUTBOX_RANDOM_SECONDS=$seconds OUTBOX_RANDOM_SKIP=" . join(',', @skip));

my $retention = 2;
my $node = PostgreSQL::Test::Cluster->new('random');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'outbox'
restart_after_crash = on
max_prepared_transactions = 10
outbox.chain_rotation = '100ms'
outbox.retention = '${retention}s'
outbox.naptime = '50ms'
deadlock_timeout = '100ms'
log_line_prefix = '%m [%p] %b '
});
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION outbox;
	CREATE TABLE rnd_mark (tag bigint PRIMARY KEY);
	CREATE TABLE rnd_effect (inc int NOT NULL, event_id bigint NOT NULL);
});
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'outbox worker'")
  or die "no outbox worker";

my $m = OutboxRandom->new(node => $node, seed => $seed, seconds => $seconds, skip => \@skip);
$m->{retention} = $retention;
$m->{observer} = $m->add_session('O', 'observer');
$m->{admin} = $m->add_session('A', 'admin');
$m->add_session("P$_", 'producer') for 1 .. 3;
$m->add_session("C$_", 'consumer') for 1 .. 3;

my $ok = eval {
	for my $name (qw(s1 s2 s3))
	{
		$m->subscribe($m->{admin}, $name, $m->random_config);
		$m->poll($m->{admin}) until !$m->{admin}{busy};
	}
	$m->run;
	1;
};
if (!$ok)
{
	die $@ unless $@ eq "violation\n";
}
else
{
	pass("seed $seed: $m->{step} steps, no violation");
}
diag("steps $m->{step}; operations: "
	  . join(', ', map { "$_ $m->{counts}{$_}" } sort keys %{ $m->{counts} }));
diag("faults: "
	  . join(', ', map { "$_ $m->{faults}{$_}" } sort keys %{ $m->{faults} }));
diag("largest row counts seen: "
	  . join(', ', map { "$_ $m->{max_rows}{$_}" } sort keys %{ $m->{max_rows} // {} }));

$node->stop('immediate');
done_testing();
