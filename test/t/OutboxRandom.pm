# The randomized, model-based fault-injection test of outbox (t/300_random.pl).
#
# One process drives every session step by step: the seed chooses each
# operation, its session and its arguments, so a seed replays the same
# sequence of operations.  Statements are sent asynchronously (DBD::Pg
# pg_async); one that has not answered after a few milliseconds leaves its
# session "running" (waiting for a lock of another session), a state of the
# model, and later steps poll it.  What the server does on its own (the
# worker returning leases, retries coming due) depends on time, so a replay
# may differ in the results of operations, not in the operations chosen.
#
# The model records every transaction (its begin, commit and the logical
# clock of each), every event and every claim, ack and fail, and checks the
# contract of /work/shared/spec/api.md after each step and at the end; see
# the comments at each check for what it asserts and where it is lenient.

package OutboxRandom;

use strict;
use warnings FATAL => 'all';

use DBI;
use IO::Handle;
use DBD::Pg qw(:async);
use Time::HiRes qw(usleep time);
use Test::More;
use PostgreSQL::Test::Utils;

# xorshift32: the same sequence on every platform and Perl.
sub rnd
{
	my ($self) = @_;
	my $x = $self->{rng};
	$x ^= ($x << 13) & 0xffffffff;
	$x ^= $x >> 17;
	$x ^= ($x << 5) & 0xffffffff;
	$self->{rng} = $x;
	return $x / 4294967296;
}

sub rint { my ($self, $n) = @_; return int($self->rnd * $n); }
sub pick { my ($self, @l) = @_; return $l[ $self->rint(scalar @l) ]; }
sub chance { my ($self, $p) = @_; return $self->rnd < $p; }

# Weighted choice among [weight, value] pairs.
sub wpick
{
	my ($self, @pairs) = @_;
	my $total = 0;
	$total += $_->[0] for @pairs;
	my $r = $self->rnd * $total;
	for my $p (@pairs)
	{
		return $p->[1] if ($r -= $p->[0]) < 0;
	}
	return $pairs[-1][1];
}

sub new
{
	my ($class, %a) = @_;
	my $self = bless {
		node => $a{node},
		seed => $a{seed},
		rng => (($a{seed} * 2654435761) ^ 0x9e3779b9) & 0xffffffff || 1,
		seconds => $a{seconds},
		skip => { map { $_ => 1 } @{ $a{skip} } },
		clock => 0,
		step => 0,
		tag => 0,
		events => {},
		txs => {},
		subs => {},           # name -> current incarnation
		incs => {},
		deliv => {},          # inc -> event id -> delivery
		inc_no => 0,
		sessions => [],
		prepared => {},       # gid -> tx
		trace => [],
		counts => {},
		faults => {},
		killed => {},
		last_restart => time,
		failed => 0,
		ops_window => [],
	}, $class;
	return $self;
}

sub tick { my ($self) = @_; return ++$self->{clock}; }
sub count { my ($self, $what) = @_; $self->{counts}{$what}++; }
sub skipped { my ($self, $what) = @_; return $self->{skip}{$what}; }

sub note_op
{
	my ($self, $text) = @_;
	push @{ $self->{trace} }, "step $self->{step}: $text";
	if (!$self->{ops_fh})
	{
		open($self->{ops_fh}, '>', "$PostgreSQL::Test::Utils::log_path/random_operations.log") or die $!;
		$self->{ops_fh}->autoflush(1);
	}
	print { $self->{ops_fh} } sprintf("%.3f step %d: %s\n", time, $self->{step}, $text);
	shift @{ $self->{trace} } while @{ $self->{trace} } > 60;
}

# A violation of the contract: print the seed, the step and the recent
# operations, and stop.
sub violation
{
	my ($self, $msg) = @_;
	return if $self->{failed};
	$self->{failed} = 1;
	diag("VIOLATION (seed $self->{seed}, step $self->{step}): $msg");
	diag("reproduce with OUTBOX_RANDOM_SEED=$self->{seed}"
		  . " OUTBOX_RANDOM_SECONDS=$self->{seconds}"
		  . (%{ $self->{skip} } ? " OUTBOX_RANDOM_SKIP=" . join(',', sort keys %{ $self->{skip} }) : ''));
	diag("last operations:");
	diag("  $_") for @{ $self->{trace} };
	fail("seed $self->{seed} step $self->{step}: $msg");
	if ($ENV{OUTBOX_RANDOM_HOLD})
	{
		# keep the cluster up for a look (psql -h HOST -p PORT postgres)
		diag("holding the cluster for $ENV{OUTBOX_RANDOM_HOLD} s: host "
			  . $self->{node}->host . " port " . $self->{node}->port);
		sleep($ENV{OUTBOX_RANDOM_HOLD});
	}
	die "violation\n";
}

#
# Sessions.
#

sub dsn
{
	my ($self) = @_;
	my $n = $self->{node};
	return "dbi:Pg:dbname=postgres;host=" . $n->host . ";port=" . $n->port;
}

sub connect_session
{
	my ($self, $s) = @_;
	my $dbh = DBI->connect($self->dsn, undef, undef,
		{ AutoCommit => 1, RaiseError => 0, PrintError => 0, pg_server_prepare => 0 });
	return 0 unless $dbh;
	$dbh->do("SET client_min_messages = warning");
	$dbh->do("SET statement_timeout = '120s'") if $s->{role} eq 'observer';
	$s->{dbh} = $dbh;
	$s->{pid} = $dbh->{pg_pid};
	$s->{busy} = undef;
	$s->{tx} = undef;
	return 1;
}

sub add_session
{
	my ($self, $name, $role) = @_;
	my $s = { name => $name, role => $role };
	$self->connect_session($s) or die "cannot connect: $DBI::errstr";
	push @{ $self->{sessions} }, $s;
	$self->{by_name}{$name} = $s;
	return $s;
}

sub is_conn_error
{
	my ($state, $msg) = @_;
	return 1 if defined $state && $state =~ /^(08|57P)/;
	return 1 if defined $msg && $msg =~ /server closed the connection|terminating connection|no connection to the server|connection to server|could not receive data|lost synchronization/i;
	return 0;
}

