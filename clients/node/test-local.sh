#!/bin/bash
# Starts a throwaway cluster (test/cluster.sh), creates the extension, runs test.sh.
# PG_CONFIG picks the PostgreSQL installation that has outbox installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../test/cluster.sh"
cluster_start
export PGDATABASE=postgres
"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION outbox' >/dev/null
"$here/test.sh"
