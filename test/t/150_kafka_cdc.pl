# The outgrow path, end to end (issue 12): a real Kafka broker (KRaft, one
# node) and Kafka Connect standalone with Debezium's PostgreSQL connector and
# its EventRouter read outbox's events through outbox.create_cdc_publication,
# configured as the README recommends, while producers enqueue with
# rollbacks, rolled-back savepoints, two-phase commits, dedup keys and NULL
# keys, an in-database subscription consumes, a subscription dead-letters
# (so retention keeps copies in event_kept), PostgreSQL is restarted with
# -m fast and -m immediate and Kafka Connect is killed with SIGKILL and
# started again; at the end the slot is lost while Connect is stopped and
# recovered as the README says (a new slot, the offsets reset,
# outbox.cdc_resend).  Then a Kafka consumer reads every topic and the test
# checks, against a ledger written in each producer's transaction:
#
# - the set of event ids in Kafka is the set of committed events; nothing
#   of a rolled-back transaction, savepoint or ROLLBACK PREPARED arrives;
# - per key, after dropping repeats (at least once), commit order, as
#   recorded by a per-key counter updated in the producing transaction;
#   each key in one partition;
# - topic outbox.<topic>, or outbox-invalid-topic for a topic Kafka does not
#   allow (the original in the outbox-topic header); key; value = payload
#   as enqueued; id, headers, deliver_at as Kafka headers; a dedup hit
#   sends nothing new;
# - the publication itself carried every committed event exactly once and
#   no truncate, update or delete (a second, pgoutput slot decoded by SQL),
#   although event_kept got copies; the events lost with the slot arrive
#   through cdc_resend, and events re-sent again arrive twice;
# - the in-database subscription got everything; old buckets were emptied
#   while Connect was down (retention is not held back by the slot);
# - no "replica identity" error, no other unexpected ERROR, no process
#   terminated by a signal in the server log.
#
# The jars come from Maven Central through test/cdc/*/pom.xml: test/run
# copies them into a cache (OUTBOX_CDC_JARS) and sets OUTBOX_CDC_SKIP
# instead when Java or Maven is missing.  Every wait polls with a generous
# bound; nothing asserts a time.

use strict;
use warnings FATAL => 'all';

use File::Path qw(make_path);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use OutboxBehaviour;
use OutboxTest;

if ($ENV{OUTBOX_CDC_SKIP})
{
	plan skip_all => "Kafka/Debezium test skipped: $ENV{OUTBOX_CDC_SKIP}";
}
my $jars = $ENV{OUTBOX_CDC_JARS} // '';
if ($ENV{OUTBOX_CDC_ERROR} || !-d "$jars/broker" || !-d "$jars/connect")
{
	BAIL_OUT('the Kafka and Debezium jars are missing: '
		  . ($ENV{OUTBOX_CDC_ERROR} // 'OUTBOX_CDC_JARS is not set (run through test/run)'));
}

# generous bound for every wait (seconds): the machine may be busy
my $DEADLINE = 300;

my $dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir('kafka'));
my @pids;    # Java processes to kill at the end, whatever happens
$SIG{INT} = $SIG{TERM} = sub { die "interrupted\n" };

END
{
	for my $pid (@pids)
	{
		kill('KILL', $pid);
		waitpid($pid, 0);
	}
	# the Java and pgbench logs beside the server's (the directory goes)
	for my $f (qw(kafka.log connect.log connect.out pgbench.log))
	{
		next unless defined $dir && -f "$dir/$f";
		system('cp', "$dir/$f", "$PostgreSQL::Test::Utils::log_path/150_$f");
	}
}

# Start a command in the background, output appended to $log.
sub spawn
{
	my ($log, @cmd) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log);
		open(STDERR, '>&', \*STDOUT);
		setpgrp(0, 0);
		exec(@cmd) or POSIX::_exit(127);
	}
	push @pids, $pid;
	return $pid;
}

sub stop_pid
{
	my ($pid, $signal) = @_;
	kill($signal, $pid);
	waitpid($pid, 0);
	@pids = grep { $_ != $pid } @pids;
	return;
}

# Wait until $check returns true; dies after the deadline.
sub wait_until
{
	my ($what, $check) = @_;
	my $until = time() + $DEADLINE;
	while (time() < $until)
	{
		return if $check->();
		usleep(250_000);
	}
	die "timed out waiting for $what";
}

