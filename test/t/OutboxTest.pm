# Helpers shared by the TAP tests of the outbox background worker.
#
# Every helper waits with poll_query_until, whose bound (180 s by default)
# is a safety net against hangs, never an assertion of speed.
package OutboxTest;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(
  worker_query worker_pids launcher_pid db_oid
  wait_for_worker wait_for_no_worker wait_for_launcher
  log_since kill9 drain
);

# SQL giving the pids of the outbox workers connected to a database.
sub worker_query
{
	my ($dbname) = @_;
	return "SELECT pid FROM pg_stat_activity"
	  . " WHERE backend_type = 'outbox worker' AND datname = '$dbname'"
	  . " ORDER BY pid";
}

# The pids of the outbox workers connected to a database, now.
sub worker_pids
{
	my ($node, $dbname) = @_;
	my $out = $node->safe_psql('postgres', worker_query($dbname));
	return grep { $_ ne '' } split /\n/, $out;
}

# The pid of the launcher, or '' if none runs.
sub launcher_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity"
		  . " WHERE backend_type = 'outbox launcher'");
}

sub db_oid
{
	my ($node, $dbname) = @_;
	return $node->safe_psql('postgres',
		"SELECT oid FROM pg_database WHERE datname = '$dbname'");
}

# Wait until exactly one worker serves the database (one whose pid is not
# $old_pid, when given); returns its pid, or undef after a failed test.
sub wait_for_worker
{
	my ($node, $dbname, $name, $old_pid) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $not_old = defined $old_pid ? " AND pid <> $old_pid" : '';
	my $ok = $node->poll_query_until(
		'postgres', qq{
		SELECT count(*) = 1 AND count(*) FILTER (WHERE true$not_old) = 1
		  FROM pg_stat_activity
		 WHERE backend_type = 'outbox worker' AND datname = '$dbname'});
	ok($ok, $name);
	return undef unless $ok;
	my @pids = worker_pids($node, $dbname);
	return $pids[0];
}

# Wait until no worker is connected to the database.
sub wait_for_no_worker
{
	my ($node, $dbname, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok( $node->poll_query_until(
			'postgres', qq{
		SELECT count(*) = 0 FROM pg_stat_activity
		 WHERE backend_type = 'outbox worker' AND datname = '$dbname'}),
		$name);
}

# Wait until exactly one launcher runs (not $old_pid, when given); returns
# its pid.
sub wait_for_launcher
{
	my ($node, $name, $old_pid) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $not_old = defined $old_pid ? " AND pid <> $old_pid" : '';
	my $ok = $node->poll_query_until(
		'postgres', qq{
		SELECT count(*) = 1 AND count(*) FILTER (WHERE true$not_old) = 1
		  FROM pg_stat_activity WHERE backend_type = 'outbox launcher'});
	ok($ok, $name);
	return $ok ? launcher_pid($node) : undef;
}

# The server log from a byte offset (-s $node->logfile taken earlier).
sub log_since
{
	my ($node, $offset) = @_;
	return slurp_file($node->logfile, $offset);
}

# Kill a server process with SIGKILL on purpose.  Its pid is recorded
# first, next to the node's log, so that test/run excuses exactly that
# process's "terminated by signal 9" and nothing else.
sub kill9
{
	my ($node, $pid) = @_;
	append_to_file($node->logfile . '.killed', "$pid\n");
	return kill('KILL', $pid);
}

# Claim and ack a subscription's deliveries until none is left that falls
# due within ten minutes (retries after a lease expiry wait their backoff);
# the ids in the order they were handed out.
sub drain
{
	my ($node, $db, $sub) = @_;
	my @ids;
	for my $round (1 .. 600)
	{
		my $got = $node->safe_psql($db, qq{
			WITH c AS (SELECT event_id FROM outbox.claim('$sub', 100))
			SELECT string_agg(event_id::text, ' ' ORDER BY event_id)
			  FROM c, LATERAL (SELECT outbox.ack('$sub', c.event_id)) a});
		push @ids, split / /, $got if $got ne '';
		next if $got ne '';
		# Two statements, stats first.  In one, the delivery rows would be
		# read as of the statement's snapshot, older than the one stats
		# takes: a lease that expired in between (a stream lease or a
		# leased row becoming a scheduled retry) would be in neither count.
		# Read after stats, every row a lease became is in the second.
		my $left = $node->safe_psql($db, qq{
			SELECT ready + leased FROM outbox.stats WHERE subscription = '$sub'});
		$left += $node->safe_psql($db, qq{
			SELECT count(*) FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id
			 WHERE s.name = '$sub' AND d.state IN ('ready', 'leased', 'scheduled', 'waiting')
			   AND (d.visible_at IS NULL OR d.visible_at < now() + interval '10 minutes')});
		last if $left == 0;
		select(undef, undef, undef, 0.25);
	}
	return @ids;
}

1;
