
# claim(..., wait) (contract 1.1) while it waits: it holds back no vacuum
# when it is its statement (and keeps the statement's snapshot when more
# of the statement reads with it), holds no lock but its own virtual xid,
# and ends cleanly on statement_timeout and cancel, and at once on
# pg_terminate_backend.  What wakes it besides a producer's commit (the
# isolation test claim_wait_race has those races): a retry that comes
# due, a lease the worker returns, replay.  Each attempt reads as a new
# statement would: a grant revoked meanwhile counts.

use strict;
use warnings FATAL => 'all';

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use OutboxBehaviour;

my $node = outbox_node('claim_wait', "outbox.naptime = '1s'");

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	SELECT outbox.subscribe('cw', ARRAY['cw'], lease => '1 second', backoff_base => '0', max_attempts => 2);
	CREATE TABLE churn (id int, pad text);
	CREATE FUNCTION wrapped(w interval) RETURNS bigint LANGUAGE plpgsql AS $$
	BEGIN
		RETURN (SELECT count(*) FROM outbox.claim('cw', 1, wait => w));
	END $$;
});

# A psql running sql in the background, named so that pg_stat_activity
# tells it apart; returns the harness and references to its output.
sub start_psql
{
	my ($name, $sql) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PGAPPNAME} = $name;
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-A', '-t', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err);
	return ($h, \$out, \$err);
}

# wait until the session named $name waits in a claim; returns its pid
sub waiting_pid
{
	my ($name) = @_;
	$node->poll_query_until('postgres', qq{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE application_name = '$name' AND wait_event_type = 'Extension'})
	  or die "$name never waited";
	return sql("SELECT pid FROM pg_stat_activity WHERE application_name = '$name'");
}

# dead rows of table churn that vacuum left (it removes what no snapshot
# needs), as VACUUM VERBOSE reports them: core only, no contrib module
sub dead_after_vacuum
{
	sql('INSERT INTO churn SELECT g, repeat(\'x\', 100) FROM generate_series(1, 1000) g');
	sql('DELETE FROM churn');
	my ($ret, $out, $err) = $node->psql('postgres', 'VACUUM (VERBOSE) churn');
	die "VACUUM failed: $err" if $ret != 0;
	# a line for the table and one for its TOAST table
	my @left = $err =~ /(\d+) are dead but not yet removable/g
	  or die "VACUUM VERBOSE did not say what is left: $err";
	my $sum = 0;
	$sum += $_ for @left;
	return $sum;
}

# 1. Alone in its statement: no xmin while it waits, so vacuum removes rows
# deleted meanwhile; only its virtual xid is locked.
{
	my ($h, $out, $err) = start_psql('alone',
		q{SELECT count(*) FROM outbox.claim('cw', 10, wait => '300 seconds')});
	my $pid = waiting_pid('alone');
	is(sql("SELECT backend_xmin IS NULL FROM pg_stat_activity WHERE pid = $pid"), 't',
		'a claim that is its statement has no xmin while it waits');
	is(dead_after_vacuum(), '0', 'vacuum removed the rows deleted while it waited');
	is(sql("SELECT string_agg(locktype || ' ' || mode, ', ') FROM pg_locks WHERE pid = $pid"),
		'virtualxid ExclusiveLock', 'it holds no lock but its own virtual xid');
	sql(q{SELECT outbox.enqueue('cw', '{"n": 1}')});
	$h->finish;
	is($$out, "1\n", 'and it got the event enqueued meanwhile');
	sql(q{SELECT outbox.ack('cw', id) FROM outbox.event WHERE topic = 'cw'});
}

# 2. Part of a larger statement, or inside a function: that statement's
# snapshot stays, since the statement reads with it after the claim
# returns.
for my $case (
	[ 'joined', q{SELECT count(*) FROM outbox.claim('cw', 10, wait => '300 seconds') c, churn} ],
	[ 'wrapped', q{SELECT wrapped('300 seconds')} ])
{
	my ($name, $query) = @$case;
	my ($h, $out, $err) = start_psql($name, $query);
	my $pid = waiting_pid($name);
	is(sql("SELECT backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = $pid"), 't',
		"$name: the statement's snapshot is kept while it waits");
	cmp_ok(dead_after_vacuum(), '>', 0, "$name: and vacuum left the rows it may still read");
	sql("SELECT pg_cancel_backend($pid)");
	$h->finish;
	like($$err, qr/canceling statement due to user request/, "$name: cancel ends it");
}

