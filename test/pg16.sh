# PostgreSQL 16 for test/matrix; sourced.
#
#   pg16_prepare    fetch PostgreSQL 16 once into $MATRIX_CACHE/pg16-VERSION
#                   and print the path of its pg_config
#
# No Debian release ships 16 (12 has 15, 13 has 17, testing 18), and this
# machine reaches no PostgreSQL download site.  PyPI's pgserver wheel
# carries a whole PostgreSQL 16 installation built from the community
# source: server, client programs, server headers, PGXS, pg_regress and
# the isolation tester (not the TAP modules, which test/matrix takes from
# 15).  It is relocatable: its pg_config reports where it lies.  The wheel
# is pinned by version and checksum; it is read as a zip, never installed,
# and nothing of it runs as Python.

PG16_WHEEL_VERSION=0.1.4
PG16_WHEEL=pgserver-$PG16_WHEEL_VERSION-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
PG16_WHEEL_SHA256=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813

pg16_prepare() {
	local dir="$MATRIX_CACHE/pg16-$PG16_WHEEL_VERSION" tmp
	if [ ! -x "$dir/pgserver/pginstall/bin/pg_config" ]; then
		echo "== fetching PostgreSQL 16 (PyPI pgserver $PG16_WHEEL_VERSION) into $dir" >&2
		tmp=$(mktemp -d /tmp/outbox-pg16.XXXXXX)
		# a venv's pip: Debian's python3 may come without one of its own
		python3 -m venv "$tmp/venv" >&2 &&
			"$tmp/venv/bin/pip" download -q --no-deps --only-binary=:all: \
				--platform manylinux2014_x86_64 --python-version 3.11 \
				-d "$tmp" "pgserver==$PG16_WHEEL_VERSION" >&2 &&
			echo "$PG16_WHEEL_SHA256  $tmp/$PG16_WHEEL" | sha256sum -c --quiet >&2 &&
			python3 -m zipfile -e "$tmp/$PG16_WHEEL" "$tmp/x" >&2 || {
			rm -rf "$tmp"
			return 1
		}
		rm -rf "$dir"
		mkdir -p "$dir"
		# the programs find libpq in pgserver.libs, beside (their rpath)
		mv "$tmp/x/pgserver" "$tmp/x/pgserver.libs" "$dir/"
		rm -rf "$tmp"
		# a zip keeps no file modes: the programs must be executable and
		# the whole tree readable by the clusters' unprivileged owner
		chmod -R a+rX "$dir"
		local p="$dir/pgserver/pginstall"
		chmod a+x "$p"/bin/* \
			"$p"/lib/postgresql/pgxs/src/test/regress/pg_regress \
			"$p"/lib/postgresql/pgxs/src/test/isolation/* \
			"$p"/lib/postgresql/pgxs/config/*
	fi
	echo "$dir/pgserver/pginstall/bin/pg_config"
}