sub file_has
{
	my ($file, $re) = @_;
	return 0 unless -f $file;
	return slurp_file($file) =~ $re;
}

my @jvm = ('java', '-Xms64m', '-Xmx384m', '-XX:+UseSerialGC',
	'-Dfile.encoding=UTF-8', '-Dsun.stdout.encoding=UTF-8',
	"-Dlog4j2.configurationFile=$dir/log4j2.properties");

append_to_file("$dir/log4j2.properties", <<'EOF');
status = warn
appender.f.type = File
appender.f.name = F
appender.f.fileName = ${sys:outbox.log}
appender.f.layout.type = PatternLayout
appender.f.layout.pattern = %d %p %c{1} %m%n
rootLogger.level = INFO
rootLogger.appenderRef.f.ref = F
EOF

# a Kafka tool of the Connect class path (Kafka 4.3 tools, 4.4 broker)
sub kafka_tool
{
	my ($class, @args) = @_;
	my ($out, $err);
	IPC::Run::run([ @jvm, "-Doutbox.log=$dir/tools.log", '-cp', "$jars/connect/*",
			$class, @args ], '<', \undef, '>', \$out, '2>', \$err)
	  or die "$class @args failed: $err";
	return $out;
}

#
# PostgreSQL: logical WAL, TCP on 127.0.0.1, short retention
#
my $node = outbox_node('cdc', "wal_level = logical",
	"listen_addresses = '127.0.0.1'",
	"max_prepared_transactions = 20",
	"max_replication_slots = 4",
	"max_wal_senders = 4",
	"outbox.retention = '2s'",
	"outbox.naptime = '100ms'",
	"log_statement = none");
my $pgport = $node->port;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	CREATE ROLE kafka_cdc LOGIN REPLICATION PASSWORD 'kafka';
	SELECT outbox.create_cdc_publication();
	-- decodes the publication by SQL at the end: what pgoutput sends Debezium
	SELECT pg_create_logical_replication_slot('check_pub', 'pgoutput');
	-- the producers' own record of what committed, written in their transaction
	CREATE TABLE ledger (id bigint PRIMARY KEY, topic text NOT NULL, key text,
		payload text NOT NULL, headers text, deliver_at timestamptz, n int,
		hits int NOT NULL DEFAULT 0);
	CREATE TABLE ctr (k text PRIMARY KEY, n int NOT NULL);
	INSERT INTO ctr SELECT 'k' || i, 0 FROM generate_series(1, 8) i;
	SELECT outbox.subscribe('app', ARRAY['*']);
	SELECT outbox.subscribe('dl', ARRAY['dd'], max_attempts => 1);
	CREATE TABLE dead (event_id bigint PRIMARY KEY);
	CREATE TABLE resent (id bigint, why text);
});
exactly_once_consumer($node, 'app');

#
# Kafka: one KRaft node, three partitions per topic
#
my ($kport, $cport, $rport) = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. 3;
make_path("$dir/kafka-logs");
append_to_file("$dir/server.properties", <<"EOF");
process.roles=broker,controller
node.id=1
controller.quorum.voters=1\@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$kport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$kport
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/kafka-logs
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
my $cluster_id = 'b3V0Ym94LWNkYy10ZXN0MQ';    # any 16 bytes, base64url
my ($out, $err);
IPC::Run::run([ @jvm, "-Doutbox.log=$dir/format.log", '-cp', "$jars/broker/*",
		'kafka.tools.StorageTool', 'format', '-t', $cluster_id, '-c', "$dir/server.properties" ],
	'<', \undef, '>', \$out, '2>', \$err)
  or die "kafka storage format failed: $out $err";
my $kafka = spawn("$dir/kafka.out", @jvm, "-Doutbox.log=$dir/kafka.log",
	'-cp', "$jars/broker/*", 'kafka.Kafka', "$dir/server.properties");
wait_until('the Kafka broker',
	sub { file_has("$dir/kafka.log", qr/Kafka Server started/) });
pass('Kafka 4.4 broker started (KRaft)');

