#!/usr/bin/env bash
# Claim + ack latency while another consumer of the same subscription holds
# a claim open in its transaction (issue 8, fault 9).  Not part of the suite:
#
#   bench/held_claim.sh [claims]      (default 3000; PG_CONFIG as for test/run)
#
# One session claims 3 events and stays in its transaction; another does
# `claims` rounds of enqueue 1 + claim 1 + ack, each in its own transaction,
# timing each claim+ack transaction from the client (psql \timing is not
# used: a single psql script keeps connection costs out).  Prints the mean
# of the first and last 300 rounds and the number of batch rows the last
# claim had to read.
set -euo pipefail
claims=${1:-3000}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. test/cluster.sh
make -s PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
cluster_start "fsync = on" ${HELD_CONF:-}
psql() { as_owner "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$CLUSTER_DIR" -p "$PGPORT" -U postgres "$@"; }
psql -d postgres -c "CREATE EXTENSION outbox" \
	-c "SELECT outbox.subscribe('s', ARRAY['t'])" \
	-c "SELECT outbox.enqueue('t', '{}') FROM generate_series(1, 3)"
# the held claim: a psql that claims and then waits, transaction open
fifo=$CLUSTER_DIR/held.fifo
mkfifo "$fifo"; chmod 666 "$fifo"
psql -d postgres <"$fifo" >/dev/null &
held=$!
exec 3>"$fifo"
# PRE=n: n claims + acks first, so that the held claim may fold
for i in $(seq 1 "${PRE:-0}"); do
	psql -d postgres -c "SELECT outbox.enqueue('t', '{}')" \
		-c "SELECT outbox.ack('s', (SELECT array_agg(event_id) FROM outbox.claim('s', 1)))" >/dev/null
done
echo "BEGIN; SELECT * FROM outbox.claim('s', 3, '1 hour');" >&3
sleep 1
{
	echo "CREATE TEMP TABLE lat (i int, ms float8);"
	echo "\\o /dev/null"
	for i in $(seq 1 "$claims"); do
		echo "SELECT outbox.enqueue('t', '{}');"
		echo "SELECT clock_timestamp() AS t0 \\gset"
		echo "BEGIN; SELECT outbox.ack('s', (SELECT array_agg(event_id) FROM outbox.claim('s', 1))); COMMIT;"
		echo "INSERT INTO lat SELECT $i, extract(epoch FROM clock_timestamp() - :'t0') * 1000;"
	done
	echo "\\o"
	echo "SELECT 'first 300: ' || round(avg(ms) FILTER (WHERE i <= 300)::numeric, 3) || ' ms, last 300: '"
	echo "  || round(avg(ms) FILTER (WHERE i > $claims - 300)::numeric, 3) || ' ms' FROM lat;"
	echo "SELECT 'batch rows a claim reads: ' || count(*) FROM outbox.batch b"
	echo "  JOIN outbox.cursor_now c ON c.sub_id = b.sub_id AND b.batch_no >= c.scan_from;"
} | psql -d postgres -At
echo "ROLLBACK;" >&3
exec 3>&-
wait "$held"
