#!/usr/bin/env bash
# scripts/deb.sh: what `make deb` runs. Builds the Debian package postgresql-15-idempotent with
# Debian's own tooling (dpkg-buildpackage, debhelper, pg_buildext from postgresql-server-dev-all;
# debian/ says how) from a copy of the work tree (the files git tracks or would track, as they are
# now, so the package holds what `make install` installs from the same tree), and puts the .deb
# into dist/. Installs the build dependencies if missing. Prints the package's path last.
#   KEEP_TMP=1   keep the build directory and its log
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# build dependencies, each detected by the file used
# (dpkg-checkbuilddeps wants build-essential, which dpkg-dev only recommends)
idem_ensure_deps "/usr/bin/dpkg-buildpackage|dpkg-dev" "/usr/share/build-essential/list|build-essential" \
	"/usr/bin/dh|debhelper" "/usr/share/perl5/Debian/Debhelper/Sequence/pgxs_loop.pm|postgresql-server-dev-all"

dist=$IDEM_ROOT/dist
version=$(dpkg-parsechangelog -l "$IDEM_ROOT/debian/changelog" -S Version)
extversion=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$IDEM_ROOT/idempotent.control")
if [ "${version%%~*}" != "$extversion" ]; then   # 1.2~dev: 1.2 in development
	echo "warning: debian/changelog is at $version, idempotent.control's default_version at $extversion;" \
		"add a debian/changelog entry (dch -v $extversion) for a release" >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/idem-deb.XXXXXX")
cleanup() {
	local rc=$?
	if [ "$rc" -ne 0 ] || [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp (build log: $tmp/build.log)" >&2
	else rm -rf "$tmp"; fi
}
trap cleanup EXIT

src=$tmp/postgresql-idempotent-$version
mkdir -p "$src"
if git -C "$IDEM_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	# tracked and untracked files, minus what .gitignore names (build products, node_modules, dist)
	(cd "$IDEM_ROOT" && git ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
		tar --null -T - -cf -) | tar -C "$src" -xf -
else
	tar -C "$IDEM_ROOT" --exclude=./.git --exclude=./dist --exclude=node_modules \
		--exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -C "$src" -xf -
fi

idem_log "building postgresql-15-idempotent $version (log: $tmp/build.log)"
if ! (cd "$src" && dpkg-buildpackage --build=binary --no-sign) >"$tmp/build.log" 2>&1; then
	tail -n 40 "$tmp/build.log" >&2
	idem_die "dpkg-buildpackage failed; log: $tmp/build.log"
fi

mkdir -p "$dist"
[ -f "$dist/.gitignore" ] || printf '# built by make deb\n*\n' >"$dist/.gitignore"
debs=("$tmp"/postgresql-*-idempotent_"${version}"_*.deb)
[ -f "${debs[0]}" ] || idem_die "dpkg-buildpackage made no postgresql-*-idempotent package; log: $tmp/build.log"
for deb in "${debs[@]}"; do
	cp "$deb" "$dist/"
	printf '%s\n' "$dist/$(basename "$deb")"
done
