# Debian chroots for the PostgreSQL majors this machine's Debian does not
# ship (test/matrix); sourced.
#
#   matrix_release MAJOR       the Debian release that ships MAJOR
#   chroot_prepare RELEASE MAJOR
#                              bootstrap the release once into
#                              $MATRIX_CACHE/RELEASE and install what the
#                              suite needs; kept and reused between runs
#   copy_tree DEST             a fresh copy of the source tree in DEST
#   chroot_copy_tree RELEASE [DIR]
#                              the same in the chroot's DIR (/build/outbox)
#   chroot_run RELEASE CMD...  run CMD as root inside the chroot, with
#                              /proc and /dev mounted for it alone (and,
#                              read-only, the host's cache of t/150's jars),
#                              one at a time; any process it leaves running
#                              there (a cluster of a killed test) is killed
#
# The chroots come from the Debian mirror that apt uses here.  Each command
# runs in a private mount namespace, so its mounts vanish with it whatever
# happens; the chroot has no service starting on install and no default
# cluster: every cluster is the suite's own, as on the host.

MATRIX_CACHE=${OUTBOX_MATRIX_CACHE:-/var/cache/outbox-matrix}

# what the suite and the package build need inside a chroot
matrix_packages() {
	local v=$1 extra=
	# Debian 12's libldap, which test/upgrade/run brings in, needs gnutls;
	# Java runs t/150 in the suite's chroots (the jars are the host's, lent
	# by chroot_run: no Maven there)
	[ "$v" = 15 ] || extra=" libgnutls30t64 default-jre-headless"
	echo "postgresql-$v postgresql-server-dev-$v postgresql-server-dev-all" \
		"build-essential libipc-run-perl libdbd-pg-perl" \
		"debhelper dpkg-dev fakeroot$extra"
}

matrix_release() {
	case $1 in
	15) echo bookworm ;;
	17) echo trixie ;;
	18) echo forky ;;
	*) echo "no Debian release known for PostgreSQL $1" >&2; return 1 ;;
	esac
}

# This machine's apt sources, one-line and deb822, without comments (a
# deb822 file may name in a comment the snapshot it was made from, which
# is not where apt fetches).
matrix_apt_sources() {
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources 2>/dev/null | grep -vE '^[[:space:]]*#' || true
}

# The Debian mirror of this machine's apt sources (deb822 or one-line).
matrix_mirror() {
	local m
	m=$(matrix_apt_sources | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ')
	echo "${m:-http://deb.debian.org/debian}"
}

# The one-line apt sources of a release: its suite, and for a stable
# release its -updates and -security suites too.
matrix_sources() {
	local release=$1 m sec
	m=$(matrix_mirror)
	case $release in
	bookworm | trixie)
		sec=$(matrix_apt_sources | grep -oE 'https?://[^ ]+/debian-security/?' | head -n 1)
		echo "deb $m $release $release-updates main"
		echo "deb ${sec:-http://deb.debian.org/debian-security} $release-security main"
		;;
	*) echo "deb $m $release main" ;;
	esac
}

chroot_root() { echo "$MATRIX_CACHE/$1"; }

chroot_prepare() {
	local release=$1 v=$2 root want
	root=$(chroot_root "$release")
	if [ ! -f "$root/.outbox-bootstrapped" ]; then
		local script=/usr/share/debootstrap/scripts/$release
		# a debootstrap older than the release bootstraps it as sid
		[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
		command -v debootstrap >/dev/null || {
			echo "test/matrix needs debootstrap (apt-get install debootstrap)" >&2
			return 1
		}
		rm -rf "$root.tmp"
		mkdir -p "$MATRIX_CACHE"
		echo "bootstrapping Debian $release into $root"
		debootstrap --variant=minbase "$release" "$root.tmp" "$(matrix_mirror)" "$script" \
			>"$MATRIX_CACHE/$release.debootstrap.log" 2>&1 || {
			tail -n 20 "$MATRIX_CACHE/$release.debootstrap.log" >&2
			return 1
		}
		rm -rf "$root"
		mv "$root.tmp" "$root"
		touch "$root/.outbox-bootstrapped"
	fi
	# testing's Release files expire within a week; a cached chroot must
	# still install
	echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99outbox"
	# no service starts from a package's postinst, no default cluster
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 755 "$root/usr/sbin/policy-rc.d"
	mkdir -p "$root/etc/postgresql-common/createcluster.d"
	echo 'create_main_cluster = false' >"$root/etc/postgresql-common/createcluster.d/outbox.conf"
	# a stable release with its point updates and security fixes, as a
	# server gets them (bookworm alone ships a 15 older than the API
	# outbox builds against: have_createdb_privilege came in a minor)
	local sources
	sources=$(matrix_sources "$release")
	if [ "$(cat "$root/etc/apt/sources.list" 2>/dev/null)" != "$sources" ]; then
		echo "$sources" >"$root/etc/apt/sources.list"
		rm -f "$root/.outbox-packages"
	fi
	want=$(matrix_packages "$v")
	if [ "$(cat "$root/.outbox-packages" 2>/dev/null)" != "$want" ]; then
		echo "installing into $release: $want"
		# shellcheck disable=SC2086
		chroot_run "$release" sh -c "apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $want" \
			>"$MATRIX_CACHE/$release.apt.log" 2>&1 || {
			tail -n 20 "$MATRIX_CACHE/$release.apt.log" >&2
			return 1
		}
		echo "$want" >"$root/.outbox-packages"
	fi
}

# A copy of the files of the source tree (tracked and new, not ignored) in
# DEST, emptied first, so that no build product of another major is reused.
copy_tree() {
	local dest=$1
	rm -rf "$dest"
	mkdir -p "$dest"
	(cd "$top" && git ls-files -co --exclude-standard -z 2>/dev/null ||
		find . -path ./.git -prune -o -type f -print0) |
		(cd "$top" && tar --null -T - -c) | tar -x -C "$dest"
}

chroot_copy_tree() {
	copy_tree "$(chroot_root "$1")${2:-/build/outbox}"
}

chroot_run() {
	local release=$1 root
	root=$(chroot_root "$release")
	shift
	# one command at a time in a chroot: it kills what it leaves behind
	(
		exec 9>"$MATRIX_CACHE/$release.lock"
		flock 9
		rc=0
		unshare --mount --propagation private -- /bin/bash -c '
			root=$1 cdc=$2; shift 2
			mount -t proc proc "$root/proc"
			mount --rbind /dev "$root/dev"
			# the jars of t/150 that test/run fetched here, read-only
			if [ -d "$cdc" ]; then
				mkdir -p "$root/var/cache/outbox-cdc"
				mount --bind "$cdc" "$root/var/cache/outbox-cdc"
				mount -o remount,bind,ro "$root/var/cache/outbox-cdc"
			fi
			exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
				HOME=/root LANG=C.UTF-8 TERM=dumb "$@"' _ "$root" "${OUTBOX_CDC_CACHE:-/var/cache/outbox-cdc}" "$@" 9>&- || rc=$?
		chroot_kill_leftovers "$root"
		exit $rc
	)
}

# Processes whose root is the chroot: a cluster a killed test left behind.
chroot_kill_leftovers() {
	local root=$1 p
	for p in /proc/[0-9]*; do
		if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then
			kill -9 "${p#/proc/}" 2>/dev/null || true
		fi
	done
}
