#!/bin/bash
# Tests of the Python client against a running cluster with outbox installed in
# $PGDATABASE (PGHOST, PGPORT, PGUSER, PGDATABASE exported; PGUSER a superuser:
# the tests create and drop their own subscriptions, a role and a database).
# Installs the dependencies from PyPI into clients/python/.venv.
# Needs Debian's python3 and python3-venv.
set -euo pipefail
cd "$(dirname "$0")"
: "${PGDATABASE:?PGDATABASE must name the database with outbox}"

python=${PYTHON:-python3}
# A venv made by another interpreter (pyenv here, Debian's in CI) is made anew.
if ! .venv/bin/python -c 'import sys; sys.exit(0)' >/dev/null 2>&1 ||
	[ "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2])')" != \
	  "$("$python" -c 'import sys; print(sys.version_info[:2])')" ]; then
	rm -rf .venv
	"$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
