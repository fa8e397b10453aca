#!/usr/bin/env bash
# The way to Kafka, measured (issue 12): events per second from enqueue to a
# Kafka consumer, insert-to-Kafka latency p50/p99 and WAL per event, for
#
#   outbox   outbox.enqueue, read by Debezium through
#            outbox.create_cdc_publication() and the EventRouter configured
#            as the README recommends (the configuration of t/150);
#   plain    the ceiling: Debezium's documented outbox pattern, a plain
#            table (id uuid, aggregatetype, aggregateid, type, payload jsonb)
#            written with plain INSERTs, read through a publication of its
#            own by a second connector with the EventRouter's defaults.
#
# Targets (issue 12): outbox at least 0.9x the ceiling's throughput, and at
# most 1.1x its WAL per event.
#
#   bench/kafka.sh            3 rounds of 50,000 events per contender
#   bench/kafka.sh --quick    a smoke run: 1 round of 2,000
#
# One throwaway cluster (fsync and synchronous_commit on, wal_level logical,
# TCP on 127.0.0.1), a single-node KRaft Kafka 4.4 broker (log append time,
# so that a record's timestamp is when the broker stored it) and one Kafka
# Connect standalone worker running both connectors, so that both decode
# the same WAL whichever contender writes; the contenders alternate within
# each round.  A round: pgbench writes N events as fast as 4 clients can, a
# console consumer reads the N records of the contender's topic; throughput
# is N over (last record's append time - first event's insert time);
# latency is append time - the insert's clock_timestamp() carried in the
# payload (it includes the commit); WAL is pg_current_wal_insert_lsn around
# the writes, over N.  The jars are those of t/150 (test/cdc/*/pom.xml, the
# same cache).  Not part of bench/run; results go to stdout and
# bench/results/<time>-kafka/.
set -euo pipefail

rounds=3
events=50000
clients=4
while [ $# -gt 0 ]; do
	case $1 in
	--quick) rounds=1; events=2000 ;;
	-h | --help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench/kafka.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. test/cluster.sh