#
# Kafka Connect standalone, with the connector configuration the README
# recommends (the same lines, but for addresses, one replica and a shorter
# heartbeat interval)
#
append_to_file("$dir/worker.properties", <<"EOF");
bootstrap.servers=127.0.0.1:$kport
listeners=http://127.0.0.1:$rport
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename=$dir/connect.offsets
offset.flush.interval.ms=1000
plugin.discovery=only_scan
EOF
append_to_file("$dir/outbox.properties", <<"EOF");
name=outbox
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=127.0.0.1
database.port=$pgport
database.user=kafka_cdc
database.password=kafka
database.dbname=postgres
topic.prefix=outbox
plugin.name=pgoutput
slot.name=outbox_kafka
publication.name=outbox_cdc
publication.autocreate.mode=disabled
table.include.list=outbox\\\\.(event|cdc_resend)
snapshot.mode=no_data
skipped.operations=u,d,t
message.prefix.exclude.list=.*
heartbeat.interval.ms=2000
heartbeat.action.query=SELECT pg_catalog.pg_logical_emit_message(false, 'outbox-heartbeat', '')
topic.creation.default.replication.factor=1
topic.creation.default.partitions=3
transforms=outbox,invalid
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.table.field.event.id=id
transforms.outbox.table.field.event.key=key
transforms.outbox.table.field.event.payload=payload
transforms.outbox.route.by.field=topic
transforms.outbox.route.topic.replacement=outbox.\${routedByValue}
transforms.outbox.table.fields.additional.placement=topic:header:outbox-topic,headers:header:outbox-headers,deliver_at:header:outbox-deliver-at
transforms.outbox.table.op.invalid.behavior=fatal
transforms.invalid.type=org.apache.kafka.connect.transforms.RegexRouter
transforms.invalid.regex=outbox\\\\..*[^a-zA-Z0-9._-].*
transforms.invalid.replacement=outbox-invalid-topic
EOF

# Debezium has confirmed the WAL written so far (it confirms what Kafka
# has, once Connect flushed its offsets)
sub wait_for_slot_to_catch_up
{
	my $lsn = sql('SELECT pg_current_wal_lsn()');
	$node->poll_query_until('postgres',
		"SELECT confirmed_flush_lsn >= '$lsn' FROM pg_replication_slots WHERE slot_name = 'outbox_kafka'")
	  or die 'Debezium never confirmed the end of the WAL';
	return;
}

my $connect;
sub start_connect
{
	# the walsender of a killed Connect may hold the slot for a while
	my $old = sql("SELECT coalesce(max(active_pid), 0) FROM pg_replication_slots WHERE slot_name = 'outbox_kafka'");
	$connect = spawn("$dir/connect.out", @jvm, "-Doutbox.log=$dir/connect.log",
		'-cp', "$jars/connect/*",
		'org.apache.kafka.connect.cli.ConnectStandalone',
		"$dir/worker.properties", "$dir/outbox.properties");
	# streaming once Debezium holds its slot
	$node->poll_query_until('postgres',
		"SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'outbox_kafka' AND active AND active_pid <> $old)")
	  or die 'Debezium never took its replication slot';
	return;
}
start_connect();
pass('Kafka Connect streams from the slot');

#
# The workload: pgbench scripts, so that transactions are in flight when
# the server goes down
#
append_to_file("$dir/orders.sql", <<'EOF');
\set key random(1, 8)
\set kind random(1, 12)
\set tok random(1, 1000000000)
BEGIN;
SELECT pg_current_xact_id();
UPDATE ctr SET n = n + 1 WHERE k = 'k:key' RETURNING n AS n \gset
\if :kind = 1
SELECT outbox.enqueue('orders', jsonb_build_object('k', 'k:key', 'n', :n, 'rolled_back', 'rollback'), 'k:key');
ROLLBACK;
\elif :kind = 2
SAVEPOINT s;
SELECT outbox.enqueue('orders', jsonb_build_object('k', 'k:key', 'n', :n, 'rolled_back', 'savepoint'), 'k:key');
ROLLBACK TO SAVEPOINT s;
INSERT INTO ledger SELECT outbox.enqueue('orders', p, 'k:key'), 'orders', 'k:key', p::text, NULL, NULL, :n
  FROM (SELECT jsonb_build_object('k', 'k:key', 'n', :n, 'tok', :tok, 'after', 'savepoint') p) x;
COMMIT;
\elif :kind = 3
INSERT INTO ledger SELECT outbox.enqueue('orders', p, 'k:key'), 'orders', 'k:key', p::text, NULL, NULL, :n
  FROM (SELECT jsonb_build_object('k', 'k:key', 'n', :n, 'tok', :tok, '2pc', true) p) x;
