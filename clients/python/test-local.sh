#!/bin/bash
# Starts a throwaway cluster (test/cluster.sh), creates the extension and runs
# test.sh against it.  Set PG_CONFIG to pick the PostgreSQL with outbox installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../test/cluster.sh
source "$here/../../test/cluster.sh"
cluster_start
export PGDATABASE=postgres
"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION outbox'
"$here/test.sh" "$@"