command -v java >/dev/null && command -v mvn >/dev/null ||
	{ echo "bench/kafka.sh: needs Java 17 and Maven" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then
	jars=${OUTBOX_CDC_CACHE:-/var/cache/outbox-cdc}
else
	jars=${OUTBOX_CDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox-cdc}
fi
stamp=$(cat test/cdc/*/pom.xml | sha256sum)
if [ "$(cat "$jars/stamp" 2>/dev/null)" != "$stamp" ]; then
	rm -rf "$jars/broker" "$jars/connect" "$jars/stamp"
	for part in broker connect; do
		mvn -q -B -f "test/cdc/$part/pom.xml" -Dmaven.repo.local="$jars/m2" \
			dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$jars/$part"
	done
	echo "$stamp" > "$jars/stamp"
fi
chmod -R a+rX "$jars"

make -s PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" install

results=$top/bench/results/$(date -u +%Y%m%d-%H%M%S)-kafka
mkdir -p "$results"

cluster_start "listen_addresses = '127.0.0.1'" "wal_level = logical" \
	"max_wal_senders = 4" "max_replication_slots = 4"
work=$CLUSTER_DIR/kafka
mkdir -p "$work"
java_pids=()
cleanup() {
	local pid
	for pid in "${java_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
	cp "$work"/*.log "$results/" 2>/dev/null || true
	cluster_stop
}
trap cleanup EXIT

psql() { "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql <<'EOF'
CREATE EXTENSION outbox;
SELECT outbox.create_cdc_publication();
CREATE ROLE kafka_cdc LOGIN REPLICATION;
-- Debezium's documented outbox table
CREATE TABLE plain_outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL,
	aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL);
CREATE PUBLICATION plain_cdc FOR TABLE plain_outbox WITH (publish = 'insert');
EOF

free_port() { cluster_free_port; }
kport=$(free_port) cport=$(free_port) rport=$(free_port)
jvm=(java -Xms128m -Xmx768m -Dfile.encoding=UTF-8 -Dsun.stdout.encoding=UTF-8
	"-Dlog4j2.configurationFile=$work/log4j2.properties")
cat > "$work/log4j2.properties" <<'EOF'
status = warn
appender.f.type = File
appender.f.name = F
appender.f.fileName = ${sys:outbox.log}
appender.f.layout.type = PatternLayout
appender.f.layout.pattern = %d %p %c{1} %m%n
rootLogger.level = INFO
rootLogger.appenderRef.f.ref = F
EOF
cat > "$work/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$kport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$kport
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$work/kafka-logs
num.partitions=3
log.message.timestamp.type=LogAppendTime
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
"${jvm[@]}" -Doutbox.log="$work/format.log" -cp "$jars/broker/*" kafka.tools.StorageTool \
	format -t b3V0Ym94LWNkYy1iZW5jaDE -c "$work/server.properties" >/dev/null
"${jvm[@]}" -Doutbox.log="$work/kafka.log" -cp "$jars/broker/*" kafka.Kafka \
	"$work/server.properties" > "$work/kafka.out" 2>&1 &
java_pids+=($!)
until grep -q 'Kafka Server started' "$work/kafka.log" 2>/dev/null; do sleep 1; done

cat > "$work/worker.properties" <<EOF
bootstrap.servers=127.0.0.1:$kport
listeners=http://127.0.0.1:$rport
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename=$work/connect.offsets
offset.flush.interval.ms=10000
plugin.discovery=only_scan
EOF
common="connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=127.0.0.1
database.port=$PGPORT
database.user=kafka_cdc
database.password=unused
database.dbname=postgres
plugin.name=pgoutput
publication.autocreate.mode=disabled
snapshot.mode=no_data
skipped.operations=u,d,t
message.prefix.exclude.list=.*
topic.creation.default.replication.factor=1
topic.creation.default.partitions=3
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.table.op.invalid.behavior=fatal"
cat > "$work/outbox.properties" <<EOF
name=outbox
topic.prefix=outbox
slot.name=outbox_kafka
publication.name=outbox_cdc
table.include.list=outbox\\\\.(event|cdc_resend)
$common
transforms.outbox.table.field.event.id=id
transforms.outbox.table.field.event.key=key
transforms.outbox.table.field.event.payload=payload
transforms.outbox.route.by.field=topic
transforms.outbox.route.topic.replacement=outbox.\${routedByValue}
transforms.outbox.table.fields.additional.placement=topic:header:outbox-topic,headers:header:outbox-headers,deliver_at:header:outbox-deliver-at
transforms=outbox,invalid
transforms.invalid.type=org.apache.kafka.connect.transforms.RegexRouter
transforms.invalid.regex=outbox\\\\..*[^a-zA-Z0-9._-].*
transforms.invalid.replacement=outbox-invalid-topic
EOF
cat > "$work/plain.properties" <<EOF
name=plain
topic.prefix=plain
slot.name=plain_kafka
publication.name=plain_cdc
table.include.list=public\\\\.plain_outbox
$common
transforms=outbox
transforms.outbox.route.topic.replacement=plain.\${routedByValue}
EOF
"${jvm[@]}" -Doutbox.log="$work/connect.log" -cp "$jars/connect/*" \
	org.apache.kafka.connect.cli.ConnectStandalone "$work/worker.properties" \
	"$work/outbox.properties" "$work/plain.properties" > "$work/connect.out" 2>&1 &
java_pids+=($!)
until [ "$(psql -Atc "SELECT count(*) FROM pg_replication_slots WHERE active")" = 2 ]; do sleep 1; done

# the same payload for both, with the insert's time
cat > "$work/outbox.sql" <<'EOF'
\set k random(1, 1000)
SELECT outbox.enqueue('bench', jsonb_build_object('order_id', :k, 'status', 'paid', 'amount', 99.95, 'currency', 'EUR', 't', extract(epoch FROM clock_timestamp())), 'order-' || :k);
EOF
cat > "$work/plain.sql" <<'EOF'
\set k random(1, 1000)
INSERT INTO plain_outbox VALUES (gen_random_uuid(), 'bench', 'order-' || :k, 'order', jsonb_build_object('order_id', :k, 'status', 'paid', 'amount', 99.95, 'currency', 'EUR', 't', extract(epoch FROM clock_timestamp())));
EOF
chmod a+r "$work"/*.sql

declare -A seen=([outbox.bench]=0 [plain.bench]=0)
tsv=$results/data.tsv
printf 'round\tcontender\tevents\tseconds\tevents_per_s\tp50_ms\tp99_ms\twal_bytes_per_event\n' > "$tsv"
# warm-up, not measured: topic creation, the JIT, the first metadata
for who in outbox plain; do
	"$PG_BINDIR/pgbench" -n -c "$clients" -j 2 -t 100 -f "$work/$who.sql" postgres > /dev/null 2>&1
	"${jvm[@]}" -Doutbox.log="$work/tools.log" -cp "$jars/connect/*" \
		org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$kport" \
		--topic "$who.bench" --from-beginning --max-messages $((100 * clients)) --timeout-ms 600000 > /dev/null
	seen[$who.bench]=$((100 * clients))
done

per_txn=$((events / clients))
for round in $(seq 1 "$rounds"); do
	# who goes first alternates
	order="outbox plain"
	[ $((round % 2)) = 0 ] && order="plain outbox"
	for who in $order; do
		topic=$who.bench
		start=$(date +%s.%N)
		l0=$(psql -Atc 'SELECT pg_current_wal_insert_lsn()')
		"$PG_BINDIR/pgbench" -n -c "$clients" -j 2 -t "$per_txn" -f "$work/$who.sql" postgres \
			> "$work/pgbench-$who-$round.log" 2>&1
		l1=$(psql -Atc 'SELECT pg_current_wal_insert_lsn()')
		n=$((per_txn * clients))
		wal=$(psql -Atc "SELECT round(('$l1'::pg_lsn - '$l0'::pg_lsn) / $n.0, 1)")
		# this round's records: those after the ones read before
		"${jvm[@]}" -Doutbox.log="$work/tools.log" -cp "$jars/connect/*" \
			org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$kport" \
			--topic "$topic" --from-beginning --max-messages $((seen[$topic] + n)) --timeout-ms 600000 \
			--formatter-property print.timestamp=true > "$work/records.txt"
		seen[$topic]=$((seen[$topic] + n))
		python3 -c '
import json, sys
rows = []
for line in open(sys.argv[1]):
    ts, value = line.rstrip("\n").split("\t", 1)
    appended = int(ts.split(":")[1]) / 1000.0
    t = float(json.loads(value)["t"])
    if t >= float(sys.argv[2]):    # this round'"'"'s
        rows.append((t, appended))
lat = sorted(a - t for t, a in rows)
secs = max(a for t, a in rows) - min(t for t, a in rows)
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print("%d\t%.2f\t%.0f\t%.1f\t%.1f" % (len(rows), secs, len(rows) / secs, pct(0.50), pct(0.99)))
' "$work/records.txt" "$start" | while IFS=$'\t' read -r cnt secs eps p50 p99; do
			printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$who" "$cnt" "$secs" "$eps" "$p50" "$p99" "$wal" | tee -a "$tsv"
		done
	done
done

# medians of the per-round ratios
python3 - "$tsv" <<'EOF' | tee "$results/report.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["contender"]] = r
tp = [float(v["outbox"]["events_per_s"]) / float(v["plain"]["events_per_s"]) for v in by.values()]
wal = [float(v["outbox"]["wal_bytes_per_event"]) / float(v["plain"]["wal_bytes_per_event"]) for v in by.values()]
med = lambda c, k: statistics.median(float(r[k]) for r in rows if r["contender"] == c)
print("| | outbox | plain INSERT ceiling | ratio (median of rounds) | target |")
print("| --- | --- | --- | --- | --- |")
print("| events/s, insert to Kafka | %.0f | %.0f | %.2fx | >= 0.9x |" % (med("outbox", "events_per_s"), med("plain", "events_per_s"), statistics.median(tp)))
print("| WAL bytes/event | %.0f | %.0f | %.2fx | <= 1.1x |" % (med("outbox", "wal_bytes_per_event"), med("plain", "wal_bytes_per_event"), statistics.median(wal)))
print("| latency p50 ms | %.1f | %.1f | | |" % (med("outbox", "p50_ms"), med("plain", "p50_ms")))
print("| latency p99 ms | %.1f | %.1f | | |" % (med("outbox", "p99_ms"), med("plain", "p99_ms")))
EOF