PREPARE TRANSACTION 'c:client_id-:tok';
COMMIT PREPARED 'c:client_id-:tok';
\elif :kind = 4
SELECT outbox.enqueue('orders', jsonb_build_object('k', 'k:key', 'n', :n, 'rolled_back', 'prepared'), 'k:key');
PREPARE TRANSACTION 'r:client_id-:tok';
ROLLBACK PREPARED 'r:client_id-:tok';
\else
INSERT INTO ledger SELECT outbox.enqueue('orders', p, 'k:key', h, da), 'orders', 'k:key', p::text, h::text, da, :n
  FROM (SELECT jsonb_build_object('k', 'k:key', 'n', :n, 'tok', :tok, 's', 'Grüße, "quoted" \ ✓') p,
			   CASE WHEN :tok % 3 = 0 THEN jsonb_build_object('trace', 't:tok', 'x', 1) END h,
			   CASE WHEN :tok % 10 = 0 THEN now() + interval '1 hour' END da) x;
COMMIT;
\endif
EOF
# dedup keys (per topic), NULL keys, a topic with '_', '.', '-', and one
# Kafka cannot take
append_to_file("$dir/other.sql", <<'EOF');
\set d random(1, 150)
\set t random(1, 3)
\set tok random(1, 1000000000)
INSERT INTO ledger SELECT outbox.enqueue(tp, p, NULL, NULL, NULL, 'd:d'), tp, NULL, p::text, NULL, NULL, NULL
  FROM (SELECT jsonb_build_object('d', :d, 'tok', :tok) p, (ARRAY['dd', 'a_b.c-1', 'Bestellungen/Straße'])[:t] tp) x
  ON CONFLICT (id) DO UPDATE SET hits = ledger.hits + 1;
EOF
# the in-database consumers: app takes everything, dl dead-letters
append_to_file("$dir/consume.sql", <<'EOF');
SELECT consume(50);
WITH c AS (SELECT event_id FROM outbox.claim('dl', 5)),
     d AS (INSERT INTO dead SELECT event_id FROM c ON CONFLICT DO NOTHING)
SELECT count(outbox.fail('dl', event_id, 'poison')) FROM c;
EOF

# A restart, or the end of a pgbench, leaves transactions prepared (and
# holding their key's counter): finish them as a transaction manager would,
# c* commit and r* roll back.
sub finish_prepared
{
	for my $gid (split /\n/, sql('SELECT gid FROM pg_prepared_xacts'))
	{
		sql(($gid =~ /^c/ ? 'COMMIT' : 'ROLLBACK') . " PREPARED '$gid'");
	}
	return;
}

my @bench;
# the producers and the in-database consumers; or only producers of
# events without key ('other'), the consumers stopped
sub start_load
{
	my ($only_other) = @_;
	finish_prepared();
	my @common = ($node->installed_command('pgbench'), '-n', '-h', $node->host,
		'-p', $pgport, '-T', '600');
	my @cmds = $only_other
	  ? ([ @common, '-c', '3', '-f', "$dir/other.sql", 'postgres' ])
	  : ([ @common, '-c', '3', '-f', "$dir/orders.sql\@3", '-f', "$dir/other.sql\@1", 'postgres' ],
		[ @common, '-c', '1', '-f', "$dir/consume.sql", 'postgres' ]);
	push @bench, spawn("$dir/pgbench.log", @$_) for @cmds;
	return;
}
# pgbench ends by itself when its server goes away; else stop it here
sub stop_load
{
	stop_pid($_, 'INT') for @bench;
	@bench = ();
	return;
}
sub ledger_count { return sql('SELECT count(*) FROM ledger'); }
sub produce_at_least
{
	my ($more) = @_;
	my $goal = ledger_count() + $more;
	wait_until("$more more committed events", sub { ledger_count() >= $goal });
	note("$goal events committed");
	return;
}

start_load();
produce_at_least(300);

# PostgreSQL restarts, -m fast, under load
$node->stop('fast');
stop_load();
$node->start;
start_load();
produce_at_least(300);

# Kafka Connect killed; events meanwhile, whose buckets retention empties
# before Debezium has read them (they are still in the WAL)
stop_pid($connect, 'KILL');
produce_at_least(300);
my $unread_max = sql('SELECT max(id) FROM ledger');
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM outbox.event WHERE bucket < 4 AND id <= $unread_max)")
  or die 'retention never emptied the buckets';
