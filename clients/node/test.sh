#!/bin/bash
# Builds outbox-client and runs its tests (node --test) against the running
# cluster of PGHOST/PGPORT/PGUSER/PGDATABASE, which must have the outbox
# extension in PGDATABASE. Installs the npm dependencies into ./node_modules.
set -euo pipefail
cd "$(dirname "$0")"
: "${PGHOST:?}" "${PGPORT:?}" "${PGUSER:?}" "${PGDATABASE:?}"
command -v node >/dev/null || { echo "test.sh: node (20 or later) is needed" >&2; exit 1; }
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
npm ci --no-progress --loglevel=error
npm run --silent build
npm run --silent build:test
exec node --test --test-concurrency=4 --test-timeout=120000 --test-reporter=spec build/test/*.test.js
