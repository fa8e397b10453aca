#!/usr/bin/env bash
# End to end through the client libraries (issue 13), on one throwaway
# cluster with fsync and synchronous_commit on: the TypeScript client against
# pg-boss work() and graphile-worker, the Python client against
# procrastinate, each with a no-op handler.  Per system and round:
#
#   drain    N jobs enqueued in batches of 100, then the consumer's time to
#            handle and settle all of them (jobs/s)
#   latency  RATE jobs/s for SECONDS, one per transaction, from a producer
#            process of its own (as the application would be) while the
#            consumer runs: commit -> handler p50/p99
#
# Python runs on psycopg[binary], as the client's README installs it.
#
# Rounds rotate the order of the systems.  Not part of bench/run (it needs
# the client libraries built and the peers installed); results go to
# bench/results/<time>-clients/ (data.tsv, report.md, log.txt).
#
#   bench/clients.sh [--quick] [--rounds N]
#
# Run as root or as a user who may install the extension; the extension is
# built and installed from the working tree into $PG_CONFIG's PostgreSQL.
set -euo pipefail

ROUNDS=2 N=20000 CONC=16 RATE=1000 SECONDS_LAT=15 suffix=clients
while [ $# -gt 0 ]; do
	case $1 in
	--quick) ROUNDS=1 N=2000 SECONDS_LAT=3 suffix=clients-quick ;;
	--rounds) ROUNDS=$2; shift ;;
	*) echo "usage: bench/clients.sh [--quick] [--rounds N]" >&2; exit 2 ;;
	esac
	shift
done

bench=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$bench/.." && pwd)
cd "$top"
. test/cluster.sh

make -s PG_CONFIG="$PG_CONFIG"
make -s PG_CONFIG="$PG_CONFIG" install
# the libraries and the peers, from their registries
(cd clients/node && npm ci --silent --no-audit --no-fund && npm run --silent build)
(cd bench && npm ci --silent --no-audit --no-fund)
venv=$bench/.venv
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check ./clients/python 'psycopg[binary]' \
	'procrastinate>=3,<4'

out=$bench/results/$(date -u +%Y%m%d-%H%M%S)-$suffix
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1

# No checkpoint starts during a measurement (each begins right after one,
# below): one that did would slow whichever system ran then.
cluster_start "shared_buffers = 512MB" "max_connections = 200" \
	"checkpoint_timeout = 1h" "max_wal_size = 16GB"
export BENCH_DB=bench
"$PG_BINDIR/psql" -X -q -d postgres -c "CREATE DATABASE bench"
"$PG_BINDIR/psql" -X -q -d bench -c "CREATE EXTENSION outbox"
node "$bench/clients.js" setup >/dev/null
"$venv/bin/python" "$bench/clients.py" setup >/dev/null
"$PG_BINDIR/psql" -X -q -d bench -c "CHECKPOINT" >/dev/null

data=$out/data.tsv
: >"$data"
run() { # LANG SYSTEM KIND ROUND args...
	local lang=$1 sys=$2 kind=$3 r=$4 kvs
	shift 4
	if [ "$lang" = node ]; then
		kvs=$(node "$bench/clients.js" "$kind" "$sys" "$@")
	else
		kvs=$("$venv/bin/python" "$bench/clients.py" "$kind" "$sys" "$@")
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$lang" "$sys" "$kind" "$r" "$(tr '\n' ' ' <<<"$kvs")" >>"$data"
	printf '  r%s %-6s %-13s %-7s %s\n' "$r" "$lang" "$sys" "$kind" "$(tr '\n' ' ' <<<"$kvs")"
	# procrastinate's latency run can end with jobs it never got to: they
	# are nobody's work, and its next drain would have to handle them too
	if [ "$sys" = procrastinate ]; then
		"$PG_BINDIR/psql" -X -q -d bench -c "DELETE FROM procrastinate_jobs" >/dev/null
	fi
	"$PG_BINDIR/psql" -X -q -d bench -c "VACUUM" -c "CHECKPOINT" >/dev/null
}
rotate() { # K items...: the items, rotated left by K
	local k=$1; shift
	local a=("$@") n=$#
	for ((i = 0; i < n; i++)); do echo "${a[(i + k) % n]}"; done
}