pass('retention empties buckets while Kafka Connect is down (not held back by the slot)');
start_connect();
produce_at_least(300);

# PostgreSQL restarts, -m immediate, under load
$node->stop('immediate');
stop_load();
$node->start;
start_load();
produce_at_least(300);
stop_load();
finish_prepared();

# The slot is lost (as after a failover on 15, or max_slot_wal_keep_size),
# and recovered as the README says: Connect stopped once it has everything
# so far; events meanwhile (the in-database consumers stopped, so that
# retention keeps them; no keys, since re-sent events come in id order);
# the slot gone; a new slot, the offsets reset, Connect started, and
# cdc_resend from the time Connect stopped.
wait_for_slot_to_catch_up();
stop_pid($connect, 'TERM');
my $stopped_at = sql('SELECT now()');
start_load('only other');
produce_at_least(300);
stop_load();
sql(q{SELECT pg_drop_replication_slot('outbox_kafka')});
sql(q{SELECT pg_create_logical_replication_slot('outbox_kafka', 'pgoutput')});
unlink("$dir/connect.offsets") or die "connect.offsets: $!";
start_connect();
my $lost = sql(qq{
	BEGIN;
	SELECT min(id) AS from_id FROM outbox.event WHERE enqueued_at >= '$stopped_at' \\gset
	INSERT INTO resent SELECT DISTINCT id, 'lost' FROM outbox.event WHERE id >= :from_id;
	SELECT outbox.cdc_resend(:from_id);
	COMMIT;});
is($lost, sql(q{SELECT count(*) FROM resent WHERE why = 'lost'}),
	"cdc_resend re-sent the $lost events enqueued since Connect stopped");
start_load();
produce_at_least(300);
stop_load();
finish_prepared();


my $committed = ledger_count();
ok($committed >= 1500, "$committed events committed");

# the in-database subscription gets every committed event (leases that
# the restarts left behind come back when they run out), except those
# whose deliver_at, an hour ahead, has not come: they are scheduled
my $missing = 'SELECT count(*) FROM ledger l WHERE l.deliver_at IS NULL AND NOT EXISTS (SELECT FROM seen s WHERE s.event_id = l.id)';
$node->poll_query_until('postgres', "SELECT consume(1000) >= 0 AND ($missing) = 0")
  or diag('the in-database subscription misses events: '
	  . sql("SELECT string_agg(format('%s %s %s', min, max, count), ', ') FROM (SELECT min(id), max(id), count(*) FROM ledger l WHERE NOT EXISTS (SELECT FROM seen s WHERE s.event_id = l.id)) x")
	  . "\nstats: " . sql('SELECT * FROM outbox.stats')
	  . "\nstatus: " . sql("SELECT outbox.event_status(min(id)) FROM ledger l WHERE NOT EXISTS (SELECT FROM seen s WHERE s.event_id = l.id)"));
is(sql($missing), '0', 'the in-database subscription got every committed event due');
is(sql(q{SELECT scheduled FROM outbox.stats WHERE subscription = 'app'}),
	sql('SELECT count(*) FROM ledger WHERE deliver_at IS NOT NULL'),
	'... and holds those with deliver_at back');
is(sql('SELECT count(*) FROM seen s WHERE NOT EXISTS (SELECT FROM ledger l WHERE l.id = s.event_id)'),
	'0', '... and nothing else');
$node->poll_query_until('postgres', 'SELECT count(*) > 0 FROM outbox.event_kept')
  or die 'retention kept no copies for the dead letters';
pass('retention copied dead letters\' events to event_kept');

# Re-send what is retained from the oldest event held back by deliver_at
# (the kept copies, bucket 4, included): Kafka gets each again, once more.
my $resent = sql(q{
	BEGIN;
	INSERT INTO resent SELECT DISTINCT id, 'again' FROM outbox.event
	 WHERE id >= (SELECT min(id) FROM ledger WHERE deliver_at IS NOT NULL);
	SELECT outbox.cdc_resend((SELECT min(id) FROM ledger WHERE deliver_at IS NOT NULL));
	COMMIT;});
is($resent, sql(q{SELECT count(*) FROM resent WHERE why = 'again'}),
	"cdc_resend re-sent the $resent retained events");
