#!/usr/bin/env bash
# Benchmarks `blockferry serve` against `blockferry restore` of the same backup:
# the issue-13 bar is that a sequential reader of the export (nbdcopy
# --connections=1 --flush to a raw file, as a restore writes one and fsyncs it)
# runs at 80% of restore's speed or better. nbdcopy's default, four connections
# on a multi-conn export (four sequential readers, a region each), is measured
# too.
#
#   bench-serve.sh                 2 GiB disk holding 1 GiB of data
#   BENCH_QUICK=1 bench-serve.sh   512 MiB disk holding 256 MiB of data
#
# The disk alternates 16 MiB of random bytes and 16 MiB of base64 text (which
# zstd shrinks a little) with 16 MiB holes, backed up once to a file:// repository.
# Each of BENCH_RUNS rounds (default 3) runs a restore, then a fresh serve with
# one nbdcopy of its export (a fresh server: its cache starts empty) for each of
# one and four connections, then the
# transport's floor: nbdcopy of the raw disk served by qemu-nbd (from the page
# cache, no decoding, no checking); the fastest
# of each is reported, as bench.sh does, being the figure least disturbed by other
# load on a shared machine. The copy must equal the disk (sha256), else exit 1.
#
# Environment: BENCH_QUICK=1, BENCH_RUNS, BLOCKFERRY (binary; default
# bin/blockferry), TMPDIR, BENCH_KEEP=1 keeps the work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bf=${BLOCKFERRY:-$root/bin/blockferry}
runs=${BENCH_RUNS:-3}
MiB=$((1024 * 1024))
if [ "${BENCH_QUICK:-0}" = 1 ]; then
	regions=16
else
	regions=64
fi

log() { printf 'bench-serve: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
[ -x "$bf" ] || die "no blockferry binary at $bf (make build)"
for t in nbdcopy qemu-nbd sha256sum; do command -v "$t" >/dev/null || die "$t is needed"; done

work=$(mktemp -d "${TMPDIR:-/tmp}/bf-bench-serve.XXXXXX")
serve_pid=""
cleanup() {
	local rc=$?
	if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true; fi
	if [ -n "${qemu_pid:-}" ]; then kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null || true; fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
	exit "$rc"
}
trap cleanup EXIT

disk=$work/disk.raw
truncate -s $((regions * 32 * MiB)) "$disk"
for ((r = 0; r < regions; r++)); do
	if ((r % 2 == 0)); then
		head -c $((16 * MiB)) /dev/urandom
	else
		head -c $((12 * MiB)) /dev/urandom | base64 -w 0 # 16 MiB of text
	fi | dd of="$disk" bs=1M seek=$((r * 32)) conv=notrunc status=none
done
want=$(sha256sum <"$disk" | cut -d' ' -f1)
repo=file://$work/repo
log "backing up a $((regions * 32)) MiB disk with $((regions * 16)) MiB of data"
id=$("$bf" backup --json --repository "$repo" --source "file://$disk" --disk bench/serve |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["backup"])')

seconds() { # cmd...: wall seconds of cmd
	local t0 t1
	t0=$(date +%s.%N)
	"$@" >/dev/null
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

serve_copy() { # connections: copies the export of the backup to $work/copy.raw with nbdcopy
	local sock=$work/serve.sock
	rm -f "$work/copy.raw" "$sock"
	"$bf" serve --repository "$repo" --backup "$id" --listen "unix://$sock" >"$work/serve.out" 2>"$work/serve.err" &
	serve_pid=$!
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	nbdcopy --connections="$1" --flush "nbd+unix:///?socket=$sock" "$work/copy.raw"
	kill "$serve_pid" && wait "$serve_pid" || die "serve did not exit cleanly: $(cat "$work/serve.err")"
	serve_pid=""
}

check_copy() { # what: the copy at $work/copy.raw must equal the disk
	local got
	got=$(sha256sum <"$work/copy.raw" | cut -d' ' -f1)
	[ "$got" = "$want" ] || die "$1 differs from the disk (sha256 $got, want $want)"
}

qemu_copy() { # copies the raw disk served by qemu-nbd to $work/qemu.raw with nbdcopy
	local sock=$work/qemu.sock
	rm -f "$work/qemu.raw" "$sock"
	qemu-nbd -r -t -f raw --socket="$sock" "$disk" &
	qemu_pid=$!
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	nbdcopy --flush "nbd+unix:///?socket=$sock" "$work/qemu.raw"
	kill "$qemu_pid" && wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=""
}

restore=() serve1=() serve4=() floor=()
for ((i = 1; i <= runs; i++)); do
	rm -f "$work/restored.raw"
	restore+=("$(seconds "$bf" restore --repository "$repo" --backup "$id" --target "file://$work/restored.raw")")
	serve1+=("$(seconds serve_copy 1)")
	check_copy "the copy of the export over one connection"
	serve4+=("$(seconds serve_copy 4)")
	check_copy "the copy of the export over four connections"
	floor+=("$(seconds qemu_copy)")
	log "round $i: restore ${restore[-1]}s, serve + nbdcopy (1 / 4 connections) ${serve1[-1]}s / ${serve4[-1]}s, qemu-nbd + nbdcopy ${floor[-1]}s"
done
got=$(sha256sum <"$work/restored.raw" | cut -d' ' -f1)
[ "$got" = "$want" ] || die "the restore differs from the disk (sha256 $got, want $want)"

min() { printf '%s\n' "$@" | sort -g | head -n 1; }
r=$(min "${restore[@]}") s1=$(min "${serve1[@]}") s4=$(min "${serve4[@]}") q=$(min "${floor[@]}")
mib=$((regions * 32))
awk -v r="$r" -v s1="$s1" -v s4="$s4" -v q="$q" -v mib="$mib" 'BEGIN {
	printf "| run | wall (s) | disk MiB/s | vs restore |\n|---|---:|---:|---:|\n"
	printf "| blockferry restore -> raw file | %.2f | %.0f | - |\n", r, mib / r
	printf "| blockferry serve + nbdcopy --connections=1 --flush -> raw file | %.2f | %.0f | %.0f%% |\n", s1, mib / s1, 100 * r / s1
	printf "| blockferry serve + nbdcopy --flush (4 connections) -> raw file | %.2f | %.0f | %.0f%% |\n", s4, mib / s4, 100 * r / s4
	printf "| qemu-nbd (raw disk, 1 connection) + nbdcopy --flush -> raw file | %.2f | %.0f | %.0f%% |\n", q, mib / q, 100 * r / q
	ratio = r / s1
	verdict = "FAIL"; if (ratio >= 0.8) verdict = "PASS"
	printf "\nbar (issue 13): a sequential reader of the export at >= 80%% of restore speed: %s (%.0f%%)\n", verdict, 100 * ratio
	printf "four readers (nbdcopy'"'"'s default on a multi-conn export): %.0f%% of restore speed\n", 100 * r / s4
	printf "one reader reads at %.0f%% of the speed of nbdcopy from qemu-nbd on the raw disk\n", 100 * q / s1
}'