# Synchronous statement on a session; returns the rows, or undef and sets
# $self->{err} = [state, message].
sub sync
{
	my ($self, $s, $sql) = @_;
	my $sth = $s->{dbh}->prepare($sql);
	if ($sth && $sth->execute)
	{
		my $rows = $sth->{NUM_OF_FIELDS} ? $sth->fetchall_arrayref : [];
		return $rows;
	}
	$self->{err} = [ $s->{dbh}->state, $s->{dbh}->errstr // '' ];
	return undef;
}

# Observer queries: never expected to fail but on a crash.
sub oq
{
	my ($self, $sql) = @_;
	my $o = $self->{observer};
	my $rows = $self->sync($o, $sql);
	if (!defined $rows)
	{
		my ($state, $msg) = @{ $self->{err} };
		if (is_conn_error($state, $msg))
		{
			$self->unexpected_crash("observer: $msg");
			$rows = $self->sync($o, $sql);
			return $rows if defined $rows;
		}
		$self->violation("observer query failed: $state $msg\n  $sql");
	}
	return $rows;
}

# Send a statement asynchronously; $cb->($rows, $err) runs when it is done
# ($err = [state, message] or undef).  Waits a few milliseconds for the
# answer, so a statement that does not block finishes within its step.
# $on_lost, if given, runs after a crash took the statement's answer: it
# finds out from the database what became of the statement.
sub send
{
	my ($self, $s, $sql, $cb, $what, $on_lost) = @_;
	die "session $s->{name} busy" if $s->{busy};
	my $sth = $s->{dbh}->prepare($sql, { pg_async => PG_ASYNC });
	$s->{busy} = { sth => $sth, cb => $cb, sql => $sql, since => time, what => $what,
		on_lost => $on_lost };
	if (!$sth || !$sth->execute)
	{
		my $err = [ $s->{dbh}->state, $s->{dbh}->errstr // '' ];
		$s->{busy} = undef;
		$cb->(undef, $err);
		return;
	}
	for (1 .. 60)
	{
		last if $s->{dbh}->pg_ready;
		usleep(1000);
	}
	$self->poll($s);
}

sub poll
{
	my ($self, $s) = @_;
	my $b = $s->{busy} or return 1;
	my $ready = $s->{dbh}->pg_ready;
	return 0 if defined $ready && $ready == 0;
	my $rv = $s->{dbh}->pg_result;
	$s->{busy} = undef;
	if (!defined $rv || $s->{dbh}->err)
	{
		$b->{cb}->(undef, [ $s->{dbh}->state, $s->{dbh}->errstr // '' ]);
		return 1;
	}
	my $rows = $b->{sth}{NUM_OF_FIELDS} ? $b->{sth}->fetchall_arrayref : [];
	$b->{cb}->($rows, undef);
	return 1;
}

#
# Transactions.  Every transaction of the model inserts its tag into
# rnd_mark first, so after a crash the commit of a transaction whose COMMIT
# got no answer is read from the table, and every commit that was answered
# must still be there (durability).
#

sub begin_tx
{
	my ($self, $s, %o) = @_;
	my $iso = $o{iso} // 'read committed';
	my $tag = ++$self->{tag};
	my $tx = {
		tag => $tag, sess => $s->{name}, iso => $iso, t_begin => $self->tick,
		state => 'open', events => [], ops => [], sp => [], readonly => $o{readonly},
		begin_time => time,
	};
	my $ro = $o{readonly} ? ' READ ONLY' : '';
	# the mark is written before READ ONLY applies: SET TRANSACTION after it
	my $ok = defined $self->sync($s, "BEGIN ISOLATION LEVEL $iso")
	  && defined $self->sync($s, "INSERT INTO rnd_mark VALUES ($tag)")
	  && ($ro eq '' || defined $self->sync($s, "SET TRANSACTION READ ONLY"));
	if (!$ok)
	{
		my ($state, $msg) = @{ $self->{err} };
		if ($ro && $state eq '25001')
		{
			# SET TRANSACTION READ ONLY after a write is refused: begin
			# the read-only transaction without a mark (it writes nothing).
		}
		$self->conn_or_unexpected($s, $state, $msg, "begin");
		return undef;
	}
	$tx->{t_snap} = $self->tick;
	$self->{txs}{$tag} = $tx;
	$s->{tx} = $tx;
	$self->note_op("$s->{name}: BEGIN $iso$ro (tx $tag)");
	return $tx;
}

# An error on a session: a lost connection means a crash we did not cause
# (a violation); anything else is returned to the caller to judge.
sub conn_or_unexpected
{
	my ($self, $s, $state, $msg, $what) = @_;
	if (is_conn_error($state, $msg))
	{
		$self->unexpected_crash("$s->{name} ($what): $msg");
		return 1;
	}
	$self->violation("$s->{name}: unexpected error in $what: $state $msg");
}

sub unexpected_crash
{
	my ($self, $msg) = @_;
	return $self->recover("unexpected") if $self->{expect_crash};
	$self->violation("connection lost without an injected fault (did the server crash?): $msg"
		  . "\n" . $self->signal_lines);
}

sub signal_lines
{
	my ($self) = @_;
	my $log = slurp_file($self->{node}->logfile);
	my @l = grep { /terminated by signal|PANIC|TRAP/ } split /\n/, $log;
	return join("\n", @l[ ($#l > 10 ? $#l - 10 : 0) .. $#l ]);
}

# The end of a transaction by its session: apply what it did to the model.
sub tx_committed
{
	my ($self, $tx, $lo, $hi) = @_;
	$tx->{state} = 'committed';
	$tx->{t_commit_lo} = $lo;
	$tx->{t_commit_hi} = $hi;
	$tx->{commit_time} = time;
	for my $op (@{ $tx->{ops} })
	{
		my ($kind, $inc, $id, @rest) = @$op;
		my $d = $self->deliv($inc, $id);
		if ($kind eq 'claim')
		{
			my ($attempt, $clk, $lease) = @rest;
			$d->{holder} = undef if ($d->{holder} // 0) == $tx->{tag};
			$d->{claims_committed}++;
			$d->{leased_by} = { tag => $tx->{tag}, lease_end => $clk + $lease, attempt => $attempt };
			$d->{claimed_ever} = 1;
			push @{ $self->{ops_window} }, time;
			# at-least-once style: acked or failed in a later transaction
			push @{ $self->{by_name}{ $tx->{sess} }{held} }, [ $inc, $id, $attempt ]
			  unless $op->[5];
		}
		elsif ($kind eq 'ack')
		{
			my ($r) = @rest;
			next unless $r;
			if ($d->{done})
			{
				$self->violation("delivery $id of subscription inc $inc acked twice:"
					  . " acks returning true committed by tx $d->{done} and tx $tx->{tag}");
			}
			$d->{done} = $tx->{tag};
			$d->{dead} = 0;
			$d->{leased_by} = undef;
			push @{ $self->{ops_window} }, time;
		}
		elsif ($kind eq 'fail')
		{
			my ($r) = @rest;
			next unless defined $r;
			$d->{leased_by} = undef;
			$d->{dead} = 1 if $r eq 'dead';
			push @{ $self->{ops_window} }, time;
		}
	}
	$self->release_holds($tx);
}

sub tx_rolledback
{
	my ($self, $tx) = @_;
	$tx->{state} = 'rolledback';
	$self->release_holds($tx);
}

sub release_holds
{
	my ($self, $tx) = @_;
	for my $op (@{ $tx->{ops} })
	{
		my $d = $self->deliv($op->[1], $op->[2]);
		$d->{holder} = undef if ($d->{holder} // 0) == $tx->{tag};
		delete $d->{touched}{ $tx->{tag} };
	}
	my $s = $self->{by_name}{ $tx->{sess} };
	$s->{tx} = undef if $s && $s->{tx} && $s->{tx} == $tx;
}

sub end_tx
{
	my ($self, $s, $how) = @_;
	my $tx = $s->{tx};
	my $lo = $self->tick;
	$tx->{state} = 'committing' if $how eq 'COMMIT';
	$tx->{t_commit_lo} = $lo;
	$self->note_op("$s->{name}: $how (tx $tx->{tag})");
	$self->send(
		$s, $how,
		sub {
			my ($rows, $err) = @_;
			if ($err)
			{
				if (is_conn_error(@$err))
				{
					# resolved by recover() from rnd_mark
					$tx->{state} = 'uncertain' if $how eq 'COMMIT';
					$self->unexpected_crash("$s->{name} $how: $err->[1]");
					return;
				}
				if ($err->[0] =~ /^(40001|40P01)$/ && $how eq 'COMMIT')
				{
					$self->count('serialization_failure');
					$self->tx_rolledback($tx);
					$self->admin_tx_done($tx) if $s->{role} eq 'admin';
					return;
				}
				$self->violation("$s->{name}: $how failed: @$err");
			}
			if ($how eq 'COMMIT')
			{
				# COMMIT of a transaction in error state answers ROLLBACK
				if ($tx->{aborted}) { $self->tx_rolledback($tx); }
				else
				{
					$self->tx_committed($tx, $lo, $self->tick);
					$self->count("commit_$s->{role}");
				}
			}
			else
			{
				$self->tx_rolledback($tx);
				$self->count("rollback_$s->{role}");
			}
			$self->admin_tx_done($tx) if $s->{role} eq 'admin';
		},
		$how);
}

# An error inside a transaction: serialization failures and deadlocks are
# part of life (the transaction is rolled back); $allowed names other
# SQLSTATEs the caller accepts.
sub stmt_error
{
	my ($self, $s, $err, $what, %allowed) = @_;
	my ($state, $msg) = @$err;
	if (is_conn_error($state, $msg))
	{
		$self->unexpected_crash("$s->{name} ($what): $msg");
		return;
	}
	if ($state =~ /^(40001|40P01)$/ || $allowed{$state})
	{
		$self->count("error_$state");
		$self->note_op("$s->{name}: $what -> $state $msg");
		if (my $tx = $s->{tx})
		{
			# PostgreSQL aborts the transaction at once (its claims are
			# gone); the session still has to send ROLLBACK
			$tx->{aborted} = 1;
			for my $op (@{ $tx->{ops} })
			{
				my $d = $self->deliv($op->[1], $op->[2]);
				$d->{holder} = undef if ($d->{holder} // 0) == $tx->{tag};
				delete $d->{touched}{ $tx->{tag} };
			}
			$tx->{ops} = [];
		}
		return;
	}
	$self->violation("$s->{name}: unexpected error in $what: $state $msg");
}

#
# Subscriptions and what each event is for.
#

sub deliv
{
	my ($self, $inc, $id) = @_;
	return $self->{deliv}{$inc}{$id} //= { inc => $inc, id => $id, claims_committed => 0, touched => {} };
}

sub matches
{
	my ($cfg, $topic) = @_;
	return 1 if $cfg->{topics}[0] eq '*';
	return scalar grep { $_ eq $topic } @{ $cfg->{topics} };
}

# Whether event $e is for incarnation $S: 'must' (the contract says it
# reaches it), 'may' (the contract allows either), or 'no'.
sub classify
{
	my ($self, $S, $e) = @_;
	my $tx = $self->{txs}{ $e->{tx} };
	return 'no' if $e->{rolled};
	my $st = $tx->{state};
	return 'no' if $st eq 'rolledback' || $st eq 'open' || $st eq 'prepared';
	my $committed = $st eq 'committed';
	my $hi = $committed ? $tx->{t_commit_hi} : 9**9**9;
	my $lo = $tx->{t_commit_lo} // $tx->{t_begin};
	# committed before subscribe() was called: never
	return 'no' if $hi < $S->{t_call};
	my @cfg = @{ $S->{configs} };
	return 'no' unless grep { matches($_, $e->{topic}) } @cfg;
	return 'may' unless $committed && $S->{t_commit} && $tx->{t_begin} > $S->{t_commit};
	# the settings in force from the transaction's begin to its commit
	# (a change in flight counts with both its old and new topics)
	my $at_begin;
	for my $c (@cfg)
	{
		$at_begin = $c if defined $c->{t_commit} && $c->{t_commit} < $tx->{t_begin};
	}
	my @relevant = grep {
		$_ == ($at_begin // $cfg[0])
		  || ($_->{t_call} <= $hi && (!defined $_->{t_commit} || $_->{t_commit} > $tx->{t_begin}))
	} @cfg;
	return 'must' unless grep { !matches($_, $e->{topic}) } @relevant;
	return 'may';
}

sub committed_event
{
	my ($self, $e) = @_;
	return !$e->{rolled} && $self->{txs}{ $e->{tx} }{state} eq 'committed';
}

# The order checks apply to incarnations that were ordered all their life
# (switching "ordered" applies to deliveries not yet claimed: lenient).
sub always_ordered
{
	my ($self, $S) = @_;
	return !grep { !$_->{ordered} } @{ $S->{configs} };
}

#
# Producers.
#

sub producer_step
{
	my ($self, $s) = @_;
	my $tx = $s->{tx};
	if (!$tx)
	{
		my $iso = $self->skipped('isolation') ? 'read committed'
		  : $self->wpick([ 6, 'read committed' ], [ 2, 'repeatable read' ], [ 2, 'serializable' ]);
		my $ro = !$self->skipped('readonly') && $self->chance(0.03);
		$self->begin_tx($s, iso => $iso, readonly => $ro);
		return;
	}
	if ($tx->{aborted}) { $self->end_tx($s, 'ROLLBACK'); return; }
	my @ops = ([ 55, 'enqueue' ], [ 20, 'commit' ], [ 6, 'rollback' ], [ 4, 'savepoint' ]);
	push @ops, [ 4, 'rollback_to' ] if @{ $tx->{sp} };
	push @ops, [ 5, 'prepare' ]
	  unless $self->skipped('prepared') || $tx->{readonly} || keys %{ $self->{prepared} } >= 6;
	my $op = $self->wpick(@ops);
	if ($op eq 'enqueue') { $self->enqueue($s, $tx); }
	elsif ($op eq 'commit') { $self->end_tx($s, 'COMMIT'); }
	elsif ($op eq 'rollback') { $self->end_tx($s, 'ROLLBACK'); }
	elsif ($op eq 'savepoint')
	{
		my $n = scalar @{ $tx->{sp} };
		$self->note_op("$s->{name}: SAVEPOINT sp$n");
		if (defined $self->sync($s, "SAVEPOINT sp$n")) { push @{ $tx->{sp} }, scalar @{ $tx->{events} }; }
		else { $self->stmt_error($s, $self->{err}, 'savepoint'); }
	}
	elsif ($op eq 'rollback_to')
	{
		my $n = $#{ $tx->{sp} };
		$self->note_op("$s->{name}: ROLLBACK TO SAVEPOINT sp$n");
		if (defined $self->sync($s, "ROLLBACK TO SAVEPOINT sp$n"))
		{
			my $from = pop @{ $tx->{sp} };
			my @gone = splice @{ $tx->{events} }, $from;
			$self->{events}{$_}{rolled} = 1 for @gone;
			$self->count('savepoint_rollback');
		}
		else { $self->stmt_error($s, $self->{err}, 'rollback to savepoint'); }
	}
	elsif ($op eq 'prepare')
	{
		my $gid = "rnd_$tx->{tag}";
		$tx->{t_prepare} = $self->tick;
		$self->note_op("$s->{name}: PREPARE TRANSACTION '$gid'");
		$self->send($s, "PREPARE TRANSACTION '$gid'", sub {
			my ($rows, $err) = @_;
			if ($err)
			{
				$tx->{state} = 'uncertain_prepare' if is_conn_error(@$err);
				return $self->stmt_error($s, $err, 'prepare') ? undef : $self->tx_rolledback($tx);
			}
			if ($tx->{aborted}) { $self->tx_rolledback($tx); return; }
			$tx->{state} = 'prepared';
			$tx->{gid} = $gid;
			$self->{prepared}{$gid} = $tx;
			$s->{tx} = undef;
			$self->count('prepare');
		}, 'PREPARE');
	}
}

sub enqueue
{
	my ($self, $s, $tx) = @_;
	my $topic = $self->pick(qw(a b c));
	my $key = $self->chance(0.5) ? undef : 'k' . $self->rint(4);
	$key = 'L' x 3800 if !$self->skipped('longkey') && $self->chance(0.005);
	my $delay;
	my $far = 0;
	if (!$self->skipped('farfuture') && $self->chance(0.004)) { $delay = 86400; $far = 1; }
	elsif ($self->chance(0.1)) { $delay = 0.1 + $self->rint(20) / 10; }
	my $dedup = $self->chance(0.1) ? 'd' . $self->rint(5) : undef;
	my $n = ++$self->{enq_no};
	my $payload = $self->chance(0.02)
	  ? "jsonb_build_object('n', $n, 'pad', repeat('x', 200000))"
	  : "'{\"n\": $n}'::jsonb";
	my $q = sub { defined $_[0] ? "'$_[0]'" : 'NULL' };
	my $da = defined $delay ? "now() + interval '$delay seconds'" : 'NULL';
	my $sql = "SELECT outbox.enqueue('$topic', $payload, " . $q->($key)
	  . ", NULL, $da, " . $q->($dedup) . "), extract(epoch from ($da)::timestamptz), extract(epoch from now())";
	my $kshow = defined $key ? (length $key > 10 ? 'L x ' . length $key : $key) : 'NULL';
	$self->note_op("$s->{name}: enqueue topic $topic key $kshow"
		  . (defined $delay ? " delay $delay" : '') . (defined $dedup ? " dedup $dedup" : '')
		  . " (tx $tx->{tag})");
	$self->send($s, $sql, sub {
		my ($rows, $err) = @_;
		if ($err)
		{
			my %ok;
			$ok{22023} = 1 if defined $key && length $key > 100;
			$ok{25006} = 1 if $tx->{readonly};
			return $self->stmt_error($s, $err, 'enqueue', %ok);
		}
		if ($tx->{readonly})
		{
			$self->violation("enqueue succeeded in a READ ONLY transaction (expected 25006)");
		}
		my ($id, $da_epoch, $now) = @{ $rows->[0] };
		$self->note_op("  -> event $id");
		my $old = $self->{events}{$id};
		if ($old && $old->{tx} != $tx->{tag} && $self->{txs}{ $old->{tx} }{state} eq 'rolledback')
		{
			# After a crash PostgreSQL hands out again the xids of which
			# nothing reached the disk, so an id of a transaction the crash
			# rolled back can come back, for a new event.
			$self->{by_key}{ $old->{key} } = [ grep { $_ != $id } @{ $self->{by_key}{ $old->{key} } } ]
			  if defined $old->{key};
			$self->{event_list} = [ grep { $_ != $id } @{ $self->{event_list} } ];
			delete $self->{events}{$id};
			delete $_->{$id} for values %{ $self->{deliv} };
			$self->count('id_reused');
			$old = undef;
		}
		if ($old)
		{
			# a dedup hit: the retained event of the same topic and key
			my $otx = $self->{txs}{ $old->{tx} };
			# The holder's COMMIT may have been sent and its answer not read
			# yet: the enqueue waited on the dedup key for that commit.
			$self->violation("enqueue returned event $id of another, not committed transaction")
			  if $otx != $tx && !$self->committed_event($old)
			  && $otx->{state} !~ /^(?:uncertain|committing)/;
			$self->violation("enqueue returned event $id although its dedup key differs")
			  if ($old->{dedup} // '') ne ($dedup // '') || $old->{topic} ne $topic;
			$self->count('dedup_hit');
			return;
		}
		$self->{events}{$id} = {
			id => $id, tx => $tx->{tag}, topic => $topic, key => $key,
			deliver_at => $da_epoch, far => $far, dedup => $dedup,
			seq => scalar @{ $tx->{events} }, enq_time => $now,
		};
		push @{ $tx->{events} }, $id;
		push @{ $self->{event_list} }, $id;
		push @{ $self->{by_key}{$key} }, $id if defined $key;
		$self->count('enqueue');
		$self->count('enqueue_large') if $payload =~ /repeat/;
		$self->count('enqueue_delayed') if defined $delay;
	}, 'enqueue');
}

sub finish_prepared
{
	my ($self, $s, $gid, $commit) = @_;
	my $tx = delete $self->{prepared}{$gid};
	my $how = $commit ? 'COMMIT PREPARED' : 'ROLLBACK PREPARED';
	my $lo = $tx->{t_prepare};
	$tx->{state} = 'committing' if $commit;
	$tx->{t_commit_lo} = $lo;
	$self->note_op("$s->{name}: $how '$gid'");
	$self->send($s, "$how '$gid'", sub {
		my ($rows, $err) = @_;
		if ($err)
		{
			if (is_conn_error(@$err))
			{
				$tx->{state} = 'uncertain_prepared';
				$self->{prepared}{$gid} = $tx;
				return $self->unexpected_crash("$how: $err->[1]");
			}
			$self->violation("$how failed: @$err");
		}
		if ($commit) { $self->tx_committed($tx, $lo, $self->tick); $self->count('commit_prepared'); }
		else { $self->tx_rolledback($tx); $self->count('rollback_prepared'); }
	}, $how);
}

#
# Consumers.
#

sub current_sub_names
{
	my ($self) = @_;
	return sort grep { !$self->{subs}{$_}{ending} } keys %{ $self->{subs} };
}

sub consumer_step
{
	my ($self, $s) = @_;
	my $tx = $s->{tx};
	if (!$tx)
	{
		my @names = $self->current_sub_names or return;
		my $iso = $self->skipped('isolation') ? 'read committed'
		  : $self->wpick([ 5, 'read committed' ], [ 2.5, 'repeatable read' ], [ 2.5, 'serializable' ]);
		$tx = $self->begin_tx($s, iso => $iso) or return;
		$tx->{sub} = $self->pick(@names);
		$tx->{inc} = $self->{subs}{ $tx->{sub} }{inc};
		return;
	}
	if ($tx->{aborted}) { $self->end_tx($s, 'ROLLBACK'); return; }
	my @own = grep { $_->[0] eq 'claim' && !$_->[5] } @{ $tx->{ops} };
	my @held = grep { $_->[0] eq $tx->{inc} } @{ $s->{held} // [] };
	my @ops = ([ 30, 'claim' ], [ 20, 'commit' ], [ 4, 'rollback' ]);
	push @ops, [ 25, 'ack' ], [ 8, 'fail' ] if @own;
	push @ops, [ 10, 'late_ack' ], [ 3, 'late_fail' ] if @held;
	push @ops, [ 4, 'ack_ahead' ] unless $self->skipped('ackahead') || !@{ $self->{event_list} // [] };
	my $op = $self->wpick(@ops);
	if ($op eq 'claim') { $self->claim($s, $tx); }
	elsif ($op eq 'commit') { $self->end_tx($s, 'COMMIT'); }
	elsif ($op eq 'rollback') { $self->end_tx($s, 'ROLLBACK'); }
	elsif ($op eq 'ack')
	{
		my $c = $self->pick(@own);
		$self->ack($s, $tx, $c->[2], 'ack');
	}
	elsif ($op eq 'fail')
	{
		my $c = $self->pick(@own);
		$self->fail_op($s, $tx, $c->[2], $c->[3]);
	}
	elsif ($op eq 'late_ack')
	{
		my $h = $self->pick(@held);
		$s->{held} = [ grep { $_ != $h } @{ $s->{held} } ];
		$self->ack($s, $tx, $h->[1], 'late ack');
	}
	elsif ($op eq 'late_fail')
	{
		my $h = $self->pick(@held);
		$s->{held} = [ grep { $_ != $h } @{ $s->{held} } ];
		$self->fail_op($s, $tx, $h->[1], $h->[2]);
	}
	elsif ($op eq 'ack_ahead')
	{
		my $l = $self->{event_list};
		my $from = @$l > 40 ? @$l - 40 : 0;
		$self->ack($s, $tx, $l->[ $from + $self->rint(@$l - $from) ], 'ack-ahead');
	}
}

# Whether the incarnation a consumer transaction began with is still the
# subscription's, with no change of settings in flight.
sub tx_sub
{
	my ($self, $tx) = @_;
	my $S = $self->{subs}{ $tx->{sub} };
	# an unsubscribe in flight may still fail (a deadlock): keep recording
	return undef unless $S && $S->{inc} == $tx->{inc};
	return $S;
}

sub stable
{
	my ($S) = @_;
	return !grep { !defined $_->{t_commit} } @{ $S->{configs} };
}

sub claim
{
	my ($self, $s, $tx) = @_;
	my $name = $tx->{sub};
	my $batch = $self->pick(1, 1, 2, 3, 5, 20);
	my $tiny = !$self->skipped('tinylease') && $self->chance(0.15);
	my $lease = $tiny ? "'200 milliseconds'" : 'NULL';
	my $t_sent = $self->tick;
	$self->note_op("$s->{name}: claim $name batch $batch" . ($tiny ? ' lease 200ms' : '') . " (tx $tx->{tag})");
	$self->send($s,
		"SELECT c.event_id, c.key, c.attempt, extract(epoch from clock_timestamp())"
		  . " FROM outbox.claim('$name', $batch, $lease) c",
		sub {
			my ($rows, $err) = @_;
			if ($err)
			{
				my %ok;
				$ok{42704} = 1 unless $self->tx_sub($tx) && !$self->{subs}{$name}{ending} && $self->{subs}{$name}{t_commit} < $tx->{t_begin};
				return $self->stmt_error($s, $err, "claim $name", %ok);
			}
			$self->count('claim');
			$self->count('claimed_events') for @$rows;
			# a claim that returned nothing may still have made deliveries
			# of its own (delayed, waiting): an ack of them in another
			# transaction returns false until this one commits
			$tx->{claimed_from}{ $tx->{inc} } = 1;
			$self->note_op("  -> " . join(' ', map { "$_->[0]\@$_->[2]" } @$rows)) if @$rows;
			my $S = $self->tx_sub($tx);
			if (!$S)
			{
				# the subscription changed under the transaction: unchecked
				$tx->{stale} = 1;
				return;
			}
			my $lease_s = $tiny ? 0.2 : $S->{configs}[-1]{lease};
			for my $c (@{ $S->{configs} }) { $lease_s = $c->{lease} if !$tiny && $c->{lease} > $lease_s; }
			# a REPEATABLE READ snapshot taken before the pause may not see it
			my $seen_by = $tx->{iso} eq 'read committed' ? $t_sent : $tx->{t_snap};
			$self->violation("claim returned rows of paused subscription $name")
			  if @$rows && $S->{paused} eq '1' && $S->{pause_commit} < $seen_by;
			my %keys;
			for my $r (@$rows)
			{
				my ($id, $key, $attempt, $clk) = @$r;
				$self->await_answers_for($self->deliv($S->{inc}, $id));
				$self->check_claim($s, $tx, $S, $id, $key, $attempt, $clk, $t_sent);
				if (defined $key && $self->always_ordered($S))
				{
					$self->violation("ordered subscription $name: one claim returned two events of key $key")
					  if $keys{$key}++;
				}
				push @{ $tx->{ops} }, [ 'claim', $S->{inc}, $id, $attempt, $clk, 0, $lease_s ];
				my $d = $self->deliv($S->{inc}, $id);
				$d->{holder} = $tx->{tag};
				$d->{touched}{ $tx->{tag} } = 1;
			}
		}, 'claim');
}

# A claim returned an event that the model still sees held by a
# transaction whose session has a statement unanswered (send() stops
# waiting after 60 ms), or dead with a replay unanswered.  The server may
# have ended that transaction before the claim began (a COMMIT carried out,
# or an error: a deadlock victim, a serialization failure), or carried out
# the replay, and only then could the claim get the event.  Take those
# answers first, so that the checks compare against what had happened.  A
# transaction that really still holds the event may be waiting for the
# claimer's: after 10 s the checks go on without the answer.
sub await_answers_for
{
	my ($self, $d) = @_;
	my @wait;
	if (my $tag = $d->{holder})
	{
		my $tx = $self->{txs}{$tag};
		my $hs = $tx && $self->{by_name}{ $tx->{sess} };
		push @wait, $hs if $hs && $hs->{busy};
	}
	push @wait, $self->{admin} if $d->{replay_pending} && $d->{dead};
	for my $s (@wait)
	{
		my $until = time + 10;
		while ($s->{busy} && time < $until)
		{
			last if $self->poll($s);
			usleep(1000);
		}
	}
}

sub check_claim
{
	my ($self, $s, $tx, $S, $id, $key, $attempt, $clk, $t_sent) = @_;
	my $name = $S->{name};
	my $e = $self->{events}{$id};
	$self->violation("claim of $name returned unknown event $id") unless $e;
	my $cls = $self->classify($S, $e);
	if ($cls eq 'no')
	{
		my $etx = $self->{txs}{ $e->{tx} };
		$self->violation("claim of $name returned event $id, which is not for it"
			  . " (event tx $etx->{tag} $etx->{state}" . ($e->{rolled} ? ', rolled back to a savepoint' : '')
			  . ", topic $e->{topic}, tx began at clock $etx->{t_begin}, committed at "
			  . ($etx->{t_commit_hi} // '-') . "; subscription called at $S->{t_call})");
	}
	my $d = $self->deliv($S->{inc}, $id);
	$self->violation("claim of $name handed out event $id again although an ack of it"
		  . " returned true in committed tx $d->{done}") if $d->{done};
	$self->violation("claim of $name handed out dead delivery $id") if $d->{dead};
	$self->violation("claim of $name returned event $id, held by open tx $d->{holder}")
	  if $d->{holder} && $d->{holder} != $tx->{tag};
	# A transaction that still holds an event (claimed, not acked or failed)
	# gets it again only if its own lease ran out meanwhile, which the
	# contract leaves open ('reclaim' in OUTBOX_RANDOM_SKIP allows it):
	# an exactly-once consumer would then apply it twice.
	my $reclaim = 0;
	for my $op (@{ $tx->{ops} })
	{
		next unless $op->[0] eq 'claim' && $op->[2] == $id && !$op->[5];
		$self->violation("claim of $name returned event $id twice in one transaction"
			  . ($clk > $op->[4] + $op->[6] ? ' (after its lease in this transaction ran out)' : ''))
		  unless $self->skipped('reclaim') && $clk > $op->[4] + $op->[6];
		$reclaim = 1;
		$op->[5] = 1;
	}
	if (my $l = $d->{leased_by})
	{
		$self->violation("claim of $name handed out event $id, leased by committed tx $l->{tag}"
			  . " until " . sprintf('%.3f', $l->{lease_end}) . ", at " . sprintf('%.3f', $clk))
		  if $clk < $l->{lease_end} - 1.0;
	}
	$self->violation("claim of $name returned event $id before its deliver_at ("
		  . sprintf('%.3f < %.3f', $clk, $e->{deliver_at}) . ")")
	  if defined $e->{deliver_at} && $clk < $e->{deliver_at};
	# attempts: one per committed claim, and per claim earlier in this
	# transaction
	my $here = grep { $_->[0] eq 'claim' && $_->[2] == $id } @{ $tx->{ops} };
	if (!$d->{attempt_unknown} && !$d->{replay_pending} && $attempt != $d->{claims_committed} + $here + 1
		&& !($reclaim && $attempt == $d->{claims_committed} + $here))
	{
		$self->violation("claim of $name returned event $id with attempt $attempt, expected "
			  . ($d->{claims_committed} + $here + 1) . " (committed claims so far: $d->{claims_committed},"
			  . " in this transaction $here)");
	}
	# ordered: every earlier event of the key (in commit order, when that
	# order is certain) must be done or dead
	if (defined $key && $self->always_ordered($S) && $cls eq 'must')
	{
		my $etx = $self->{txs}{ $e->{tx} };
		for my $oid (@{ $self->{by_key}{$key} // [] })
		{
			next if $oid == $id;
			my $o = $self->{events}{$oid};
			my $otx = $self->{txs}{ $o->{tx} };
			next unless $self->classify($S, $o) eq 'must';
			my $before = $otx == $etx ? $o->{seq} < $e->{seq} : $otx->{t_commit_hi} < $etx->{t_commit_lo};
			next unless $before;
			my $od = $self->deliv($S->{inc}, $oid);
			next if $od->{done} || $od->{dead};
			# a replayed dead letter queues behind its key (README, Ordering):
			# later events of the key may go first
			next if $od->{replayed};
			# acked or dead-lettered earlier in this same transaction: done
			# for it (a rollback undoes both)
			next if grep {
				$_->[1] == $S->{inc} && $_->[2] == $oid && defined $_->[3]
				  && (($_->[0] eq 'ack' && $_->[3]) || ($_->[0] eq 'fail' && $_->[3] eq 'dead'))
			} @{ $tx->{ops} };
			my $dead = $self->oq("SELECT count(*) FROM outbox.dead_letters"
				  . " WHERE subscription = '$name' AND event_id = $oid")->[0][0];
			if ($dead) { $od->{dead} = 1; next; }
			$self->violation("ordered subscription $name: event $id of key $key (tx $etx->{tag},"
				  . " commit $etx->{t_commit_lo}..$etx->{t_commit_hi}) claimed while the earlier event"
				  . " $oid of the key (tx $otx->{tag}, commit $otx->{t_commit_lo}..$otx->{t_commit_hi})"
				  . " is neither done nor dead");
		}
	}
}

# ack, with the effect row of an exactly-once consumer in the same statement
sub ack
{
	my ($self, $s, $tx, $id, $what) = @_;
	my $name = $tx->{sub};
	my $inc = $tx->{inc};
	my $t_sent = $self->tick;
	$self->note_op("$s->{name}: $what $name $id (tx $tx->{tag})");
	$self->send($s,
		"WITH a AS (SELECT outbox.ack('$name', ${id}::bigint) AS r),"
		  . " i AS (INSERT INTO rnd_effect SELECT $inc, $id FROM a WHERE r RETURNING 1)"
		  . " SELECT r, (SELECT count(*) FROM i) FROM a",
		sub {
			my ($rows, $err) = @_;
			if ($err)
			{
				my %ok;
				$ok{42704} = 1 unless $self->tx_sub($tx) && !$self->{subs}{$name}{ending};
				return $self->stmt_error($s, $err, "ack $name $id", %ok);
			}
			my $r = $rows->[0][0] ? 1 : 0;
			$self->count("ack_" . ($r ? 'true' : 'false'));
			$self->count('ack_ahead') if $what eq 'ack-ahead';
			$self->note_op("  -> " . ($r ? 'true' : 'false'));
			my $S = $self->tx_sub($tx);
			if (!$S) { $tx->{stale} = 1; return; }
			my $e = $self->{events}{$id};
			my $d = $self->deliv($inc, $id);
			my $mine = grep { $_->[0] eq 'claim' && $_->[2] == $id && !$_->[5] } @{ $tx->{ops} };
			my $acked_here = grep { $_->[0] eq 'ack' && $_->[2] == $id && $_->[3] } @{ $tx->{ops} };
			my $cls = $self->classify($S, $e);
			my $seen_by = $tx->{iso} eq 'read committed' ? $t_sent : $tx->{t_snap};
			if ($r)
			{
				$self->violation("ack($name, $id) returned true for an event not for the subscription")
				  if $cls eq 'no';
				$self->violation("ack($name, $id) returned true twice in one transaction") if $acked_here;
				my $dtx = $d->{done} && $self->{txs}{ $d->{done} };
				$self->violation("ack($name, $id) returned true although tx $d->{done}, committed"
					  . " before this transaction could see it, had acked it")
				  if $dtx && $dtx->{t_commit_hi} < $seen_by;
			}
			else
			{
				$self->violation("ack($name, $id) of a delivery claimed in the same transaction returned false")
				  if $mine;
				my $others = grep { $_ != $tx->{tag} } keys %{ $d->{touched} };
				# Another transaction still open that claimed from the
				# subscription may hold the event in its uncommitted claim
				# (leased, or made a delivery row of its own that the model
				# does not see: waiting behind its key, or scheduled when
				# delayed, by a claim that returned nothing): the ack then
				# finds nothing it can settle and returns false (documented
				# in the README).
				my $open_claims = grep {
					$_->{tag} != $tx->{tag} && ($_->{state} // '') eq 'open'
					  && $_->{claimed_from} && $_->{claimed_from}{$inc}
				} values %{ $self->{txs} };
				my $etx = $self->{txs}{ $e->{tx} };
				if ($cls eq 'must' && !$d->{done} && !$acked_here && !$others && !$open_claims
					&& stable($S) && !$S->{ending}
					&& $etx->{t_commit_hi} < $seen_by)
				{
					$self->violation("ack($name, $id) returned false for a delivery that was not done"
						  . " (a late ack, or an ack ahead, must count)");
				}
			}
			for my $op (@{ $tx->{ops} })
			{
				$op->[5] = 1 if $op->[0] eq 'claim' && $op->[2] == $id;
			}
			push @{ $tx->{ops} }, [ 'ack', $inc, $id, $r ];
			$d->{touched}{ $tx->{tag} } = 1;
		}, 'ack');
}

sub fail_op
{
	my ($self, $s, $tx, $id, $attempt) = @_;
	my $name = $tx->{sub};
	my $inc = $tx->{inc};
	my $retry = $self->wpick([ 5, 'NULL' ], [ 3, "'0'" ], [ 2, "'300 milliseconds'" ]);
	my $att = $self->wpick([ 6, $attempt ], [ 3, 'NULL' ], [ 1, $attempt + 1 ]);
	$self->note_op("$s->{name}: fail $name $id retry_in $retry attempt $att (tx $tx->{tag})");
	$self->send($s,
		"SELECT outbox.fail('$name', $id, 'random failure', $retry, $att)",
		sub {
			my ($rows, $err) = @_;
			if ($err)
			{
				my %ok;
				$ok{42704} = 1 unless $self->tx_sub($tx) && !$self->{subs}{$name}{ending};
				return $self->stmt_error($s, $err, "fail $name $id", %ok);
			}
			my $r = $rows->[0][0];
			$self->count('fail_' . ($r // 'null'));
			$self->note_op("  -> " . ($r // 'NULL'));
			my $S = $self->tx_sub($tx);
			if (!$S) { $tx->{stale} = 1; return; }
			my $d = $self->deliv($inc, $id);
			my ($mine) = grep { $_->[0] eq 'claim' && $_->[2] == $id && !$_->[5] } @{ $tx->{ops} };
			if ($mine)
			{
				if ($att ne 'NULL' && $att != $mine->[3])
				{
					$self->violation("fail($name, $id, attempt => $att) changed a delivery at attempt $mine->[3]")
					  if defined $r;
				}
				elsif (!defined $r)
				{
					$self->violation("fail($name, $id) of a delivery leased in the same transaction returned NULL");
				}
				elsif (!grep { $_->{max_attempts} != $S->{configs}[-1]{max_attempts} } @{ $S->{configs} })
				{
					my $want = $mine->[3] >= $S->{configs}[-1]{max_attempts} ? 'dead' : 'scheduled';
					$self->violation("fail($name, $id) at attempt $mine->[3] of max_attempts "
						  . "$S->{configs}[-1]{max_attempts} returned $r, expected $want") if $r ne $want;
				}
			}
			if (defined $r)
			{
				$self->violation("fail($name, $id) returned $r for a delivery done in tx $d->{done}")
				  if $d->{done} && $self->{txs}{ $d->{done} }{t_commit_hi} < $tx->{t_snap};
				for my $op (@{ $tx->{ops} })
				{
					$op->[5] = 1 if $op->[0] eq 'claim' && $op->[2] == $id;
				}
			}
			push @{ $tx->{ops} }, [ 'fail', $inc, $id, $r ];
			$d->{touched}{ $tx->{tag} } = 1;
		}, 'fail');
}

#
# The owner: subscriptions, pause, replay, prepared transactions.
#

sub random_config
{
	my ($self, $old) = @_;
	my @t = grep { $self->chance(0.5) } qw(a b c);
	@t = ($self->pick(qw(a b c))) unless @t;
	@t = ('*') if $self->chance(0.15);
	my $ordered = !$self->skipped('ordered') && $self->chance(0.3) ? 1 : 0;
	if ($old)
	{
		@t = @{ $old->{topics} } if $self->skipped('resubscribe') || $self->chance(0.5);
		$ordered = $old->{ordered} if $self->skipped('ordered_switch') || $self->chance(0.7);
		$ordered = 0 if $self->skipped('ordered');
	}
	return {
		topics => \@t,
		ordered => $ordered,
		max_attempts => $self->pick(1, 2, 3, 5, 10),
		lease => $self->pick(1, 2),
	};
}

sub subscribe
{
	my ($self, $s, $name, $cfg, $extra) = @_;
	my $S = $self->{subs}{$name};
	$cfg->{t_call} = $self->tick;
	my $new = !$S;
	if ($new)
	{
		$S = {
			inc => ++$self->{inc_no}, name => $name, t_call => $cfg->{t_call},
			configs => [], paused => '0', pause_commit => 0,
		};
		$self->{subs}{$name} = $S;
		$self->{incs}{ $S->{inc} } = $S;
	}
	push @{ $S->{configs} }, $cfg;
	my $topics = join(',', map { "'$_'" } @{ $cfg->{topics} });
	my $base = $extra // '50 milliseconds';
	my $sql = "SELECT outbox.subscribe('$name', ARRAY[$topics], max_attempts => $cfg->{max_attempts},"
	  . " lease => '$cfg->{lease} seconds', backoff_base => '$base',"
	  . " backoff_max => '500 milliseconds', ordered => " . ($cfg->{ordered} ? 'true' : 'false') . ")";
	$S->{ending} = 1 if $new && $s->{tx};
	$self->note_op("$s->{name}: " . ($new ? 'subscribe' : 're-subscribe')
		  . " $name [@{ $cfg->{topics} }] ordered $cfg->{ordered} max_attempts $cfg->{max_attempts}"
		  . " lease $cfg->{lease}s" . ($extra // '') . " (inc $S->{inc})");
	my $in_tx = $s->{tx};
	$self->send($s, $sql, sub {
		my ($rows, $err) = @_;
		if ($err)
		{
			@{ $S->{configs} } = grep { $_ != $cfg } @{ $S->{configs} };
			delete $self->{subs}{$name} if $new;
			return $self->stmt_error($s, $err, "subscribe $name", 22023 => ($extra ? 1 : 0))
			  if $in_tx || $extra;
			return $self->conn_or_unexpected($s, @$err, "subscribe $name");
		}
		$self->count($new ? 'subscribe' : 'resubscribe');
		if ($in_tx) { push @{ $in_tx->{subs} }, [ $S, $cfg, $new ]; return; }
		$cfg->{t_commit} = $self->tick;
		$S->{t_commit} //= $cfg->{t_commit};
	}, 'subscribe', $in_tx ? undef : sub {
		# committed if the row has these settings now
		my $want = '{' . join(',', @{ $cfg->{topics} }) . '}';
		my $r = $self->oq("SELECT coalesce(topics::text, '{*}'), max_attempts, ordered::int,"
			  . " extract(epoch from lease)::int FROM outbox.subscription WHERE name = '$name'")->[0];
		if ($r && $r->[0] eq $want && $r->[1] == $cfg->{max_attempts} && $r->[2] == $cfg->{ordered}
			&& $r->[3] == $cfg->{lease})
		{
			$cfg->{t_commit} = $self->tick;
			$S->{t_commit} //= $cfg->{t_commit};
			$self->note_op("  subscribe $name: committed before the crash");
		}
		else
		{
			@{ $S->{configs} } = grep { $_ != $cfg } @{ $S->{configs} };
			delete $self->{subs}{$name} if $new;
			$self->note_op("  subscribe $name: lost in the crash");
		}
	});
}

sub admin_step
{
	my ($self, $s) = @_;
	if (my $tx = $s->{tx})
	{
		# subscribe in REPEATABLE READ after the snapshot was taken
		if (!$tx->{did_sub} && !$tx->{aborted})
		{
			$tx->{did_sub} = 1;
			my $name = $tx->{sub_name};
			delete $self->{subs}{$name};
			return $self->subscribe($s, $name, $self->random_config);
		}
		return $self->end_tx($s, $tx->{aborted} ? 'ROLLBACK' : 'COMMIT');
	}
	my @names = $self->current_sub_names;
	my @free = grep { !$self->{subs}{$_} } qw(s1 s2 s3 s4);
	my @ops;
	push @ops, [ 3, 'subscribe' ] if @free;
	push @ops, [ 4, 'resubscribe' ] if @names;
	push @ops, [ 1, 'rr_subscribe' ] if @free && !$self->skipped('isolation');
	push @ops, [ 3, 'pause' ] if @names && !$self->skipped('pause');
	push @ops, [ 1.5, 'unsubscribe' ] if @names > 2 && !$self->skipped('unsubscribe');
	push @ops, [ 3, 'replay' ] if @names && !$self->skipped('replay');
	push @ops, [ 6, 'prepared' ] if %{ $self->{prepared} };
	push @ops, [ 0.3, 'huge' ] if !$self->{subs}{hx} && !$self->{huge_done} && !$self->skipped('huge');
	return unless @ops;
	my $op = $self->wpick(@ops);
	if ($op eq 'subscribe')
	{
		$self->subscribe($s, $self->pick(@free), $self->random_config);
	}
	elsif ($op eq 'resubscribe')
	{
		my $S = $self->{subs}{ $self->pick(@names) };
		return unless stable($S);
		$self->subscribe($s, $S->{name}, $self->random_config($S->{configs}[-1]));
	}
	elsif ($op eq 'rr_subscribe')
	{
		my $tx = $self->begin_tx($s, iso => 'repeatable read') or return;
		$tx->{sub_name} = $self->pick(@free);
		# the name is taken from now on
		$self->{subs}{ $tx->{sub_name} } = { ending => 1, reserved => 1, inc => 0, configs => [] };
	}
	elsif ($op eq 'huge')
	{
		$self->{huge_done} = 1;
		$self->subscribe($s, 'hx', { topics => ['a'], ordered => 0, max_attempts => 3, lease => 1 },
			'1000000 years');
	}
	elsif ($op eq 'pause')
	{
		my $S = $self->{subs}{ $self->pick(@names) };
		return if $S->{paused} eq 'changing';
		my $how = $S->{paused} ? 'resume' : 'pause';
		my $was = $S->{paused};
		$S->{paused} = 'changing';
		$self->note_op("$s->{name}: $how $S->{name}");
		$self->send($s, "SELECT outbox.$how('$S->{name}')", sub {
			my ($rows, $err) = @_;
			return $self->conn_or_unexpected($s, @$err, $how) if $err;
			$S->{paused} = $how eq 'pause' ? '1' : '0';
			$S->{pause_commit} = $self->tick;
			$self->count($how);
		}, $how, sub {
			my $p = $self->oq("SELECT paused FROM outbox.subscription WHERE name = '$S->{name}'")->[0][0];
			$S->{paused} = $p ? '1' : '0';
			$S->{pause_commit} = $self->tick;
			$self->note_op("  $how $S->{name}: paused = $S->{paused} after the crash");
		});
	}
	elsif ($op eq 'unsubscribe')
	{
		my $S = $self->{subs}{ $self->pick(@names) };
		$S->{ending} = 1;
		$self->note_op("$s->{name}: unsubscribe $S->{name} (inc $S->{inc})");
		$self->send($s, "SELECT outbox.unsubscribe('$S->{name}')", sub {
			my ($rows, $err) = @_;
			if ($err && $err->[0] =~ /^(40P01|40001)$/)
			{
				# a deadlock with a consumer's open transaction: reported
				# in the counts, the subscription stays
				$self->count("unsubscribe_$err->[0]");
				$self->note_op("  -> $err->[0] $err->[1]");
				$S->{ending} = 0;
				return;
			}
			return $self->conn_or_unexpected($s, @$err, 'unsubscribe') if $err;
			delete $self->{subs}{ $S->{name} };
			$S->{ended} = $self->tick;
			$self->count('unsubscribe');
		}, 'unsubscribe', sub {
			if ($self->oq("SELECT count(*) FROM outbox.subscription WHERE name = '$S->{name}'")->[0][0])
			{
				$S->{ending} = 0;
				$self->note_op("  unsubscribe $S->{name}: lost in the crash");
			}
			else
			{
				delete $self->{subs}{ $S->{name} };
				$S->{ended} = $self->tick;
				$self->note_op("  unsubscribe $S->{name}: committed before the crash");
			}
		});
	}
	elsif ($op eq 'replay')
	{
		my $S = $self->{subs}{ $self->pick(@names) };
		my $dead = $self->oq("SELECT event_id FROM outbox.dead_letters"
			  . " WHERE subscription = '$S->{name}' ORDER BY event_id");
		my $one = @$dead && $self->chance(0.7) ? $self->pick(map { $_->[0] } @$dead) : undef;
		$self->note_op("$s->{name}: replay $S->{name} " . ($one // 'all'));
		# Its answer may be read after a claim that already saw its effect
		# (attempts back to 0): until then the attempts of what it may
		# replay are not checked.
		my @pending = defined $one ? ($self->deliv($S->{inc}, $one))
		  : grep { !$_->{done} } values %{ $self->{deliv}{ $S->{inc} } };
		$_->{replay_pending}++ for @pending;
		$self->send($s, "SELECT outbox.replay('$S->{name}', " . ($one // 'NULL') . ")", sub {
			my ($rows, $err) = @_;
			$_->{replay_pending}-- for @pending;
			# replay locks the dead rows as it finds them, consumers lock
			# rows in the order of their statements: a deadlock between
			# them is PostgreSQL's to break, and nothing was replayed
			if ($err && $err->[0] =~ /^(40P01|40001)$/)
			{
				$self->count("error_$err->[0]");
				$self->note_op("$s->{name}: replay -> $err->[0]");
				return;
			}
			return $self->conn_or_unexpected($s, @$err, 'replay') if $err;
			my $n = $rows->[0][0];
			$self->count('replay');
			$self->count('replayed') for 1 .. $n;
			# 0 is possible: an ack (late, or ahead) may have taken the dead
			# letter out since it was read
			$self->violation("replay($S->{name}, $one) of one dead letter returned $n") if defined $one && $n > 1;
			if (defined $one && $n)
			{
				my $d = $self->deliv($S->{inc}, $one);
				$d->{dead} = 0;
				$d->{replayed} = 1;
				$d->{claims_committed} = 0;
				$d->{leased_by} = undef;
			}
			elsif ($n)
			{
				# which ones went back is not known exactly: their attempts
				# are no longer checked.  The dead ones, read just before,
				# now queue behind their keys, also those that died when a
				# lease ran out (which the model cannot tell when
				# max_attempts changed)
				my %was_dead = map { $_->[0] => 1 } @$dead;
				for my $d (values %{ $self->{deliv}{ $S->{inc} } })
				{
					next if $d->{done};
					$d->{replayed} = 1 if $d->{dead} || $was_dead{ $d->{id} };
					$d->{dead} = 0;
					$d->{attempt_unknown} = 1;
				}
			}
		}, 'replay', sub {
			# what is not dead now was replayed
			$_->{replay_pending}-- for @pending;
			my %dead_now = map { $_->[0] => 1 } @{ $self->oq("SELECT event_id FROM outbox.dead_letters"
				  . " WHERE subscription = '$S->{name}'") };
			my %was_dead = map { $_->[0] => 1 } @$dead;
			for my $d (@pending)
			{
				next unless $d->{dead} || $was_dead{ $d->{id} };
				next if $dead_now{ $d->{id} };
				$d->{dead} = 0;
				$d->{replayed} = 1;
				$d->{attempt_unknown} = 1;
				$d->{leased_by} = undef;
			}
			$self->note_op("  replay $S->{name}: answer lost in the crash");
		});
	}
	elsif ($op eq 'prepared')
	{
		my $gid = $self->pick(sort keys %{ $self->{prepared} });
		$self->finish_prepared($s, $gid, $self->chance(0.7));
	}
}

# The end of the owner's REPEATABLE READ subscribe transaction.
sub admin_tx_done
{
	my ($self, $tx) = @_;
	my $name = $tx->{sub_name} // return;
	my $res = $self->{subs}{$name};
	delete $self->{subs}{$name} if $res && $res->{reserved};
	if ($tx->{state} eq 'committed')
	{
		for my $x (@{ $tx->{subs} // [] })
		{
			my ($S, $cfg, $new) = @$x;
			$cfg->{t_commit} = $tx->{t_commit_hi};
			$S->{t_commit} //= $cfg->{t_commit};
			$S->{ending} = 0;
			$self->{subs}{ $S->{name} } = $S;
			$self->count('rr_subscribe');
		}
	}
	else
	{
		for my $x (@{ $tx->{subs} // [] }) { delete $self->{subs}{ $x->[0]{name} } if $x->[2]; }
	}
}

#
# Faults.
#

sub inject
{
	my ($self, $kind) = @_;
	my $node = $self->{node};
	my $off = -s $node->logfile;
	if ($kind eq 'restart')
	{
		$self->note_op("FAULT: pg_ctl stop -m immediate, start");
		$self->{faults}{restart}++;
		$self->{expect_crash} = 1;
		$node->stop('immediate');
		$node->start;
		return $self->recover('restart');
	}
	my $pid;
	if ($kind eq 'kill_worker')
	{
		my $r = $self->oq("SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker'"
			  . " AND datname = current_database()");
		return unless @$r;
		$pid = $r->[0][0];
	}
	else
	{
		my @c = grep { $_->{role} eq 'consumer' } @{ $self->{sessions} };
		my @open = grep { $_->{tx} || $_->{busy} } @c;
		my $s = $self->pick(@open ? @open : @c);
		$pid = $s->{pid};
		$kind .= " $s->{name}";
	}
	$self->note_op("FAULT: kill -9 $kind (pid $pid)");
	$self->{faults}{ (split / /, $kind)[0] }++;
	$self->{killed}{$pid} = 1;
	$self->{expect_crash} = 1;
	# recorded, so that test/run excuses exactly this signal
	append_to_file($self->{node}->logfile . '.killed', "$pid\n");
	kill 'KILL', $pid;
	$node->wait_for_log(qr/all server processes terminated; reinitializing/, $off);
	$self->recover($kind);
}

# After a crash: every session reconnects; transactions that were open are
# gone, those whose COMMIT got no answer are looked up in rnd_mark, and
# every answered commit must be there.
sub recover
{
	my ($self, $why) = @_;
	$self->{expect_crash} = 1;
	my @lost;
	for my $s (@{ $self->{sessions} })
	{
		push @lost, $s->{busy}{on_lost} if $s->{busy} && $s->{busy}{on_lost};
		my $tx = $s->{tx};
		if ($tx)
		{
			# a PREPARE in flight (it may have waited for a key's commit
			# lock) may have prepared before the crash, like a COMMIT
			if ($tx->{state} eq 'committing' || $tx->{state} eq 'uncertain'
				|| ($s->{busy} && ($s->{busy}{what} // '') eq 'PREPARE'))
			{
				$tx->{state} = 'uncertain';
			}
			elsif ($tx->{state} eq 'uncertain_prepare') { }
			else { $self->tx_rolledback($tx); $self->admin_tx_done($tx) if $s->{role} eq 'admin'; }
		}
		$s->{busy} = undef;
		$s->{tx} = undef;
		eval { local $SIG{__WARN__} = sub { }; $s->{dbh}->disconnect; };
	}
	my $t0 = time;
	for my $s (@{ $self->{sessions} })
	{
		until ($self->connect_session($s))
		{
			$self->violation("the server did not come back within 120 s after $why") if time - $t0 > 120;
			usleep(100_000);
		}
	}
	$self->{expect_crash} = 0;
	$self->{last_restart} = time;
	my %mark = map { $_->[0] => 1 } @{ $self->oq("SELECT tag FROM rnd_mark") };
	my %gids = map { $_->[0] => 1 } @{ $self->oq("SELECT gid FROM pg_prepared_xacts") };
	for my $tx (sort { $a->{tag} <=> $b->{tag} } values %{ $self->{txs} })
	{
		my $st = $tx->{state};
		if ($st eq 'committed')
		{
			$self->violation("transaction $tx->{tag}, whose COMMIT succeeded, is lost after $why")
			  unless $mark{ $tx->{tag} };
		}
		elsif ($st eq 'rolledback')
		{
			$self->violation("transaction $tx->{tag}, rolled back, has its row after $why")
			  if $mark{ $tx->{tag} } && !$tx->{gid};
		}
		elsif ($st eq 'prepared')
		{
			$self->violation("prepared transaction $tx->{gid} is lost after $why") unless $gids{ $tx->{gid} };
		}
		elsif ($st =~ /^uncertain/)
		{
			my $gid = "rnd_$tx->{tag}";
			if ($gids{$gid})
			{
				$tx->{state} = 'prepared';
				$tx->{gid} = $gid;
				$self->{prepared}{$gid} = $tx;
			}
			elsif ($mark{ $tx->{tag} })
			{
				delete $self->{prepared}{$gid};
				$self->tx_committed($tx, $tx->{t_commit_lo} // $tx->{t_begin}, $self->tick);
				$self->count('uncertain_committed');
			}
			else
			{
				delete $self->{prepared}{$gid};
				$self->tx_rolledback($tx);
				$self->count('uncertain_rolledback');
			}
		}
		elsif ($st eq 'open')
		{
			$self->tx_rolledback($tx);
		}
	}
	$_->() for @lost;
	$self->note_op("recovered after $why");
}

#
# Checks.
#

# Finish every open transaction and every statement in flight (blocked ones
# wait for the others to finish); prepared transactions too.
sub quiesce
{
	my ($self, $commit_prepared) = @_;
	my $t0 = time;
	while (1)
	{
		my $open = 0;
		for my $s (@{ $self->{sessions} })
		{
			next if $s->{role} eq 'observer';
			# an answer read now may leave a transaction to finish: look
			# again in the next pass
			if ($s->{busy}) { $open++; $self->poll($s); next; }
			next unless $s->{tx};
			$open++;
			$self->end_tx($s, $s->{tx}{aborted} ? 'ROLLBACK' : 'COMMIT');
		}
		my $admin = $self->{admin};
		if (!$admin->{busy} && !$admin->{tx} && %{ $self->{prepared} })
		{
			my ($gid) = sort keys %{ $self->{prepared} };
			$self->finish_prepared($admin, $gid, $commit_prepared // $self->chance(0.7));
			$open++;
		}
		return unless $open || %{ $self->{prepared} };
		if (time - $t0 > 60)
		{
			my @b = map { "$_->{name}: $_->{busy}{sql}" } grep { $_->{busy} } @{ $self->{sessions} };
			$self->violation("statements blocked for 60 s while finishing all transactions:\n  "
				  . join("\n  ", @b));
		}
		usleep(2000);
	}
}

# The deliveries each subscription still has, by the model: [must, may]
# counts of events not done, and the far-future ones among them.
sub outstanding
{
	my ($self, $S) = @_;
	my ($must, $may, $far_must, $far_may) = (0, 0, 0, 0);
	my @missing;
	for my $e (values %{ $self->{events} })
	{
		my $cls = $self->classify($S, $e);
		next if $cls eq 'no';
		my $d = $self->{deliv}{ $S->{inc} }{ $e->{id} };
		next if $d && $d->{done};
		if ($cls eq 'must') { $must++; $far_must++ if $e->{far}; push @missing, $e->{id} unless $e->{far}; }
		else { $may++; $far_may++ if $e->{far}; }
	}
	return ($must, $may, $far_must, $far_may, \@missing);
}

sub check_quiescent
{
	my ($self, $final) = @_;
	$self->count('check');
	my $rows = $self->oq("SELECT subscription, ready, scheduled, leased, dead, paused,"
		  . " extract(epoch from clock_timestamp()) FROM outbox.stats ORDER BY 1");
	my %seen;
	for my $r (@$rows)
	{
		my ($name, $ready, $sched, $leased, $dead, $paused, $now) = @$r;
		$seen{$name} = 1;
		my $S = $self->{subs}{$name};
		$self->violation("outbox.stats shows $name, which the model does not have") unless $S && $S->{inc};
		next if $S->{ending};
		$self->violation("outbox.stats has a NULL count for $name")
		  if grep { !defined } ($ready, $sched, $leased, $dead);
		$self->violation("outbox.stats says $name paused = $paused, the model " . $S->{paused})
		  if ($paused ? 1 : 0) != $S->{paused};
		my ($must, $may, $far_must, $far_may) = $self->outstanding($S);
		my $total = $ready + $sched + $leased + $dead;
		if (($total < $must || $total > $must + $may) && !$self->skipped('stats'))
		{
			my (undef, undef, undef, undef, $missing) = $self->outstanding($S);
			my @show = (sort { $a <=> $b } @$missing)[ 0 .. ($#$missing > 14 ? 14 : $#$missing) ];
			my $in = join(',', @show) || '0';
			my %row = map { $_->[0] => $_->[1] } @{ $self->oq("SELECT e.id, coalesce(d.state, 'stream')"
				  . " FROM outbox.event e LEFT JOIN outbox.delivery d ON d.event_id = e.id AND d.sub_id ="
				  . " (SELECT id FROM outbox.subscription WHERE name = '$name') WHERE e.id IN ($in)") };
			diag("$name must, not done: " . join(' ', map {
				my $e = $self->{events}{$_}; my $t = $self->{txs}{ $e->{tx} };
				"$_(tx $t->{tag} $t->{iso} " . ($t->{gid} ? 'prepared ' : '') . "begin $t->{t_begin} commit "
				  . ($t->{t_commit_hi} // '-') . " db " . ($row{$_} // 'no event row') . ")" } @show));
			diag("$name: subscribed at $S->{t_call}..$S->{t_commit}");
			$self->oq("BEGIN");
			diag("$name: a claim (rolled back) would get: " . join(' ', map { "$_->[0]\@$_->[1]" }
				  @{ $self->oq("SELECT event_id, attempt FROM outbox.claim('$name', 10000) ORDER BY 1") }));
			$self->oq("ROLLBACK");
			$self->violation("outbox.stats of $name counts $total deliveries not done"
				  . " (ready $ready, scheduled $sched, leased $leased, dead $dead); the model has"
				  . " $must that must and $may that may be there");
		}
		if ($final)
		{
			# and those waiting behind a far-future event of their key
			my $behind = grep {
				!$_->{far} && $self->classify($S, $_) ne 'no'
				  && !$self->deliv($S->{inc}, $_->{id})->{done} && $self->behind_far($S, $_->{id})
			} values %{ $self->{events} };
			$self->violation("after draining, $name still has ready $ready, leased $leased, scheduled $sched"
				  . " (far-future: $far_must..." . ($far_must + $far_may) . ", behind them: $behind)")
			  if $ready || $leased || $sched < $far_must || $sched > $far_must + $far_may + $behind;
			my $dl = $self->oq("SELECT count(*) FROM outbox.dead_letters WHERE subscription = '$name'")->[0][0];
			$self->violation("outbox.stats counts $dead dead for $name, outbox.dead_letters has $dl")
			  if $dl != $dead;
		}
		# the worker returns an expired lease within lease + 2 s (once it
		# has had 20 s to start after a restart)
		if (time - $self->{last_restart} > 20 && !$self->skipped('leasecheck'))
		{
			my $may_lease = 0;
			for my $d (values %{ $self->{deliv}{ $S->{inc} } })
			{
				$may_lease++ if $d->{leased_by} && !$d->{done} && $now < $d->{leased_by}{lease_end} + 3.5;
			}
			if ($leased > $may_lease)
			{
				my @l = map { sprintf('%d(ends %+.2fs)', $_->{id}, $_->{leased_by}{lease_end} - $now) }
				  grep { $_->{leased_by} && !$_->{done} } values %{ $self->{deliv}{ $S->{inc} } };
				diag("$name: leases in the model: @l");
				diag("$name: lease rows: " . join(' ', map { "$_->[0]:$_->[1]" } @{ $self->oq(
					"SELECT b.ids::text, round(extract(epoch from b.lease_until) - $now, 2) FROM outbox.batch b"
					  . " JOIN outbox.subscription s ON s.id = b.sub_id WHERE s.name = '$name'"
					  . " UNION ALL SELECT d.event_id::text, round(extract(epoch from d.lease_until) - $now, 2)"
					  . " FROM outbox.delivery d JOIN outbox.subscription s ON s.id = d.sub_id"
					  . " WHERE s.name = '$name' AND d.state = 'leased'") }));
			}
			$self->violation("$name has $leased leased deliveries, but only $may_lease leases"
				  . " ended less than lease + 2 s (+ 1.5 s slack) ago: the worker does not return expired leases")
			  if $leased > $may_lease;
		}
	}
	for my $name ($self->current_sub_names)
	{
		$self->violation("subscription $name is missing from outbox.stats") unless $seen{$name};
	}
	my $dup = $self->oq("SELECT inc, event_id, count(*) FROM rnd_effect GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5");
	$self->violation("exactly-once effect applied twice: "
		  . join(', ', map { "inc $_->[0] event $_->[1] x$_->[2]" } @$dup)) if @$dup;
	$self->check_storage unless $self->skipped('storage');
}

# Storage stays bounded by what is still needed plus the retention window.
# The window is generous (four times outbox.retention plus 6 s: buckets
# rotate every half retention and the worker empties them in its own time),
# and checks are skipped for 30 s after a restart, while the worker starts.
sub check_storage
{
	my ($self) = @_;
	return if time - $self->{last_restart} < 30 || time - $self->{started} < 20;
	my $W = 4 * $self->{retention} + 6;
	my $r = $self->oq("SELECT (SELECT count(*) FROM outbox.event), (SELECT count(*) FROM outbox.delivery),"
		  . " (SELECT count(*) FROM outbox.batch), (SELECT count(*) FROM outbox.settle),"
		  . " (SELECT count(*) FROM outbox.cursor), extract(epoch from clock_timestamp())")->[0];
	my ($ev, $dl, $ba, $se, $cu, $now) = @$r;
	my ($needed, $recent, $needed_deliv) = (0, 0, 0);
	my @S = grep { $_->{inc} && !$_->{ending} } values %{ $self->{subs} };
	for my $e (values %{ $self->{events} })
	{
		next unless $self->committed_event($e);
		my $need = 0;
		for my $S (@S)
		{
			next if $self->classify($S, $e) eq 'no';
			my $d = $self->{deliv}{ $S->{inc} }{ $e->{id} };
			next if $d && $d->{done};
			$need = 1;
			$needed_deliv++;
		}
		$needed += $need;
		$recent++ if $e->{enq_time} > $now - $W;
	}
	@{ $self->{ops_window} } = grep { $_ > time - $W } @{ $self->{ops_window} };
	my $ops = @{ $self->{ops_window} };
	my $subs = @S + 1;
	my %bound = (
		event => $needed + $recent + 50,
		delivery => $needed_deliv + 2 * $ops + 50,
		bookkeeping => 4 * $ops + 40 * $subs + 200,
	);
	my %have = (event => $ev, delivery => $dl, bookkeeping => $ba + $se + $cu);
	$self->{max_rows}{$_} = $have{$_} for grep { $have{$_} > ($self->{max_rows}{$_} // 0) } keys %have;
	for my $t (sort keys %bound)
	{
		$self->violation("storage not bounded: $have{$t} $t rows, bound $bound{$t} (needed events"
			  . " $needed, enqueued in the last $W s $recent, needed deliveries $needed_deliv,"
			  . " claims/acks/fails in the last $W s $ops; batch $ba settle $se cursor $cu)")
		  if $have{$t} > $bound{$t};
	}
}

# May event $id be held back behind a far-future (deliver_at a day ahead)
# event of its key?  The README: a delayed event holds back the later
# events of its key until it is delivered; a replayed dead letter queues
# behind its key; the events of transactions that were already open when
# the subscribe that made their topic ordered committed have no recorded
# place and go first.  A far event held back the later ones unless the
# model knows it went after them: it has a recorded place (it "must" reach
# the subscription: its topic was read, ordered, from before its
# transaction began to its commit) and its transaction certainly committed
# after theirs.  A subscription that was not always ordered may have put
# the far event first whatever the commit order (when "ordered" is switched
# on, a delivery row takes its place among the key's waiting ones as it is).
sub behind_far
{
	my ($self, $S, $id) = @_;
	return 0 unless $S->{configs}[-1]{ordered};
	my $e = $self->{events}{$id};
	return 0 unless defined $e->{key};
	my $etx = $self->{txs}{ $e->{tx} };
	my $d = $self->deliv($S->{inc}, $id);
	for my $fid (@{ $self->{by_key}{ $e->{key} } // [] })
	{
		my $f = $self->{events}{$fid};
		next unless $f->{far} && $fid != $id;
		my $cls = $self->classify($S, $f);
		next if $cls eq 'no';
		next if $self->deliv($S->{inc}, $fid)->{done};
		return 1 if !$self->always_ordered($S) || $d->{replayed} || $cls ne 'must';
		my $ftx = $self->{txs}{ $f->{tx} };
		if ($ftx == $etx) { return 1 if $f->{seq} < $e->{seq}; next; }
		return 1 unless ($etx->{t_commit_hi} // 9**9**9) < ($ftx->{t_commit_lo} // 0);
	}
	return 0;
}

# For "events lost": what the model knows (times on its logical clock) of a
# missing event's transaction and of the far-future events of its key, the
# inputs of behind_far.
sub far_detail
{
	my ($self, $S, $id) = @_;
	my $e = $self->{events}{$id};
	my $w = sub {
		my ($tx) = @_;
		return sprintf('tx %s %s begin %s commit %s..%s%s', $tx->{tag}, $tx->{state}, $tx->{t_begin},
			map({ $_ // '-' } $tx->{t_commit_lo}, $tx->{t_commit_hi}),
			$tx->{gid} ? " gid $tx->{gid}" : '');
	};
	my $out = "\n    its " . $w->($self->{txs}{ $e->{tx} }) . "; subscribed "
	  . join(' ', map { "$_->{t_call}.." . ($_->{t_commit} // '-') . ($_->{ordered} ? ' ordered' : '') }
		  @{ $S->{configs} });
	return $out unless defined $e->{key};
	for my $fid (@{ $self->{by_key}{ $e->{key} } // [] })
	{
		my $f = $self->{events}{$fid};
		next unless $f->{far} && $fid != $id;
		$out .= "\n    far event $fid of the key: " . $w->($self->{txs}{ $f->{tx} })
		  . ', ' . $self->classify($S, $f) . ($self->deliv($S->{inc}, $fid)->{done} ? ', done' : '');
	}
	return $out;
}

# At the end: everything that must reach a subscription does, waiting for
# leases, retries and delays; then the counts must be exact.
sub drain
{
	my ($self) = @_;
	$self->note_op("DRAIN");
	$self->quiesce(1);
	my $s = $self->{consumers}[0];
	my $admin = $self->{admin};
	for my $name ($self->current_sub_names)
	{
		my $S = $self->{subs}{$name};
		next unless $S->{paused} eq '1';
		$self->note_op("admin: resume $name");
		$self->sync($admin, "SELECT outbox.resume('$name')")
		  or $self->violation("resume failed: @{ $self->{err} }");
		$S->{paused} = '0';
		$S->{pause_commit} = $self->tick;
	}
	my $t0 = time;
	my $deadline = 45;
	while (1)
	{
		my $left = 0;
		my @report;
		for my $name ($self->current_sub_names)
		{
			my $S = $self->{subs}{$name};
			my $tx = $self->begin_tx($s) or next;
			$tx->{sub} = $name;
			$tx->{inc} = $S->{inc};
			$self->send($s, "SELECT c.event_id, c.key, c.attempt, extract(epoch from clock_timestamp())"
				  . " FROM outbox.claim('$name', 1000) c", sub {
				my ($rows, $err) = @_;
				return $self->violation("drain: claim $name failed: @$err") if $err;
				for my $r (@$rows)
				{
					$self->check_claim($s, $tx, $S, $r->[0], $r->[1], $r->[2], $r->[3], 0);
					push @{ $tx->{ops} }, [ 'claim', $S->{inc}, $r->[0], $r->[2], $r->[3], 0, 30 ];
				}
				$self->count('drained') for @$rows;
			}, 'drain claim');
			$self->poll($s) until !$s->{busy};
			for my $op (grep { $_->[0] eq 'claim' } @{ $tx->{ops} })
			{
				$self->ack($s, $tx, $op->[2], 'drain ack');
				$self->poll($s) until !$s->{busy};
			}
			$self->end_tx($s, 'COMMIT');
			$self->poll($s) until !$s->{busy};
			# a lease still out, on an event the model only allowed for
			# (which it does not wait for), comes back when it runs out:
			# drain that too, until nothing is ready or leased
			my $out = $self->oq("SELECT ready + leased FROM outbox.stats WHERE subscription = '$name'");
			$left++ if @$out && $out->[0][0] > 0;
			# and deliveries that come due in the next seconds (a short
			# delay or retry of an event the model only allowed for): the
			# final check would find them ready
			my $soon = $self->oq("SELECT (SELECT count(*) FROM outbox.delivery d"
				  . " WHERE d.sub_id = (SELECT id FROM outbox.subscription WHERE name = '$name')"
				  . " AND d.state = 'scheduled' AND d.visible_at < now() + interval '3 s')"
				  . " + (SELECT count(*) FROM outbox.event e"
				  . " WHERE e.deliver_at > now() AND e.deliver_at < now() + interval '3 s')");
			$left++ if @$soon && $soon->[0][0] > 0;
			my (undef, undef, undef, undef, $missing) = $self->outstanding($S);
			next unless @$missing;
			my %dead = map { $_->[0] => 1 } @{ $self->oq("SELECT event_id FROM outbox.dead_letters"
				  . " WHERE subscription = '$name'") };
			my @m = grep { !$dead{$_} && !$self->behind_far($S, $_) } @$missing;
			$left += @m;
			push @report, "$name: " . join(' ', @m[ 0 .. ($#m > 9 ? 9 : $#m) ]) if @m;
			$self->{drain_missing}{$name} = \@m;
		}
		last unless $left;
		if (time - $t0 > $deadline)
		{
			# only leases or ready deliveries left: the final counts say which
			last unless @report;
			my $detail = '';
			for my $name (sort keys %{ $self->{drain_missing} })
			{
				my @m = @{ $self->{drain_missing}{$name} } or next;
				my $S = $self->{subs}{$name} or next;
				my $r = $self->oq("SELECT state || ' attempts ' || attempts || coalesce(' visible_at ' || visible_at, '')"
					  . " FROM outbox.delivery WHERE sub_id = (SELECT id FROM outbox.subscription WHERE name = '$name')"
					  . " AND event_id = $m[0]");
				my $e = $self->{events}{ $m[0] };
				$detail .= "\n  $name (ordered " . ($self->always_ordered($S) ? 'always' : 'not always')
				  . "): event $m[0] topic $e->{topic} key " . ($e->{key} // 'NULL')
				  . ", delivery row: " . (@$r ? $r->[0][0] : 'none');
				$detail .= $self->far_detail($S, $m[0]);
			}
			$self->dump_lost();
			$self->violation("events lost: after $deadline s of draining, committed events never"
				  . " reached their subscription: " . join('; ', @report) . $detail);
		}
		usleep(300_000);
	}
	$self->check_quiescent(1);
}

# Before "events lost": what the database holds about the first missing
# events of each subscription (a failure in CI leaves no cluster to look
# at), and what the model knows of their transactions.
sub dump_lost
{
	my ($self) = @_;
	my $o = $self->{observer};
	my $q = sub {
		my ($title, $sql) = @_;
		my $rows = $self->sync($o, $sql);
		diag("  -- $title");
		if (!defined $rows) { diag("     (failed: $self->{err}[1])"); return; }
		diag("     " . join(' | ', map { !defined $_ ? 'NULL' : ref $_ eq 'ARRAY' ? '{' . join(',', @$_) . '}' : $_ } @$_))
		  for @$rows;
	};
	diag("DUMP of the lost events");
	$q->('snapshot now, prepared transactions',
		"SELECT pg_current_snapshot(), (SELECT string_agg(gid || ' xid ' || transaction, ', ') FROM pg_prepared_xacts)");
	for my $name (sort keys %{ $self->{drain_missing} })
	{
		my @m = @{ $self->{drain_missing}{$name} } or next;
		my $sub = "(SELECT id FROM outbox.subscription WHERE name = '$name')";
		$q->("subscription $name", "SELECT id, topics, ordered, paused, origin FROM outbox.subscription WHERE name = '$name'");
		$q->("$name: newest cursor rows", "SELECT gen, fold_no, delta, lo, hi, pos, ended, scan_from FROM outbox.cursor"
			  . " WHERE sub_id = $sub ORDER BY fold_no DESC LIMIT 3");
		$q->("$name: batch rows", "SELECT gen, batch_no, delta, lo, hi, pos_from, pos_to, ended, cardinality(ids), lease_until"
			  . " FROM outbox.batch WHERE sub_id = $sub ORDER BY batch_no DESC LIMIT 12");
		for my $id (@m[ 0 .. ($#m > 2 ? 2 : $#m) ])
		{
			my $e = $self->{events}{$id} // {};
			my $tx = defined $e->{tx} ? $self->{txs}{ $e->{tx} } : undef;
			diag("  == $name event $id (xid " . ($id >> 20) . "), model: tx "
				  . ($e->{tx} // '?') . " state " . ($tx ? $tx->{state} : '?')
				  . (($tx && $tx->{gid}) ? " gid $tx->{gid}" : '') . ", topic " . ($e->{topic} // '?')
				  . ", key " . ($e->{key} // 'NULL'));
			$q->('event row, xact status', "SELECT id, topic, key, deliver_at, enqueued_at,"
				  . " pg_xact_status(((id >> 20))::text::xid8) FROM outbox.event WHERE id = $id");
			$q->('event_status', "SELECT subscription, state, attempts, visible_at, lease_until FROM outbox.event_status($id)");
			$q->('key_commit rows of its transaction', "SELECT key_hash, xid, seq FROM outbox.key_commit"
				  . " WHERE xid = ((($id >> 20))::text::xid8)");
			$q->('delivery rows of its key', "SELECT event_id, event_id >> 20, state, attempts, seq, visible_at FROM outbox.delivery"
				  . " WHERE sub_id = $sub AND key IS NOT DISTINCT FROM (SELECT key FROM outbox.event WHERE id = $id)"
				  . " ORDER BY event_id LIMIT 20") if defined $e->{key};
		}
	}
	diag("  model counts: " . join(' ', map { "$_=$self->{counts}{$_}" } sort keys %{ $self->{counts} // {} }));
}

# The server log: no process ended by a signal we did not send, and no
# error of the outbox worker or launcher.
sub check_log
{
	my ($self) = @_;
	my @bad;
	for my $l (split /\n/, slurp_file($self->{node}->logfile))
	{
		if ($l =~ /\(PID (\d+)\) was terminated by signal (\d+)/)
		{
			push @bad, $l unless $2 == 9 && $self->{killed}{$1};
		}
		push @bad, $l if $l =~ /outbox (worker|launcher) (ERROR|PANIC)/ && !$self->skipped('workerlog');
		push @bad, $l if $l =~ /PANIC|TRAP:/;
	}
	$self->violation("server log:\n  " . join("\n  ", @bad[ 0 .. ($#bad > 20 ? 20 : $#bad) ])) if @bad;
}

#
# The run.
#

sub run
{
	my ($self) = @_;
	$self->{started} = time;
	my $end = time + $self->{seconds};
	my @prod = grep { $_->{role} eq 'producer' } @{ $self->{sessions} };
	my @cons = grep { $_->{role} eq 'consumer' } @{ $self->{sessions} };
	$self->{consumers} = \@cons;
	my @faults;
	push @faults, [ 0.07, 'kill_consumer' ] unless $self->skipped('killbackend');
	push @faults, [ 0.05, 'kill_worker' ] unless $self->skipped('killworker');
	push @faults, [ 0.04, 'restart' ] unless $self->skipped('restart');
	while (time < $end)
	{
		$self->{step}++;
		my $what = $self->wpick([ 30, 'producer' ], [ 40, 'consumer' ], [ 3, 'admin' ],
			[ 1.5, 'wait' ], [ 0.4, 'check' ], @faults);
		if ($what eq 'producer' || $what eq 'consumer' || $what eq 'admin')
		{
			my $s = $what eq 'producer' ? $self->pick(@prod)
			  : $what eq 'consumer' ? $self->pick(@cons) : $self->{admin};
			if ($s->{busy}) { $self->poll($s); next; }
			$self->count("step_$what");
			if ($what eq 'producer') { $self->producer_step($s); }
			elsif ($what eq 'consumer') { $self->consumer_step($s); }
			else { $self->admin_step($s); }
		}
		elsif ($what eq 'wait')
		{
			my $ms = 50 + $self->rint(400);
			$self->note_op("wait $ms ms");
			usleep($ms * 1000);
		}
		elsif ($what eq 'check')
		{
			$self->note_op("quiesce and check");
			$self->quiesce;
			$self->check_quiescent(0);
		}
		else { $self->inject($what); }
	}
	$self->drain;
	$self->check_log;
}

1;
