#!/usr/bin/env bash
# Benchmarks blockferry against nbdcopy on one qcow2 image exported by qemu-nbd.
#
#   bench.sh                 4 GiB image holding 2 GiB of data (takes several minutes)
#   BENCH_QUICK=1 bench.sh   512 MiB image holding 256 MiB of data
#
# Measures wall time and peak RSS (GNU time) of:
#   nbdcopy SRC null:             read baseline
#   nbdcopy --flush SRC FILE      restore baseline (blockferry's restore fsyncs too)
#   full backup to a file:// repository
#   full backup to S3 (versitygw on loopback, fresh bucket)
#   incremental (dirty bitmap b1) after 1% of the disk is rewritten in scattered
#   64 KiB writes, to the file:// repository
#   restore of that incremental from the file:// repository to a raw file, whose
#   sha256 must equal that of the image after the writes (exit 1 otherwise)
# and prints one markdown table and the bar checks.
#
# Every run but the incremental is repeated BENCH_RUNS times (default 3; a backup
# goes to a fresh repository or bucket each time) and the fastest is reported, with
# the highest peak RSS of all: on a shared machine the minimum is the figure least
# disturbed by other load.
#
# Environment: BENCH_QUICK=1, BENCH_RUNS, BLOCKFERRY (binary; default
# bin/blockferry, built when missing), BENCH_KEEP=1 keeps the work directory, TMPDIR
# (where the work directory goes: it needs about 5x the data size free). `make bench`
# builds the binary first.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH="$root/.cache/bin:$PATH"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

MiB=$((1 << 20))
if [ "${BENCH_QUICK:-0}" = 1 ]; then
	mode=quick
	disk_size=$((512 * MiB))
	data_size=$((256 * MiB))
else
	mode=full
	disk_size=$((4096 * MiB))
	data_size=$((2048 * MiB))
fi
regions=8 # data regions, alternately random and text, spread over the disk
region_size=$((data_size / regions))
region_stride=$((disk_size / regions))
bar_ratio=3
runs=${BENCH_RUNS:-3}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_RUNS=$runs is not a positive number" >&2; exit 2; }
bar_rss_mib=512

# --- tools -----------------------------------------------------------------------

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# GNU time (not the shell keyword) for peak RSS.
gnu_time=/usr/bin/time
if ! { [ -x "$gnu_time" ] && "$gnu_time" -f '%M' true >/dev/null 2>&1; }; then
	log "installing GNU time"
	"${sudo_cmd[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends time >/dev/null
fi
for t in qemu-img qemu-io qemu-nbd nbdcopy nbdinfo versitygw curl python3 sha256sum base64 seq paste; do
	command -v "$t" >/dev/null || die "$t is not installed (make setup installs the test tools)"
done

bf=${BLOCKFERRY:-$root/bin/blockferry}
if [ ! -x "$bf" ]; then
	log "building $bf"
	(cd "$root" && go build -o "$bf" ./cmd/blockferry)
fi

# --- work directory and cleanup ----------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/blockferry-bench.XXXXXX")
nbd_pid=""
s3_pid=""

