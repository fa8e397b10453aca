#!/usr/bin/env bash
# Smoke test of an installed postgresql-NN-outbox package (test/deb/run, as
# root inside a chroot): a clean cluster of the packaged PostgreSQL with
# outbox preloaded, CREATE EXTENSION, enqueue, claim, ack, and the worker
# running; the cluster is removed whatever happens.
#
#   test/deb/smoke.sh MAJOR
set -euo pipefail

v=$1
bin=/usr/lib/postgresql/$v/bin
dir=$(mktemp -d /tmp/outbox-smoke.XXXXXX)
chown postgres "$dir"
as_pg() { su -s /bin/bash postgres -c "$(printf '%q ' "$@")"; }
cleanup() {
	status=$?
	if [ -f "$dir/data/postmaster.pid" ]; then
		as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	fi
	if [ $status -ne 0 ] && [ -f "$dir/log" ]; then tail -n 30 "$dir/log"; fi
	rm -rf "$dir"
	exit $status
}
trap cleanup EXIT

port=$((20000 + RANDOM % 30000))
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((20000 + RANDOM % 30000)); done
as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >/dev/null
cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'outbox'
CONF
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
psql() { as_pg "$bin/psql" -X -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres -Atq "$@"; }

fail() { echo "smoke $v: $*"; exit 1; }
[ "$(psql -c "SELECT current_setting('server_version_num')::int / 10000")" = "$v" ] ||
	fail "the server is not PostgreSQL $v"
psql -c 'CREATE EXTENSION outbox' >/dev/null
[ "$(psql -c "SELECT extversion FROM pg_extension WHERE extname = 'outbox'")" = 1.1 ] ||
	fail "CREATE EXTENSION did not install 1.1"
psql -c "SELECT outbox.subscribe('smoke', ARRAY['t'])" >/dev/null
id=$(psql -c "SELECT outbox.enqueue('t', '{\"n\": 1}')")
[ "$(psql -c "SELECT event_id || ' ' || (payload->>'n') FROM outbox.claim('smoke')")" = "$id 1" ] ||
	fail "claim did not return the event enqueued"
[ "$(psql -c "SELECT outbox.ack('smoke', $id)")" = t ] || fail "ack failed"
[ "$(psql -c "SELECT ready + leased FROM outbox.stats WHERE subscription = 'smoke'")" = 0 ] ||
	fail "the event is still pending after ack"
# the worker: started by the launcher once the extension exists
for _ in $(seq 1 300); do
	n=$(psql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'outbox worker' AND datname = 'postgres'")
	[ "$n" = 1 ] && break
	sleep 0.1
done
[ "$n" = 1 ] || fail "no outbox worker serves the database"
if grep -a 'terminated by signal' "$dir/log"; then fail "a process was terminated by a signal"; fi
echo "smoke $v: CREATE EXTENSION, enqueue, claim, ack and the worker: ok"
