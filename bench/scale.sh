#!/usr/bin/env bash
# Scale of issue 9: the worker's cost and commit -> claimed latency against
# the number of subscriptions, and outbox.stats against the backlog.  Not
# part of the suite:
#
#   bench/scale.sh            (PG_CONFIG as for test/run; run as root)
#   SCALE_SECONDS=30 SCALE_CONSUMERS=2 bench/scale.sh
#
# One throwaway cluster, fsync on, synchronous_commit on, every other
# setting at its default (outbox's too).  About 5 minutes, plus the waits
# for a quiet machine.
#
# 1. For N = 1, 100 and 1,000 subscriptions (SCALE_N), each in a fresh
#    database: subscription s_i reads topic t_i only.  bench/latency.c with
#    -n N: 4 producers enqueue SCALE_RATE (1,000) events/s in total for
#    SCALE_SECONDS (20), round-robin over the N topics, each event in its
#    own transaction; SCALE_CONSUMERS (1) consumer connections LISTEN on the
#    N channels and claim (+ ack, in one transaction) the notified
#    subscription until a claim comes back short.  Reported: the database's
#    outbox worker's CPU time (utime + stime from /proc) over the run as a
#    percentage of one core, and its ratio to N = 1; commit -> notification
#    p50/p99/max (from the producer's COMMIT returning to the first
#    notification of the event's subscription received after it: what the
#    worker adds, whatever the consumer does); commit -> claimed
#    latency p50/p99/max (from the producer's COMMIT returning to the claim
#    returning the event: one consumer behind on its claims adds its queue);
#    notifications received, claims, the notified
#    subscriptions whose first claim found nothing, and the share of the
#    run the consumer connections spent in claims (near 100 %: behind).
# 2. 1,000 subscriptions s_i on topics t_i, backlogs of 100,000 and then
#    1,000,000 events in all (STATS_BACKLOGS), spread evenly over the
#    topics, nothing claimed; once the worker's tally has counted them all
#    (it says how long after the load that took), the median of
#    STATS_REPS (5) timings
#    (psql's \timing, one session per query) of SELECT * FROM outbox.stats,
#    of the view filtered WHERE subscription = 's_5', and of
#    outbox.stats('s_5') (10 calls in one session: the median of calls 1-5
#    and of calls 6-10, since the plan cache may switch to a generic plan
#    from the 6th execution on).  A query whose first run takes over 5 s is run once (marked
#    "1 run"); one that reaches STATS_TIMEOUT (120 s, statement_timeout) is
#    reported as "> 120000".
#
# Before each measurement the script waits (10 s steps, up to 10 minutes)
# until the 1-minute load average is below 0.8: the machine is shared.  It
# prints the load average before and after each measurement.
set -euo pipefail
secs=${SCALE_SECONDS:-20}
rate=${SCALE_RATE:-1000}
consumers=${SCALE_CONSUMERS:-1}
ns=${SCALE_N-1 100 1000}
backlogs=${STATS_BACKLOGS-100000 1000000}
stats_subs=${STATS_SUBSCRIPTIONS:-1000}
reps=${STATS_REPS:-5}
stats_timeout=${STATS_TIMEOUT:-120}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. test/cluster.sh
make -s PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
cluster_start "fsync = on" "synchronous_commit = on"
lat=$CLUSTER_DIR/latency
cc -O2 -Wall -o "$lat" bench/latency.c -I"$("$PG_CONFIG" --includedir)" \
	-L"$("$PG_CONFIG" --libdir)" -lpq -lpthread