ok(sql(q{SELECT count(*) FROM resent r JOIN outbox.event_kept k USING (id) WHERE why = 'again'}) > 0,
	'... kept copies among them');

# Everything committed is in Kafka once Debezium confirmed the WAL after
# it (heartbeats move the slot on when no event follows)
wait_for_slot_to_catch_up();
pass('the slot catches up after the load (heartbeats)');

#
# Read Kafka
#
my %end;    # topic => number of records
for my $line (split /\n/,
	kafka_tool('org.apache.kafka.tools.GetOffsetShell', '--bootstrap-server',
		"127.0.0.1:$kport", '--topic', 'outbox.*'))
{
	my ($topic, $part, $offset) = $line =~ /^(.*):(\d+):(\d+)$/ or next;
	$end{$topic} += $offset;
}
is_deeply([ sort keys %end ],
	[ 'outbox-invalid-topic', 'outbox.a_b.c-1', 'outbox.dd', 'outbox.orders' ],
	'Kafka topics: outbox.<topic>, and outbox-invalid-topic for the topic Kafka does not allow');

# fields and headers, by separators no record contains; a header's key
# from its value by the first ':' (the formatter's, fixed)
my ($FS, $HS) = ("\x1e", "\x1d");
my $csv = '';
sub csv_field
{
	my ($v) = @_;
	return '' unless defined $v;
	$v =~ s/"/""/g;
	return qq{"$v"};
}
for my $topic (sort keys %end)
{
	my $got = kafka_tool('org.apache.kafka.tools.consumer.ConsoleConsumer',
		'--bootstrap-server', "127.0.0.1:$kport", '--topic', $topic,
		'--from-beginning', '--max-messages', $end{$topic}, '--timeout-ms', '120000',
		'--formatter-property', 'print.partition=true',
		'--formatter-property', 'print.offset=true',
		'--formatter-property', 'print.key=true',
		'--formatter-property', 'print.headers=true',
		'--formatter-property', "key.separator=$FS",
		'--formatter-property', "headers.separator=$HS",
		'--formatter-property', 'null.literal=<NULL>');
	my $records = 0;
	for my $line (split /\n/, $got)
	{
		my ($part, $offset, $headers, $key, $value) = split /$FS/, $line, 5;
		($part) = $part =~ /^Partition:(\d+)$/ or die "unexpected line: $line";
		($offset) = $offset =~ /^Offset:(\d+)$/;
		my %h;
		for my $kv (split /$HS/, $headers)
		{
			my ($k, $v) = split /:/, $kv, 2;
			$v = undef if defined $v && ($v eq '<NULL>' || $v eq 'null');
			$h{$k} = $v;
		}
		$key = undef if $key eq '<NULL>';
		$csv .= join(',', map { csv_field($_) } $topic, $part, $offset, $h{id},
			$h{'outbox-topic'}, $key, $value, $h{'outbox-headers'},
			$h{'outbox-deliver-at'}) . "\n";
		$records++;
	}
	is($records, $end{$topic}, "read all $records records of $topic");
}
append_to_file("$dir/kafka.csv", $csv);
chmod(0644, "$dir/kafka.csv");
sql(qq{
	CREATE TABLE kafka (topic text, part int, off bigint, id bigint, outbox_topic text,
		key text, value text, headers text, deliver_at text);
	COPY kafka FROM '$dir/kafka.csv' (FORMAT csv);
	-- the first record of each id: repeats come from at-least-once
	CREATE VIEW first AS SELECT DISTINCT ON (id) * FROM kafka ORDER BY id, part, off;
});

is(sql('SELECT count(*) FROM kafka WHERE id IS NULL'), '0', 'every record has an id header');
is(sql('SELECT count(*) FROM ledger l WHERE NOT EXISTS (SELECT FROM kafka k WHERE k.id = l.id)'),
	'0', 'every committed event is in Kafka');
is(sql('SELECT count(*) FROM kafka k WHERE NOT EXISTS (SELECT FROM ledger l WHERE l.id = k.id)'),
	'0', 'nothing else is in Kafka (no rolled-back transaction, savepoint or prepared transaction)');
is(sql(q{SELECT count(*) FROM kafka WHERE value LIKE '%rolled_back%'}), '0',
	'no payload of a rolled-back enqueue');
