
# Transactional enqueue across a crash: producers write a marker row and
# enqueue its id in one transaction (some roll back on purpose) while a
# consumer drains one of the two subscriptions; the server is stopped with
# "immediate" (no shutdown checkpoint, as after a crash) at a random
# moment, twice.  Afterwards every committed marker reaches both
# subscriptions at least once, and nothing that rolled back reaches any.

use strict;
use warnings FATAL => 'all';

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use OutboxBehaviour;

my $node = outbox_node('durability');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	CREATE TABLE produced (id serial PRIMARY KEY);
	CREATE TABLE delivered (sub text NOT NULL, event_id bigint NOT NULL,
		payload jsonb NOT NULL);
	SELECT outbox.subscribe('d1', ARRAY['dur']);
	SELECT outbox.subscribe('d2', ARRAY['dur'], ordered => true);
});

# pgbench scripts: one marker per transaction, two in a transaction, and
# a transaction that rolls back (its event is marked "rolledback").
my $dir = PostgreSQL::Test::Utils::tempdir;
my %scripts = (
	'single.sql' => q{
WITH p AS (INSERT INTO produced DEFAULT VALUES RETURNING id)
SELECT outbox.enqueue('dur', jsonb_build_object('id', id)) FROM p;
},
	'double.sql' => q{
BEGIN;
WITH p AS (INSERT INTO produced DEFAULT VALUES RETURNING id)
SELECT outbox.enqueue('dur', jsonb_build_object('id', id), key => 'k' || (id % 50)) FROM p;
WITH p AS (INSERT INTO produced DEFAULT VALUES RETURNING id)
SELECT outbox.enqueue('dur', jsonb_build_object('id', id), key => 'k' || (id % 50)) FROM p;
COMMIT;
},
	'rollback.sql' => q{
BEGIN;
WITH p AS (INSERT INTO produced DEFAULT VALUES RETURNING id)
SELECT outbox.enqueue('dur', jsonb_build_object('id', id, 'mark', 'rolledback'), key => 'k' || (id % 50)) FROM p;
ROLLBACK;
},
	# claim, record and ack in one transaction: exactly-once effects
	'consume.sql' => q{
WITH c AS (SELECT event_id, payload FROM outbox.claim('d1', 20)),
	 ins AS (INSERT INTO delivered SELECT 'd1', event_id, payload FROM c RETURNING event_id)
SELECT outbox.ack('d1', (SELECT array_agg(event_id) FROM ins));
},);
while (my ($name, $text) = each %scripts)
{
	PostgreSQL::Test::Utils::append_to_file("$dir/$name", $text);
}

# Start pgbench in the background; it stops by itself when the server
# goes away.
sub pgbench
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-T', '300', @args,
			$node->connstr('postgres')
		],
		'>', \$out, '2>', \$err);
	return $h;
}

for my $cycle (1, 2)
{
	my $before = sql('SELECT count(*) FROM produced');
	my @running = (
		pgbench(
			'-c', '4', '-j', '2',
			'-f', "$dir/single.sql\@6",
			'-f', "$dir/double.sql\@2",
			'-f', "$dir/rollback.sql\@2"),
		pgbench('-c', '1', '-f', "$dir/consume.sql"));
	ok( $node->poll_query_until(
			'postgres', "SELECT count(*) > $before FROM produced"),
		"cycle $cycle: producers are committing");
	my $delay = 0.5 + rand(1.5);
	note sprintf("cycle %d: stopping the server in %.2f s", $cycle, $delay);
	usleep(int($delay * 1_000_000));
	$node->stop('immediate');

	# The clients fail when the server goes: expected, their exit is ignored.
	foreach my $h (@running)
	{
		my $timer = IPC::Run::timer(60);
		$timer->start;
		while ($h->pumpable && !$timer->is_expired)
		{
			$h->pump_nb;
			usleep(50_000);
		}
		if ($h->pumpable)
		{
			$h->kill_kill;
		}
		else
		{
			eval { $h->finish; };
		}
	}

	$node->start;
	wait_for_worker($node);
	pass("cycle $cycle: restarted after an immediate stop");
}

my $produced = sql('SELECT count(*) FROM produced');
note "committed markers: $produced; delivered to d1 before the drain: "
  . sql("SELECT count(*) FROM delivered WHERE sub = 'd1'");
cmp_ok($produced, '>', 0, 'some transactions committed');

# Drain both subscriptions completely: claim, record and ack, a
# transaction per batch, until a claim gets nothing.
for my $sub ('d1', 'd2')
{
	sql(qq{
		DO \$\$
		DECLARE
			n int;
		BEGIN
			LOOP
				WITH c AS (SELECT event_id, payload FROM outbox.claim('$sub', 1000)),
					 ins AS (INSERT INTO delivered SELECT '$sub', event_id, payload
							 FROM c RETURNING event_id)
				SELECT outbox.ack('$sub', (SELECT array_agg(event_id) FROM ins)) INTO n;
				COMMIT;
				EXIT WHEN n = 0;
			END LOOP;
		END
		\$\$});
	is( sql("SELECT ready || '/' || scheduled || '/' || leased || '/' || dead"
			  . " FROM outbox.stats WHERE subscription = '$sub'"),
		'0/0/0/0',
		"$sub: drained");
	is( sql(
			"SELECT count(*) FROM produced p WHERE NOT EXISTS (SELECT 1 FROM delivered d"
			  . " WHERE d.sub = '$sub' AND (d.payload->>'id')::int = p.id)"),
		'0',
		"$sub: every committed marker was delivered");
	is( sql(
			"SELECT count(*) FROM delivered WHERE sub = '$sub' AND payload ? 'mark'"),
		'0',
		"$sub: no rolled-back event was delivered");
	is( sql(
			"SELECT count(*) FROM delivered d WHERE sub = '$sub' AND NOT EXISTS"
			  . " (SELECT 1 FROM produced p WHERE p.id = (d.payload->>'id')::int)"),
		'0',
		"$sub: every delivered event belongs to a committed marker");
	note "$sub: deliveries beyond the first of an event: "
	  . sql("SELECT count(*) - count(DISTINCT event_id) FROM delivered WHERE sub = '$sub'");
}

$node->stop;
done_testing();