stop_pid() { # pid: TERM, then KILL if it lingers, and reap
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null || return 0
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	stop_pid "$nbd_pid"
	stop_pid "$s3_pid"
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		log "kept $work"
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

img=$work/disk.qcow2
sock=$work/nbd.sock
src="nbd+unix:///?socket=$sock"
file_repo="file://$work/repo"
disk=bench/vda

# --- the image ---------------------------------------------------------------------

# Text that zstd's fastest level shrinks about 3.2x: numbered lines of letters drawn
# with skewed frequencies. Every 4 MiB is distinct, so nothing deduplicates.
gen_text() {
	local n=$1
	( # head closes the pipe early: the writers' SIGPIPE is expected
		set +o pipefail
		paste -d' ' <(seq 1000000000 9999999999) \
			<(base64 -w 48 /dev/urandom | tr 'A-Za-z0-9+/' 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeettttttttttttaaaaoooonn') |
			head -c "$n"
	)
}

log "$mode mode: building a $((disk_size / MiB)) MiB qcow2 holding $((data_size / MiB)) MiB of data in $regions regions"
raw=$work/disk.raw
truncate -s "$disk_size" "$raw"
for ((i = 0; i < regions; i++)); do
	off=$((i * region_stride + (i % 3) * region_stride / 4)) # irregular gaps
	if ((i % 2 == 0)); then
		head -c "$region_size" /dev/urandom
	else
		gen_text "$region_size"
	fi | dd of="$raw" bs=4M seek="$off" oflag=seek_bytes iflag=fullblock conv=notrunc,sparse status=none
done
qemu-img convert -f raw -O qcow2 "$raw" "$img"
rm -f "$raw"
qemu-img bitmap --add "$img" b1

# Bytes holding data, as the server will report them (what nbdcopy copies).
allocated_bytes() {
	nbdinfo --map "$src" | awk '$3 == 0 { n += $2 } END { printf "%.0f\n", n }' # mawk clamps %d at 2^31-1
}

start_nbd() {
	# Read-only, 4 clients (nbdcopy and blockferry both use up to 4 connections),
	# persistent so that it outlives each client, the host page cache left on
	# (--cache=writeback, the default): after the warm-up read every reader is served
	# from memory, so no reader pays for cold disk reads the others do not.
	rm -f "$sock"
	qemu-nbd -r -f qcow2 -e 4 -t -B b1 --cache=writeback --aio=threads --socket="$sock" "$img" &
	nbd_pid=$!
	local i
	for i in $(seq 100); do
		[ -S "$sock" ] && nbdinfo --size "$src" >/dev/null 2>&1 && return 0
		kill -0 "$nbd_pid" 2>/dev/null || die "qemu-nbd exited"
		sleep 0.1
	done
	die "qemu-nbd did not start"
}

stop_nbd() {
	stop_pid "$nbd_pid"
	nbd_pid=""
}

# --- measuring ---------------------------------------------------------------------

# CPU seconds (user+sys) a process has used so far; 0 when there is none.
cpu_of() {
	local pid=$1
	[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo 0; return; }
	# Fields 14 and 15 (utime, stime) in clock ticks; the command name may hold spaces.
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$pid/stat"
}

results=$work/results.tsv # name \t wall \t rss_kib \t user+sys \t server cpu \t bytes \t baseline
: >"$results"

# measure NAME RUNS BYTES BASELINE SERVER_PID RESET -- CMD...: runs CMD RUNS times
# under GNU time, calling the function RESET (or nothing when "") before each run;
# the last run's stdout is left in $work/NAME.out. BYTES is the disk bytes a run
# moves (for MiB/s); BASELINE names the row it is compared with; SERVER_PID (or "")
# is the S3 server whose CPU time during the run is added to the server column.
measure() {
	local name=$1 n=$2 bytes=$3 baseline=$4 spid=$5 reset=$6
	shift 7
	local tf=$work/$name.time nbd0 nbd1 s0 s1 server i
	for ((i = 1; i <= n; i++)); do
		[ -z "$reset" ] || "$reset"
		nbd0=$(cpu_of "$nbd_pid")
		s0=$(cpu_of "$spid")
		log "running: $name ($i/$n)"
		if ! "$gnu_time" -f '%e %M %U %S' -o "$tf" "$@" >"$work/$name.out" 2>"$work/$name.err"; then
			cat "$work/$name.err" >&2
			die "$name failed"
		fi
		nbd1=$(cpu_of "$nbd_pid")
		s1=$(cpu_of "$spid")
		# The last line: GNU time puts "Command exited with non-zero status" first.
		read -r wall rss user sys < <(tail -n 1 "$tf")
		server=$(awk -v a="$nbd0" -v b="$nbd1" -v c="$s0" -v d="$s1" 'BEGIN { printf "%.2f", (b - a) + (d - c) }')
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$wall" "$rss" \
			"$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" "$server" "$bytes" "$baseline" >>"$results"
	done
}

json_field() { # file expr: a field of a JSON object, e.g. .stats.bytes_read
	python3 - "$1" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].strip(".").split("."):
    v = v[k]
print(v)
PY
}

# --- S3 server ---------------------------------------------------------------------

s3_key=blockferry-bench
s3_secret=blockferry-bench-secret

start_s3() {
	local dir=$work/s3 port i
	mkdir -p "$dir"
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
	s3_endpoint=http://127.0.0.1:$port
	# --keep-alive as the tests run it: otherwise every request opens a connection.
	versitygw --access "$s3_key" --secret "$s3_secret" --port "127.0.0.1:$port" \
		--keep-alive --quiet posix "$dir" >"$work/versitygw.log" 2>&1 &
	s3_pid=$!
	for i in $(seq 300); do
		if curl -s -o /dev/null -D - "$s3_endpoint/" 2>/dev/null | grep -qi '^server: *versitygw'; then
			# versitygw wants x-amz-content-sha256 (here of the empty body), which curl
			# then signs along with the rest.
			curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$s3_key:$s3_secret" \
				-H "x-amz-content-sha256: $(printf '' | sha256sum | cut -d' ' -f1)" \
				-X PUT "$s3_endpoint/bench" -o /dev/null || die "creating the bucket failed"
			return 0
		fi
		kill -0 "$s3_pid" 2>/dev/null || die "versitygw exited: $(cat "$work/versitygw.log")"
		sleep 0.1
	done
	die "versitygw did not answer"
}

# The SDK's default credential chain, shielded from the caller's own AWS setup.
export AWS_ACCESS_KEY_ID=$s3_key AWS_SECRET_ACCESS_KEY=$s3_secret AWS_REGION=us-east-1
export AWS_SESSION_TOKEN="" AWS_PROFILE="" AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/nonexistent/blockferry-bench/aws-config
export AWS_SHARED_CREDENTIALS_FILE=/nonexistent/blockferry-bench/aws-credentials
unset AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 BLOCKFERRY_REPOSITORY BLOCKFERRY_KEY BLOCKFERRY_KEY_FILE

# --- the runs ----------------------------------------------------------------------

start_nbd
data_bytes=$(allocated_bytes)
log "the export reports $((data_bytes / MiB)) MiB of data"

log "warm-up: nbdcopy $src null: (not measured)"
nbdcopy "$src" null:

reset_nbdcopy_file() { rm -f "$work/nbdcopy.raw"; }
reset_full_file() { rm -rf "$work/repo"; }
# versitygw's posix backend keeps a bucket's objects as files under DIR/BUCKET.
reset_full_s3() { find "$work/s3/bench" -mindepth 1 -delete; }
reset_restore_file() { rm -f "$work/restored.raw"; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the runs: $load_before"
measure nbdcopy_null "$runs" "$data_bytes" "" "" "" -- nbdcopy "$src" null:
measure nbdcopy_file "$runs" "$data_bytes" "" "" reset_nbdcopy_file -- nbdcopy --flush "$src" "$work/nbdcopy.raw"
reset_nbdcopy_file

# The last run's repository stays: it is the incremental's parent.
measure full_file "$runs" "$data_bytes" nbdcopy_null "" reset_full_file -- \
	"$bf" backup --source "$src" --disk "$disk" --repository "$file_repo" --json
full_id=$(json_field "$work/full_file.out" .backup)

start_s3
s3_repo="s3://bench/bf?endpoint=$s3_endpoint&region=us-east-1"
measure full_s3 "$runs" "$data_bytes" nbdcopy_null "$s3_pid" reset_full_s3 -- \
	"$bf" backup --source "$src" --disk "$disk" --repository "$s3_repo" --json
stop_pid "$s3_pid"
s3_pid=""
s3_stored=$(du -sb "$work/s3" | cut -f1)
rm -rf "$work/s3"

# 1% of the disk rewritten in 64 KiB writes at distinct pseudo-random 64 KiB-aligned
# offsets (fixed seed: every run writes the same places), with qemu-io, which keeps
# the image's persistent bitmap b1 up to date.
stop_nbd
n_writes=$((disk_size / 100 / (64 << 10)))
log "rewriting 1% of the disk: $n_writes scattered 64 KiB writes"
qemu_io_args=()
while read -r off pat; do
	qemu_io_args+=(-c "write -q -P $pat $off 64k")
done < <(python3 - "$disk_size" "$n_writes" <<'PY'
import random, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(20240601)
for i, slot in enumerate(sorted(rng.sample(range(size // 65536), n))):
    print(slot * 65536, 1 + i % 255)
PY
)
qemu-io -f qcow2 "${qemu_io_args[@]}" "$img" >/dev/null
start_nbd
nbdcopy "$src" null: # the rewritten clusters into the page cache too

# The incremental reads every chunk the bitmap marks; its MiB/s counts those bytes
# (bytes_read of its stats, filled in by the report).
# It runs once: a second run against the same repository would find its chunks stored.
measure incr_file 1 0 "" "" "" -- \
	"$bf" backup --source "$src" --bitmap b1 --parent "$full_id" --disk "$disk" --repository "$file_repo" --json
incr_id=$(json_field "$work/incr_file.out" .backup)
stop_nbd

measure restore_file "$runs" "$data_bytes" nbdcopy_file "" reset_restore_file -- \
	"$bf" restore --repository "$file_repo" --backup "$incr_id" --target "file://$work/restored.raw" --json
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

log "checking the restored disk against the image"
qemu-img convert -f qcow2 -O raw "$img" "$work/expected.raw"
want=$(sha256sum <"$work/expected.raw" | cut -d' ' -f1)
got=$(sha256sum <"$work/restored.raw" | cut -d' ' -f1)
rm -f "$work/expected.raw" "$work/restored.raw"
restore_ok=PASS
[ "$want" = "$got" ] || restore_ok=FAIL

# --- report ------------------------------------------------------------------------

file_stored=$(du -sb "$work/repo" | cut -f1)
{
	echo "full_id=$full_id"
	echo "incr_id=$incr_id"
	for r in full_file full_s3 incr_file; do
		for f in bytes_read bytes_written bytes_deduplicated bytes_reused bytes_zero; do
			echo "$r.$f=$(json_field "$work/$r.out" ".stats.$f")"
		done
	done
	echo "restore_file.bytes_written=$(json_field "$work/restore_file.out" .bytes_written)"
	echo "restore_file.bytes_zero=$(json_field "$work/restore_file.out" .bytes_zero)"
} >"$work/stats.txt"

python3 - "$results" "$work/stats.txt" "$mode" "$disk_size" "$data_bytes" "$n_writes" \
	"$file_stored" "$s3_stored" "$want" "$got" "$bar_ratio" "$bar_rss_mib" "$runs" \
	"$(nproc)" "$load_before" "$load_after" <<'PY'
import sys

(results, stats_path, mode, disk_size, data_bytes, n_writes, file_stored, s3_stored,
 want, got, bar_ratio, bar_rss, runs, ncpu, load_before, load_after) = sys.argv[1:]
disk_size, data_bytes, n_writes, runs = int(disk_size), int(data_bytes), int(n_writes), int(runs)
bar_ratio, bar_rss = float(bar_ratio), float(bar_rss)
MiB = 1 << 20

stats = dict(l.strip().split("=", 1) for l in open(stats_path) if "=" in l)
all_runs, order = {}, []
for line in open(results):
    name, wall, rss, cpu, server, nbytes, base = line.rstrip("\n").split("\t")
    if name not in all_runs:
        all_runs[name] = []
        order.append(name)
    all_runs[name].append(dict(wall=float(wall), rss=int(rss) / 1024, cpu=float(cpu),
                               server=float(server), bytes=int(nbytes), base=base))
rows = {}
for name, rs in all_runs.items():
    best = dict(min(rs, key=lambda r: r["wall"]))  # the fastest run's figures...
    best["rss"] = max(r["rss"] for r in rs)        # ...but the highest peak RSS of all
    best["walls"] = sorted(r["wall"] for r in rs)
    rows[name] = best
rows["incr_file"]["bytes"] = int(stats["incr_file.bytes_read"])

labels = {
    "nbdcopy_null": "nbdcopy SRC null: (read baseline)",
    "nbdcopy_file": "nbdcopy --flush SRC FILE (restore baseline)",
    "full_file": "blockferry full backup -> file://",
    "full_s3": "blockferry full backup -> s3:// (versitygw)",
    "incr_file": "blockferry incremental (1% rewritten) -> file://",
    "restore_file": "blockferry restore of the incremental -> raw file",
}

print()
print(f"blockferry benchmark, {mode} mode: {disk_size // MiB} MiB qcow2 holding {data_bytes // MiB} MiB "
      "of data (half random, half text), exported by qemu-nbd -r -e 4 over a unix socket; "
      f"{ncpu} CPUs, load average {load_before} before the runs, {load_after} after.")
print("One unmeasured nbdcopy read warmed the page cache first: every reader is served from memory.")
print(f"Fastest of {runs} runs (the incremental: 1 run); peak RSS: the highest of all runs.")
print()
print("| what | wall s | MiB/s (disk bytes / wall) | peak RSS MiB | vs nbdcopy | CPU s (client user+sys) | CPU s (servers) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name in order:
    r = rows[name]
    mibs = r["bytes"] / MiB / r["wall"] if r["wall"] > 0 else float("inf")
    base = r["base"]
    vs = f"{r['wall'] / rows[base]['wall']:.2f}x" if base else "-"
    print(f"| {labels.get(name, name)} | {r['wall']:.2f} | {mibs:.0f} | {r['rss']:.0f} | {vs} "
          f"| {r['cpu']:.2f} | {r['server']:.2f} |")
print()
print(f"- disk bytes: the {data_bytes // MiB} MiB the export reports as data; for the incremental the "
      f"{rows['incr_file']['bytes'] // MiB} MiB it read, the 4 MiB chunks that its {n_writes} scattered "
      "64 KiB writes touched.")
print("- vs nbdcopy: wall time over that of nbdcopy SRC null: for backups, of nbdcopy --flush SRC FILE "
      "for the restore.")
print("- CPU s (servers): qemu-nbd's CPU time during the run, plus versitygw's for the S3 backup.")
if runs > 1:
    print("- wall s of every run: " + "; ".join(
        f"{n} " + " ".join(f"{w:.2f}" for w in rows[n]["walls"]) for n in order))
print()


def fmt(name):
    return (f"read {int(stats[name + '.bytes_read']) / MiB:.1f} MiB, "
            f"written {int(stats[name + '.bytes_written']) / MiB:.1f} MiB, "
            f"deduplicated {int(stats[name + '.bytes_deduplicated']) / MiB:.1f} MiB, "
            f"reused {int(stats[name + '.bytes_reused']) / MiB:.1f} MiB, "
            f"zero {int(stats[name + '.bytes_zero']) / MiB:.1f} MiB")


print("Backup stats (--json):")
print(f"- full -> file://: {fmt('full_file')}")
print(f"- full -> s3://:   {fmt('full_s3')} (bucket: {int(s3_stored) / MiB:.1f} MiB on disk)")
print(f"- incremental:     {fmt('incr_file')} (repository after full + incremental: "
      f"{int(file_stored) / MiB:.1f} MiB on disk)")
print(f"- restore:         written {int(stats['restore_file.bytes_written']) / MiB:.1f} MiB, "
      f"zero {int(stats['restore_file.bytes_zero']) / MiB:.1f} MiB")
print()

ratio = rows["full_file"]["wall"] / rows["nbdcopy_null"]["wall"]
print(f"full backup within {bar_ratio:g}x of nbdcopy: {'PASS' if ratio <= bar_ratio else 'FAIL'} "
      f"({ratio:.2f}x; file:// repository vs nbdcopy SRC null:; "
      f"S3: {rows['full_s3']['wall'] / rows['nbdcopy_null']['wall']:.2f}x)")
bf_rows = [n for n in order if not n.startswith("nbdcopy")]
worst = max(bf_rows, key=lambda n: rows[n]["rss"])
peak = rows[worst]["rss"]
print(f"peak RSS under {bar_rss:g} MiB: {'PASS' if peak < bar_rss else 'FAIL'} ({peak:.0f} MiB, {labels[worst]})")
print(f"restored incremental matches the image (sha256): {'PASS' if want == got else 'FAIL'} ({got[:16]})")
PY

[ "$restore_ok" = PASS ] || die "the restored disk differs from the image (sha256 $got, want $want)"
