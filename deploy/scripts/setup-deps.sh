#!/usr/bin/env bash
# Installs what blockferry needs to build and test on Debian bookworm, and builds a
# file:// Go module proxy tree holding libnbd's Go bindings (the public proxy refuses
# libguestfs.org/libnbd). Used by the Makefile, .ci/run and the Dockerfile alike.
#
#   setup-deps.sh [--build-only]   --build-only: only what compiling needs (no test tools)
#
# Prints nothing on success but progress lines; idempotent.
set -euo pipefail

LIBNBD_VERSION=1.14.2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
proxy_dir=${BLOCKFERRY_GOPROXY_DIR:-$root/.cache/goproxy}
build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

log() { printf 'setup-deps: %s\n' "$*" >&2; }

# deb-src entry so that `apt-get source` finds libnbd.
ensure_deb_src() {
	if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
		log "adding deb-src entry"
		"${sudo_cmd[@]}" tee /etc/apt/sources.list.d/blockferry-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	fi
}

install_packages() {
	local pkgs=(libnbd-dev pkg-config gcc zip unzip ca-certificates dpkg-dev)
	if [ "$build_only" -eq 0 ]; then
		pkgs+=(qemu-utils nbdkit libnbd-bin curl python3 time) # the last three for make bench
		# docs/reader.py, the independent reader of docs/FORMAT.md that jobs tests run
		pkgs+=(python3-zstandard python3-cryptography b3sum e2fsprogs) # FORMAT.md reader test; serve mount test
		# qemu-storage-daemon, which jobs' live-backup test drives over QMP as libvirt does
		pkgs+=(qemu-system-common)
	fi
	local missing=()
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ "${#missing[@]}" -gt 0 ] || [ ! -f "$proxy_dir/libguestfs.org/libnbd/@v/v$LIBNBD_VERSION.zip" ]; then
		log "apt-get update"
		"${sudo_cmd[@]}" apt-get update -qq
	fi
	if [ "${#missing[@]}" -gt 0 ]; then
		log "installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

# Serve golang/ of libnbd's source tarball as a module: @v/list, .info, .mod, .zip
# (zip entries prefixed "libguestfs.org/libnbd@vX/", no directory entries), as libnbd's
# own golang/make-dist.sh does.
build_libnbd_proxy() {
	local modpath=libguestfs.org/libnbd
	local vdir=$proxy_dir/$modpath/@v
	if [ -f "$vdir/v$LIBNBD_VERSION.zip" ]; then
		return
	fi
	local work
	work=$(mktemp -d)
	trap 'rm -rf "$work"' RETURN
	log "fetching libnbd $LIBNBD_VERSION source package"
	(cd "$work" && apt-get source --download-only -qq "libnbd=$LIBNBD_VERSION*" >/dev/null 2>&1 ||
		apt-get source --download-only -qq libnbd >/dev/null)
	local tarball
	tarball=$(ls "$work"/libnbd_*.orig.tar.* | head -n1)
	tar -C "$work" -xf "$tarball"
	local src
	src=$(ls -d "$work"/libnbd-*/golang | head -n1)
	local stage=$work/stage/$modpath@v$LIBNBD_VERSION
	mkdir -p "$stage"
	# The module is the Go sources plus go.mod, LICENSE and README.
	(cd "$src" && find . -maxdepth 1 -type f \( -name '*.go' -o -name '*.h' -o -name '*.c' -o -name go.mod -o -name 'LICENSE' -o -name 'README*' \) -print0 |
		xargs -0 -I{} cp {} "$stage/")
	[ -f "$stage/LICENSE" ] || cp "$(dirname "$src")/COPYING.LIB" "$stage/LICENSE" 2>/dev/null || true
	# Tests need the test data tree; drop them from the module.
	rm -f "$stage"/*_test.go
	mkdir -p "$vdir"
	cp "$stage/go.mod" "$vdir/v$LIBNBD_VERSION.mod"
	printf '{"Version":"v%s","Time":"2022-11-01T00:00:00Z"}\n' "$LIBNBD_VERSION" >"$vdir/v$LIBNBD_VERSION.info"
	printf 'v%s\n' "$LIBNBD_VERSION" >"$vdir/list"
	(cd "$work/stage" && find . -type f | sed 's|^\./||' | zip -q -X -D "$vdir/v$LIBNBD_VERSION.zip" -@)
	log "libnbd Go module proxy ready at $proxy_dir"
}

# Test services built from the Go module proxy: versitygw (a strict S3 server) and a
# nats-server binary of the version go.mod pins, for process and restart tests.
install_test_services() {
	local bin=$root/.cache/bin
	mkdir -p "$bin"
	if [ ! -x "$bin/versitygw" ]; then
		log "building versitygw"
		GOBIN=$bin GOFLAGS= go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
	fi
	if [ ! -x "$bin/nats-server" ]; then
		log "building nats-server"
		(cd "$root" && GOPROXY="file://$proxy_dir,$(go env GOPROXY)" GONOSUMDB=libguestfs.org \
			go build -o "$bin/nats-server" github.com/nats-io/nats-server/v2)
	fi
}

ensure_deb_src
install_packages
build_libnbd_proxy
[ "$build_only" -eq 1 ] || install_test_services
