
# Helpers for the TAP tests of the background worker's behaviour
# (t/101_*.pl .. t/104_*.pl): a node with outbox preloaded, and a session
# that LISTENs and reports the notifications it received.

package OutboxBehaviour;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(outbox_node wait_for_worker exactly_once_consumer);

# A started node with outbox preloaded and the extension created in
# database postgres, whose worker runs.  Extra postgresql.conf lines may
# be given.
sub outbox_node
{
	my ($name, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);

	$node->init;
	$node->append_conf('postgresql.conf',
		join("\n", "shared_preload_libraries = 'outbox'", @conf) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION outbox');
	wait_for_worker($node);
	return $node;
}

# An exactly-once consumer of a subscription in database postgres: the
# table "seen" counts, per event, how many times it was handed out after
# the first (dups), and "SELECT consume(n)" claims up to n events, records
# them and acks them in one transaction, returning how many it got.
sub exactly_once_consumer
{
	my ($node, $sub) = @_;
	$node->safe_psql('postgres', qq{
	CREATE TABLE seen (event_id bigint PRIMARY KEY, dups int NOT NULL DEFAULT 0);
	CREATE FUNCTION consume(n int) RETURNS int LANGUAGE plpgsql AS \$\$
	DECLARE
		ids bigint[];
	BEGIN
		SELECT array_agg(event_id) INTO ids FROM outbox.claim('$sub', n);
		INSERT INTO seen SELECT unnest(ids)
			ON CONFLICT (event_id) DO UPDATE SET dups = seen.dups + 1;
		PERFORM outbox.ack('$sub', ids);
		RETURN coalesce(cardinality(ids), 0);
	END \$\$;
});
	return;
}

# Wait until the worker of database postgres runs; dies if it never does.
sub wait_for_worker
{
	my ($node) = @_;

	$node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM pg_catalog.pg_stat_activity"
		  . " WHERE backend_type = 'outbox worker' AND datname = 'postgres'")
	  or die "the outbox worker did not start";
	return;
}

package OutboxBehaviour::Listener;

use strict;
use warnings FATAL => 'all';

use IPC::Run;
use Test::More;
use Time::HiRes qw(usleep time);

# How long wait_for waits at most, and a sync for psql's answer.  The
# contract asks for 100 ms (ready deliveries) and 1 s (due ones); this is
# only the bound of a test that fails.
our $WAIT_SECONDS = 10;

# A psql session, kept open, that LISTENs to the given channels.
sub new
{
	my ($class, $node, @channels) = @_;
	my $self = bless {
		in => '',
		out => '',
		err => '',
		sync => 0,
		seen => {},
		pid => {},
		node => $node,
	}, $class;

	$self->{timer} = IPC::Run::timer($WAIT_SECONDS);
	$self->{run} = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err},
		$self->{timer});
	$self->listen(@channels);
	return $self;
}

# LISTEN to more channels; returns once the LISTENs are in effect.
sub listen
{
	my ($self, @channels) = @_;

	$self->{in} .= qq{LISTEN "$_";\n} foreach @channels;
	$self->sync;
	return;
}

# Run a cheap command and wait for its end, so that every notification
# the session received by then is printed; count them by channel.
sub sync
{
	my ($self) = @_;
	my $n = ++$self->{sync};
	my $marker = "outbox-listener-sync-$n";

	$self->{in} .= "SELECT 1;\n\\echo $marker\n";
	$self->{timer}->start($WAIT_SECONDS);
	$self->{run}->pump
	  until $self->{out} =~ /^\Q$marker\E$/m
	  || $self->{timer}->is_expired
	  || !$self->{run}->pumpable;
	die "listener session did not answer: $self->{err}"
	  unless $self->{out} =~ /^\Q$marker\E$/m;
	die "listener session failed: $self->{err}" if $self->{err} ne '';

	while ($self->{out} =~
		/^Asynchronous notification "([^"]*)" (?:with payload "[^"]*" )?received from server process with PID (\d+)\.$/mg
	  )
	{
		$self->{seen}{$1}++;
		$self->{pid}{$1} = $2;
	}
	$self->{out} = '';
	return;
}

# How many notifications of the channel arrived (up to the last sync) and
# were not taken yet; takes them.
sub take
{
	my ($self, $channel) = @_;
	my $n = delete $self->{seen}{$channel};

	return $n // 0;
}

# The PID of the process that sent the last notification of the channel.
sub sender
{
	my ($self, $channel) = @_;

	return $self->{pid}{$channel};
}

# Forget every notification received so far.
sub clear
{
	my ($self) = @_;

	$self->sync;
	$self->{seen} = {};
	return;
}

# Wait until a notification of the channel arrives (or one not taken yet
# is there), and take it.  Returns whether one came.  The optional check is
# called after each notification: if it returns false, that notification
# does not count and the wait goes on.
sub wait_for
{
	my ($self, $channel, $check) = @_;
	my $deadline = time + $WAIT_SECONDS;
	my $early = 0;

	while (1)
	{
		$self->sync;
		if ($self->take($channel) > 0)
		{
			return 1 if !$check || $check->();
			$early++;
		}
		last if time > $deadline;
		usleep(20_000);
	}
	diag "no notification on channel $channel within $WAIT_SECONDS s"
	  . (
		$check
		? sprintf(
			" while the condition held (it holds now: %s; %d came before it did)",
			$check->() ? 'yes' : 'no', $early)
		: '');
	return 0;
}

sub quit
{
	my ($self) = @_;

	$self->{in} .= "\\q\n";
	$self->{run}->finish;
	return;
}

1;