psql() { "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql bench || echo ' (working tree differs)'), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
echo "settings: fsync on, synchronous_commit on, otherwise defaults; $rate events/s for ${secs}s per N, $consumers consumer connection(s)"

load1() { cut -d' ' -f1 /proc/loadavg; }
# wait_quiet: until the 1-minute load average is below 0.8, at most 10 minutes
wait_quiet() {
	local waited=0
	while awk -v l="$(load1)" 'BEGIN { exit !(l >= 0.8) }'; do
		if [ "$waited" -ge 600 ]; then
			echo "  (load $(load1) still >= 0.8 after 10 minutes: measuring anyway)"
			return
		fi
		sleep 10
		waited=$((waited + 10))
	done
	[ "$waited" = 0 ] || echo "  (waited ${waited}s for load < 0.8)"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# worker_pid DB: the outbox worker of DB, waiting for it to start
worker_pid() {
	local pid i
	for ((i = 0; i < 60; i++)); do
		pid=$(psql -At -d "$1" -c "SELECT pid FROM pg_stat_activity
		                             WHERE backend_type = 'outbox worker' AND datname = '$1'")
		if [ -n "$pid" ]; then echo "$pid"; return; fi
		sleep 1
	done
	echo "scale.sh: no outbox worker for database $1" >&2
	exit 1
}
kv() { sed -n "s/^$1=//p" "$2"; }

# ---------------------------------------------------------------------------
# 1. Worker CPU and latency against subscriptions.
echo
echo "## 1. worker CPU, commit -> notification and commit -> claimed latency, $rate events/s round-robin over N topics, ${secs}s"
rows=()
cpu1=
for n in $ns; do
	db=scale_$n
	psql -d postgres -c "CREATE DATABASE $db"
	psql -d "$db" -c "CREATE EXTENSION outbox" \
		-c "SELECT count(outbox.subscribe('s_' || i, ARRAY['t_' || i])) FROM generate_series(1, $n) i" >/dev/null
	pid=$(worker_pid "$db")
	sleep 5
	wait_quiet
	l0=$(loadavg)
	f=$CLUSTER_DIR/lat_$n.txt
	"$lat" -D "$db" -s s -t t -n "$n" -c "$((consumers < n ? consumers : n))" -r "$rate" -d "$secs" -W "$pid" >"$f"
	l1=$(loadavg)
	cpu=$(kv worker_cpu_pct "$f")
	[ -n "$cpu1" ] || cpu1=$cpu
	ratio=$(awk -v a="$cpu" -v b="$cpu1" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
	echo "N=$n: load $l0 -> $l1; $(grep -E '^(produced|consumed|left|notify_p50_ms|notify_p99_ms|notify_max_ms|notify_missed|p50_ms|p99_ms|max_ms|claims|empty_claims|notifications|notified_empty|consumer_busy_pct|wakeups_timeout|worker_cpu_seconds|worker_window_seconds)=' "$f" | tr '\n' ' ')"
	rows+=("$(printf '| %5d | %6.2f %% | %5s× | %6.2f | %6.2f | %7.2f | %7.2f | %7.2f | %7.2f | %6d / %6d | %6d | %6d | %6d | %5s %% | %s -> %s |' \
		"$n" "$cpu" "$ratio" "$(kv notify_p50_ms "$f")" "$(kv notify_p99_ms "$f")" "$(kv notify_max_ms "$f")" \
		"$(kv p50_ms "$f")" "$(kv p99_ms "$f")" "$(kv max_ms "$f")" \
		"$(kv consumed "$f")" "$(kv produced "$f")" "$(kv notifications "$f")" "$(kv claims "$f")" \
		"$(kv notified_empty "$f")" "$(kv consumer_busy_pct "$f")" "$(echo "$l0" | cut -d' ' -f1)" "$(echo "$l1" | cut -d' ' -f1)")")
	# the next N starts from nothing: its own database, this one gone
	psql -d postgres -c "DROP DATABASE $db WITH (FORCE)"
done
echo
echo "| N subscriptions | worker CPU | ÷ N=1 | notified p50 ms | p99 | max | claimed p50 ms | p99 | max | claimed / produced | notifications | claims | notified, claim empty | consumer busy | load 1m start -> end |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
printf '%s\n' "${rows[@]}"

# ---------------------------------------------------------------------------
# 2. outbox.stats against the backlog.
echo
echo "## 2. outbox.stats, $stats_subs subscriptions on their own topics, nothing claimed; median of $reps"
db=scale_stats
psql -d postgres -c "CREATE DATABASE $db"
psql -d "$db" -c "CREATE EXTENSION outbox" \
	-c "SELECT count(outbox.subscribe('s_' || i, ARRAY['t_' || i])) FROM generate_series(1, $stats_subs) i" >/dev/null
worker_pid "$db" >/dev/null
# session QUERY K: the times in ms of K runs of QUERY in one session, one a
# line ("timeout" for one that reached the statement_timeout)
session() {
	{
		echo "SET statement_timeout = '${stats_timeout}s';"
		echo '\o /dev/null'
		echo '\timing on'
		for ((i = 0; i < $2; i++)); do echo "$1;"; done
	} | "$PG_BINDIR/psql" -X -q -d "$db" 2>&1 |
		sed -n -e 's/^Time: \([0-9.]*\) ms.*/\1/p' -e 's/.*canceling statement due to statement timeout.*/timeout/p'
}
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# timings QUERY: the median of reps runs in one session, in ms; one run if
# the first takes over 5 s
timings() {
	local t
	t=$(session "$1" 1)
	# a cancelled query prints its error and then its time
	case $t in *timeout*) echo "> $((stats_timeout * 1000))"; return ;; esac
	if awk -v t="$t" 'BEGIN { exit !(t > 5000) }'; then printf '%.1f (1 run)' "$t"; return; fi
	session "$1" "$reps" | median
}
srows=()
have=0
for b in $backlogs; do
	t0=$SECONDS
	# 100,000 events per transaction, round-robin over the topics
	while [ "$have" -lt "$b" ]; do
		k=$((b - have < 100000 ? b - have : 100000))
		psql -d "$db" -c "SELECT count(outbox.enqueue('t_' || ((i - 1) % $stats_subs + 1),
		                                  jsonb_build_object('seq', i)))
		                    FROM generate_series($have + 1, $have + $k) i" >/dev/null
		have=$((have + k))
	done
	t1=$SECONDS
	psql -d "$db" -c "VACUUM ANALYZE" -c "CHECKPOINT"
	# the worker's tally (outbox.tally) counts the stream as it commits;
	# after a burst it catches up at a few 100,000 events a second
	until [ "$(psql -At -d "$db" -c "SELECT coalesce((SELECT max(upto) FROM outbox.tally
	          WHERE topic = ''), -1) >= (SELECT max(id) FROM outbox.event)")" = t ] ||
		[ $((SECONDS - t1)) -gt 300 ]; do
		sleep 0.5
	done
	ready=$(psql -At -d "$db" -c "SELECT sum(ready) FROM outbox.stats")
	echo "backlog $b: loaded in $((t1 - t0))s, tally caught up $((SECONDS - t1))s later (VACUUM ANALYZE included); sum(ready) = $ready"
	wait_quiet
	l0=$(loadavg)
	all=$(timings "SELECT * FROM outbox.stats")
	# 10 calls in one session: PostgreSQL's plan cache uses custom plans for
	# the first 5 executions of a prepared query, then may keep a generic one
	s5=$(session "SELECT * FROM outbox.stats('s_5')" 10)
	one="$(head -n 5 <<<"$s5" | median) / $(tail -n 5 <<<"$s5" | median)"

	view=$(timings "SELECT * FROM outbox.stats WHERE subscription = 's_5'")
	l1=$(loadavg)
	echo "backlog $b: load $l0 -> $l1"
	srows+=("$(printf '| %9d | %s | %s | %s | %10s | %s -> %s |' "$b" "$all" "$one" "$view" "$ready" \
		"$(echo "$l0" | cut -d' ' -f1)" "$(echo "$l1" | cut -d' ' -f1)")")
done
echo
echo "| backlog | stats ms | stats('s_5') ms, calls 1-5 / 6-10 | stats WHERE subscription = 's_5' ms | sum(ready) | load 1m start -> end |"
echo "| ---: | ---: | ---: | ---: | ---: | --- |"
printf '%s\n' "${srows[@]}"