is(sql(q{SELECT count(*) FROM kafka k JOIN ledger l USING (id)
	WHERE k.topic IS DISTINCT FROM CASE WHEN l.topic ~ '^[a-zA-Z0-9._-]+$'
		THEN 'outbox.' || l.topic ELSE 'outbox-invalid-topic' END
	   OR k.outbox_topic IS DISTINCT FROM l.topic
	   OR k.key IS DISTINCT FROM l.key
	   OR k.value IS DISTINCT FROM l.payload
	   OR k.headers IS DISTINCT FROM l.headers
	   OR k.deliver_at::timestamptz IS DISTINCT FROM l.deliver_at}),
	'0', 'topic, key, value, headers and deliver_at as enqueued');
ok(sql(q{SELECT count(*) FILTER (WHERE headers IS NOT NULL) > 0
	AND count(*) FILTER (WHERE deliver_at IS NOT NULL) > 0
	AND count(*) FILTER (WHERE key IS NULL) > 0
	AND count(*) FILTER (WHERE value LIKE '%Grüße%') > 0 FROM first}) eq 't',
	'... with headers, deliver_at, NULL keys and non-ASCII text among them');
# (a dedup key lasts as long as its event is retained, here 2 s)
ok(sql('SELECT sum(hits) FROM ledger') > 0,
	'dedup hits happened, and sent nothing (their ids are those of the first events)');
is(sql(q{SELECT count(*) FROM (SELECT key, (value::jsonb->>'n')::int AS n,
		lag((value::jsonb->>'n')::int) OVER (PARTITION BY key ORDER BY off) AS prev
	FROM first WHERE topic = 'outbox.orders') x WHERE n <= prev}),
	'0', 'per key, commit order');
# (transactions take their xid before they wait for their key's counter,
# so id order is not commit order: an id-ordered relay would fail above)
ok(sql(q{SELECT count(*) FROM (SELECT id < lag(id) OVER (PARTITION BY key ORDER BY n) AS back
	FROM ledger WHERE topic = 'orders') x WHERE back}) > 0,
	'... which differs from id order for some keys');
is(sql(q{SELECT count(*) FROM (SELECT key FROM kafka WHERE key IS NOT NULL
	GROUP BY topic, key HAVING count(DISTINCT part) > 1) x}),
	'0', 'each key in one partition');
is(sql(q{SELECT count(*) FROM resent r WHERE why = 'again'
	AND (SELECT count(*) FROM kafka k WHERE k.id = r.id) < 2}),
	'0', 'the events re-sent again are in Kafka twice');
ok(sql(q{SELECT count(*) FROM resent r WHERE why = 'lost'
	AND (SELECT count(*) FROM kafka k WHERE k.id = r.id) = 1}) > 0,
	'the events lost with the slot are in Kafka, through cdc_resend only');
note('records in Kafka: ' . sql('SELECT count(*) FROM kafka')
	  . ', repeats: ' . sql('SELECT count(*) - count(DISTINCT id) FROM kafka'));

# What the publication itself carried, decoded by pgoutput as for Debezium:
# every committed event once, no copy, no truncate, update or delete.
is(sql(q{SELECT string_agg(kind || '=' || n, ' ' ORDER BY kind) FROM (
	SELECT chr(get_byte(data, 0)) AS kind, count(*) AS n
	  FROM pg_logical_slot_peek_binary_changes('check_pub', NULL, NULL,
		'proto_version', '1', 'publication_names', 'outbox_cdc')
	 WHERE chr(get_byte(data, 0)) IN ('I', 'U', 'D', 'T') GROUP BY 1) x}),
	'I=' . ($committed + $resent + $lost),
	'the publication carried each committed event once, the re-sent ones again, and nothing else');
sql("SELECT pg_drop_replication_slot('check_pub')");

stop_pid($connect, 'TERM');
stop_pid($kafka, 'TERM');

my $log = slurp_file($node->logfile);
unlike($log, qr/replica identity/, 'no replica identity error in the server log');
unlike($log, qr/terminated by signal/, 'no process terminated by a signal');
# errors a restart causes in clients are expected; any other is not
my @errors = grep {
	!/replication slot "outbox_kafka" is active for PID/
	  && !/prepared transaction with identifier .* does not exist/
} $log =~ /^.*\bERROR:.*$/mg;
is(join("\n", @errors), '', 'no other error in the server log');

done_testing();