echo "== drain: $N jobs, concurrency $CONC; latency: $RATE jobs/s for ${SECONDS_LAT}s; $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
	while read -r it; do
		run "${it%%:*}" "${it##*:}" drain "$r" "$N" "$CONC"
	done < <(rotate $((r - 1)) node:outbox node:pgboss node:graphile python:outbox python:procrastinate)
	while read -r it; do
		run "${it%%:*}" "${it##*:}" latency "$r" "$RATE" "$SECONDS_LAT" "$CONC"
	done < <(rotate $((r - 1)) node:outbox node:pgboss node:graphile python:outbox python:procrastinate)
done

node - "$data" >"$out/report.md" <<'EOF'
const fs = require('fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => {
  const [lang, sys, kind, round, kvs] = l.split('\t');
  const o = { lang, sys, kind, round: Number(round) };
  for (const kv of kvs.trim().split(' ')) { const [k, v] = kv.split('='); o[k] = Number(v); }
  return o;
});
const median = (xs) => { const v = xs.filter(Number.isFinite).sort((a, b) => a - b); const m = v.length >> 1; return v.length ? (v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2) : NaN; };
const sel = (lang, sys, kind) => rows.filter((r) => r.lang === lang && r.sys === sys && r.kind === kind);
const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '–');
const out = ['# Client libraries, end to end (no-op handler)', '',
  '| library | system | drain jobs/s (rounds) | enqueue jobs/s (batches of 100) | latency p50 ms | p99 ms (rounds) | handled |', '| --- | --- | --- | --- | --- | --- | --- |'];
for (const [lang, syss] of [['node', ['outbox', 'pgboss', 'graphile']], ['python', ['outbox', 'procrastinate']]]) {
  for (const sys of syss) {
    const d = sel(lang, sys, 'drain'); const l = sel(lang, sys, 'latency');
    out.push(`| ${lang} | ${sys} | ${f(median(d.map((r) => r.rate)))} (${d.map((r) => f(r.rate)).join(', ')}) | ${f(median(d.map((r) => r.enqueue_rate)))} | ${f(median(l.map((r) => r.p50_ms)), 2)} | ${f(median(l.map((r) => r.p99_ms)), 2)} (${l.map((r) => f(r.p99_ms, 2)).join(', ')}) | ${l.map((r) => `${r.handled}/${r.jobs}`).join(', ')} |`);
  }
}
const ratio = (lang, a, b) => {
  const rs = [...new Set(rows.map((r) => r.round))].map((k) => {
    const x = rows.find((r) => r.lang === lang && r.sys === a && r.kind === 'drain' && r.round === k);
    const y = rows.find((r) => r.lang === lang && r.sys === b && r.kind === 'drain' && r.round === k);
    return x && y ? x.rate / y.rate : NaN;
  }).filter(Number.isFinite);
  return rs;
};
const t = (what, rs, ok) => out.push(`| ${what} | ${rs.map((x) => f(x, 2) + '×').join(', ')} | ${ok ? '**PASS**' : '**FAIL**'} |`);
out.push('', '| target | per round | verdict |', '| --- | --- | --- |');
const b = ratio('node', 'outbox', 'pgboss'); t('TypeScript client ≥ 3× pg-boss work() throughput', b, median(b) >= 3);
const g = ratio('node', 'outbox', 'graphile'); t('TypeScript client ≥ 1× graphile-worker throughput', g, median(g) >= 1);
const p = ratio('python', 'outbox', 'procrastinate'); t('Python client against procrastinate (no target)', p, true);
for (const lang of ['node', 'python']) {
  const l = sel(lang, 'outbox', 'latency'); const p99 = median(l.map((r) => r.p99_ms));
  out.push(`| ${lang} client: commit → handler p99 ≤ 10 ms at the steady rate | ${l.map((r) => f(r.p99_ms, 2) + ' ms').join(', ')} | ${p99 <= 10 ? '**PASS**' : '**FAIL**'} |`);
}
console.log(out.join('\n'));
EOF
cat "$out/report.md"
echo "results: $out"
