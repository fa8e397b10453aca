#!/usr/bin/env bash
# What an idle database costs (issue 9).  Not part of the suite:
#
#   bench/idle.sh            (PG_CONFIG as for test/run; run as root)
#   IDLE_SECONDS=600 CPU_SECONDS=60 SETTLE_SECONDS=120 bench/idle.sh
#
# One throwaway cluster, fsync on, every setting at its default (outbox's
# too: chain_rotation 10 s, naptime 1 s, retention 7 days; autovacuum on).
# For 1, 100 and 1,000 subscriptions: subscribe, enqueue 10 events per
# subscription and drain them (claim + ack), wait SETTLE_SECONDS for what
# the traffic left behind (folds, the last rotations, autovacuum's analyze),
# then measure with no client at all (a VACUUM (ANALYZE) before the settling
# time does autovacuum's analyze of the traffic, a one-off of PostgreSQL's,
# ahead of the window): the cluster's WAL (pg_current_wal_lsn()
# before and after: everything the server writes, not only the worker), the
# worker's CPU time (utime + stime from /proc) and the database's
# transactions (pg_stat_database, the measuring queries subtracted).  WAL is
# measured over IDLE_SECONDS (10 minutes) with one subscription and scaled
# to an hour; with 100 and 1,000 over CPU_SECONDS.
set -euo pipefail
idle=${IDLE_SECONDS:-600}
cpu=${CPU_SECONDS:-60}
settle=${SETTLE_SECONDS:-120}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. test/cluster.sh
make -s PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
cluster_start "fsync = on"
psql() { as_owner "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$CLUSTER_DIR" -p "$PGPORT" -U postgres -d postgres "$@"; }
psql -c "CREATE EXTENSION outbox"
tck=$(getconf CLK_TCK)

worker_pid() {
	psql -At -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox worker' AND datname = 'postgres'"
}
# CPU time of a process in clock ticks
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
lsn() { psql -At -c "SELECT pg_current_wal_lsn()"; }
xacts() { psql -At -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'"; }

printf '%-14s %9s %12s %14s %12s %14s\n' subscriptions seconds "WAL bytes" "WAL kB/hour" "worker CPU" "worker xacts/s"
have=0
for n in 1 100 1000; do
	psql -c "SELECT outbox.subscribe('s' || i, ARRAY['t' || i]) FROM generate_series($have + 1, $n) i" >/dev/null
	have=$n
	psql -c "SELECT outbox.enqueue('t' || i, '{}') FROM generate_series(1, $n) i, generate_series(1, 10)" >/dev/null
	psql -c "SELECT outbox.ack('s' || i, (SELECT array_agg(event_id) FROM outbox.claim('s' || i, 100)))
	           FROM generate_series(1, $n) i" >/dev/null
	# autovacuum's analyze of what the traffic changed, brought forward: a
	# few minutes later it wrote 260 kB (pg_statistic), PostgreSQL's one-off
	# housekeeping, not what an idle database costs
	sleep 5
	psql -c "VACUUM (ANALYZE)" >/dev/null
	sleep "$settle"
	secs=$cpu
	[ "$n" = 1 ] && secs=$idle
	pid=$(worker_pid)
	l0=$(lsn); x0=$(xacts); t0=$(ticks "$pid")
	sleep "$secs"
	t1=$(ticks "$pid"); x1=$(xacts)
	wal=$(psql -At -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$l0')")
	# what the window's WAL was, by record type (only the long window)
	if [ "$n" = 1 ] && [ "$wal" != 0 ]; then
		as_owner "$PG_BINDIR/pg_waldump" -p "$CLUSTER_DIR/data/pg_wal" -s "$l0" -e "$(lsn)" 2>/dev/null |
			sed -E 's/.*rmgr: ([A-Za-z0-9]+) .*len \(rec\/tot\): *[0-9]+\/ *([0-9]+).*desc: ([A-Z_0-9]+).*/\1 \3 \2/' |
			awk '{ n[$1 " " $2]++; b[$1 " " $2] += $3 } END { for (k in n) printf "  %-32s %5d records %8d bytes\n", k, n[k], b[k] }' |
			sort -k5 -rn >"$CLUSTER_DIR/idle_wal_records.txt" || true
	fi
	# the two measuring queries (xacts) and the lsn/wal ones
	awk -v n="$n" -v s="$secs" -v w="$wal" -v t="$((t1 - t0))" -v hz="$tck" -v x="$((x1 - x0 - 3))" 'BEGIN {
		printf "%-14d %9d %12d %14.1f %11.2f%% %14.2f\n", n, s, w, w / s * 3600 / 1024, 100 * t / hz / s, x / s }'
done
if [ -s "$CLUSTER_DIR/idle_wal_records.txt" ]; then
	echo
	echo "WAL of the 1-subscription window, by record type:"
	cat "$CLUSTER_DIR/idle_wal_records.txt"
fi
