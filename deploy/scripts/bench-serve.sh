#!/usr/bin/env bash
# Benchmarks `blockferry serve` against `blockferry restore` of the same backup:
# the issue-13 bar is that a sequential reader of the export (nbdcopy
# --connections=1 SRC null:) reads at 80% of restore's speed or better. Copies
# to a raw file (nbdcopy --flush, as a restore writes one and fsyncs it) by one
# reader and by nbdcopy's default, four connections on a multi-conn export (four
# sequential readers, a region each), are measured too, and the same reader and
# copy from qemu-nbd serving the raw disk: what nbdcopy and the socket cost with
# an export that does no work.
#
#   bench-serve.sh                 2 GiB disk holding 1 GiB of data
#   BENCH_QUICK=1 bench-serve.sh   512 MiB disk holding 256 MiB of data
#
# The disk alternates 16 MiB of random bytes and 16 MiB of base64 text (which
# zstd shrinks a little) with 16 MiB holes, backed up once to a file:// repository.
# Each of BENCH_RUNS rounds (default 3) runs a restore, then for each nbdcopy
# above a fresh serve (its cache starts empty), then the transport's floor:
# nbdcopy of the raw disk served by qemu-nbd (from the page cache, no decoding,
# no checking); the fastest of each is reported, as bench.sh does, being the
# figure least disturbed by other load on a shared machine. Every copy to a file
# and the restore must equal the disk (sha256), else exit 1.
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

serve_copy() { # connections destination: nbdcopy of the export of the backup
	local sock=$work/serve.sock
	rm -f "$work/copy.raw" "$sock"
	"$bf" serve --repository "$repo" --backup "$id" --listen "unix://$sock" >"$work/serve.out" 2>"$work/serve.err" &
	serve_pid=$!
	for _ in $(seq 1000); do [ -S "$sock" ] && break; sleep 0.005; done
	nbdcopy --connections="$1" --flush "nbd+unix:///?socket=$sock" "$2"
	kill "$serve_pid" && wait "$serve_pid" || die "serve did not exit cleanly: $(cat "$work/serve.err")"
	serve_pid=""
}

check_copy() { # what: the copy at $work/copy.raw must equal the disk
	local got
	got=$(sha256sum <"$work/copy.raw" | cut -d' ' -f1)
	[ "$got" = "$want" ] || die "$1 differs from the disk (sha256 $got, want $want)"
}

qemu_copy() { # destination: nbdcopy of the raw disk served by qemu-nbd (one connection)
	local sock=$work/qemu.sock
	rm -f "$work/copy.raw" "$sock"
	qemu-nbd -r -t -f raw --socket="$sock" "$disk" &
	qemu_pid=$!
	for _ in $(seq 1000); do [ -S "$sock" ] && break; sleep 0.005; done
	nbdcopy --flush "nbd+unix:///?socket=$sock" "$1"
	kill "$qemu_pid" && wait "$qemu_pid" 2>/dev/null || true
	qemu_pid=""
}

restore=() read1=() serve1=() serve4=() qread=() qcopy=()
for ((i = 1; i <= runs; i++)); do
	rm -f "$work/restored.raw"
	restore+=("$(seconds "$bf" restore --repository "$repo" --backup "$id" --target "file://$work/restored.raw")")
	read1+=("$(seconds serve_copy 1 null:)")
	serve1+=("$(seconds serve_copy 1 "$work/copy.raw")")
	check_copy "the copy of the export over one connection"
	serve4+=("$(seconds serve_copy 4 "$work/copy.raw")")
	check_copy "the copy of the export over four connections"
	qread+=("$(seconds qemu_copy null:)")
	qcopy+=("$(seconds qemu_copy "$work/copy.raw")")
	log "round $i: restore ${restore[-1]}s; serve + nbdcopy: one reader ${read1[-1]}s, to a file over 1 / 4 connections ${serve1[-1]}s / ${serve4[-1]}s; qemu-nbd + nbdcopy ${qread[-1]}s / to a file ${qcopy[-1]}s"
done
got=$(sha256sum <"$work/restored.raw" | cut -d' ' -f1)
[ "$got" = "$want" ] || die "the restore differs from the disk (sha256 $got, want $want)"

min() { printf '%s\n' "$@" | sort -g | head -n 1; }
r=$(min "${restore[@]}") r1=$(min "${read1[@]}") s1=$(min "${serve1[@]}") s4=$(min "${serve4[@]}")
qr=$(min "${qread[@]}") qc=$(min "${qcopy[@]}")
mib=$((regions * 32))
awk -v r="$r" -v r1="$r1" -v s1="$s1" -v s4="$s4" -v qr="$qr" -v qc="$qc" -v mib="$mib" '
function row(what, t) { printf "| %s | %.2f | %.0f | %.0f%% |\n", what, t, mib / t, 100 * r / t }
BEGIN {
	printf "| run | wall (s) | disk MiB/s | vs restore |\n|---|---:|---:|---:|\n"
	printf "| blockferry restore -> raw file | %.2f | %.0f | - |\n", r, mib / r
	row("blockferry serve + nbdcopy --connections=1 -> null: (one sequential reader)", r1)
	row("blockferry serve + nbdcopy --connections=1 --flush -> raw file", s1)
	row("blockferry serve + nbdcopy --flush (4 connections) -> raw file", s4)
	row("qemu-nbd (raw disk, 1 connection) + nbdcopy -> null:", qr)
	row("qemu-nbd (raw disk, 1 connection) + nbdcopy --flush -> raw file", qc)
	verdict = "FAIL"; if (r / r1 >= 0.8) verdict = "PASS"
	printf "\nbar (issue 13): a sequential reader of the export at >= 80%% of restore speed: %s (%.0f%%)\n", verdict, 100 * r / r1
	printf "copies to a raw file: one reader %.0f%%, four %.0f%% of restore speed; nbdcopy'"'"'s copy from qemu-nbd of the raw disk: %.0f%%\n", 100 * r / s1, 100 * r / s4, 100 * r / qc
	printf "against qemu-nbd serving the raw disk: the reader at %.0f%% of its speed, the copy at %.0f%%\n", 100 * qr / r1, 100 * qc / s1
}'