# 3. statement_timeout ends the wait with its error; the session goes on
{
	my ($h, $out, $err) = start_psql('timeout', q{
		SET statement_timeout = '500ms';
		SELECT count(*) FROM outbox.claim('cw', 10, wait => '300 seconds');
		RESET statement_timeout;
		SELECT 'still here'});
	$h->finish;
	like($$err, qr/canceling statement due to statement timeout/, 'statement_timeout ends the wait');
	is($$out, '', 'the rest of that query string did not run');
	my ($h2, $out2, $err2) = start_psql('timeout2',
		q{SET statement_timeout = '500ms'; SELECT count(*) FROM outbox.claim('cw', 10, wait => '100ms'); SELECT 'next'});
	$h2->finish;
	is($$out2, "0\nnext\n", 'a wait shorter than the timeout returns no rows and the session goes on');
}

# 4. pg_terminate_backend: the backend ends at once, not when the wait would
my $t0 = time;
{
	my ($h, $out, $err) = start_psql('terminated',
		q{SELECT count(*) FROM outbox.claim('cw', 10, wait => '300 seconds')});
	my $pid = waiting_pid('terminated');
	sql("SELECT pg_terminate_backend($pid)");
	$h->finish;
	like($$err, qr/terminating connection due to administrator command/,
		'pg_terminate_backend ends a waiting claim');
	cmp_ok(time - $t0, '<', 120, 'long before its wait of 300 s would have run out');
	is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"), '0', 'its backend is gone');
}

# 5. What else wakes it: a retry that comes due, a lease the worker
# returns, replay of a dead letter.  Each returns the event, at the attempt
# the contract gives.
sub claim_after
{
	my ($name, $trigger) = @_;
	my ($h, $out, $err) = start_psql($name,
		q{SELECT payload->>'n' || '@' || attempt FROM outbox.claim('cw', 10, wait => '300 seconds')});
	waiting_pid($name);
	sql($trigger) if $trigger;
	$h->finish;
	is($$err, '', "$name: no error");
	return $$out;
}

sql(q{SELECT outbox.enqueue('cw', '{"n": 2}')});
my $id = sql(q{SELECT event_id FROM outbox.claim('cw')});
sql("SELECT outbox.fail('cw', $id, 'later', retry_in => '2 seconds')");
is(claim_after('due'), "2\@2\n", 'a retry coming due wakes it (attempt 2)');
# that claim's lease (1 s) runs out: the worker dead-letters it (max_attempts 2)
$node->poll_query_until('postgres', "SELECT state = 'dead' FROM outbox.delivery WHERE event_id = $id")
  or die 'the lease was never returned';
is(claim_after('replayed', "SELECT outbox.replay('cw', $id)"), "2\@1\n",
	'replay wakes it (attempts start again)');
# its lease runs out: returned by the worker, claimed again at attempt 2
is(claim_after('returned'), "2\@2\n", 'a lease the worker returns wakes it');

# 6. Each attempt is checked as a statement of its own would be: a grant
# revoked while the claim waits holds for what it finds next
sql(q{
	CREATE ROLE cw_consumer LOGIN;
	SELECT outbox.grant_consume('cw_consumer', 'cw');
});
{
	my ($h, $out, $err) = start_psql('revoked', q{
		SET ROLE cw_consumer;
		SELECT payload->>'n' FROM outbox.claim('cw', 10, wait => '300 seconds')});
	waiting_pid('revoked');
	sql(q{SELECT outbox.revoke_consume('cw_consumer', 'cw')});
	sql(q{SELECT outbox.enqueue('cw', '{"n": 3}')});
	$h->finish;
	like($$err, qr/permission denied for subscription "cw"/,
		'a grant revoked during the wait: the next attempt is refused');
	is($$out, '', 'and claims nothing');
}

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');
done_testing();
