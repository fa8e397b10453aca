# Throwaway PostgreSQL cluster for the test suite and the demo; sourced.
#
#   cluster_start        initdb + start, preloading outbox; exports PGHOST,
#                        PGPORT, PGUSER and CLUSTER_DIR; removal on exit
#   as_owner CMD...      run a command as the cluster's unprivileged owner
#
# As root, the cluster belongs to the "postgres" user, since PostgreSQL
# refuses to run as root.  It listens only on a socket in a private
# directory, on a port nobody else uses, and is stopped and removed on exit
# whatever happens.

PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir)

if [ "$(id -u)" = 0 ]; then
	CLUSTER_OWNER=postgres
	as_owner() { su -s /bin/bash "$CLUSTER_OWNER" -c "$(printf '%q ' "$@")"; }
else
	CLUSTER_OWNER=$(id -un)
	as_owner() { "$@"; }
fi

cluster_stop() {
	local status=$?
	if [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR" ]; then
		if [ -f "$CLUSTER_DIR/data/postmaster.pid" ]; then
			as_owner "$PG_BINDIR/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate stop >/dev/null 2>&1 || true
		fi
		if [ $status -ne 0 ] && [ -f "$CLUSTER_DIR/server.log" ]; then
			echo "--- last lines of the server log ---" >&2
			tail -n 40 "$CLUSTER_DIR/server.log" >&2 || true
		fi
		rm -rf "$CLUSTER_DIR"
	fi
	exit $status
}

# A port nobody listens on (the cluster also names its socket after it).
cluster_free_port() {
	local port=$((20000 + RANDOM % 30000))
	while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
		port=$((20000 + RANDOM % 30000))
	done
	echo "$port"
}

# cluster_start [extra postgresql.conf lines...]
cluster_start() {
	CLUSTER_DIR=$(mktemp -d /tmp/outbox-cluster.XXXXXX)
	trap cluster_stop EXIT
	trap 'exit 130' INT TERM
	chmod 755 "$CLUSTER_DIR"
	[ "$(id -u)" = 0 ] && chown "$CLUSTER_OWNER" "$CLUSTER_DIR"
	local port
	port=$(cluster_free_port)
	as_owner "$PG_BINDIR/initdb" -D "$CLUSTER_DIR/data" --auth=trust -U postgres --no-sync >/dev/null
	{
		echo "port = $port"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$CLUSTER_DIR'"
		echo "shared_preload_libraries = 'outbox'"
		echo "max_prepared_transactions = 10"
		local line
		for line in "$@"; do echo "$line"; done
	} >>"$CLUSTER_DIR/data/postgresql.conf"
	as_owner "$PG_BINDIR/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w start >/dev/null
	export PGHOST="$CLUSTER_DIR" PGPORT="$port" PGUSER=postgres CLUSTER_DIR
}
