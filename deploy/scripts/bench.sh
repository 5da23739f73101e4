#!/usr/bin/env bash
# Benchmarks blockferry against nbdcopy on qcow2 images exported by qemu-nbd.
#
#   bench.sh                 4 GiB standard image holding 2 GiB of data, and the 6 GiB
#                            mixed image holding 2.75 GiB (takes several minutes)
#   BENCH_QUICK=1 bench.sh   both images 8 times smaller
#
# The standard image: 8 regions, alternately random and text, with holes between.
# Measures wall time and peak RSS (GNU time) of:
#   nbdcopy SRC null:             read baseline
#   nbdcopy --flush SRC FILE      restore baseline (blockferry's restore fsyncs too)
#   full backup to a file:// repository
#   full backup to S3 (versitygw on loopback, fresh bucket)
#   incremental (dirty bitmap b1) after 1% of the disk is rewritten in scattered
#   64 KiB writes of random bytes, to the file:// repository
#   the same incremental to the S3 bucket (parent: the last full backup there),
#   then verified chunk by chunk against the disk (exit 1 if it differs)
#   restore of that incremental from the file:// repository to a raw file, whose
#   sha256 must equal that of the image after the writes (exit 1 otherwise)
#   restic 0.14 (Debian's package, installed when missing; BENCH_RESTIC=0 skips it)
#   to a fresh bucket on the same versitygw: `nbdcopy SRC - | restic backup --stdin`
#   once for the full, once more after the 1% rewrite for restic's incremental
#   (restic deduplicates against the chunks it stored; it reads the whole disk)
#   cost growth: the incremental of the same changed bytes on a sparse disk of the
#   image's size and on one 4 times larger
#   a worker with --jobs 4 running 4 full backups at once, with the default
#   --memory-limit and with 128MiB: wall time and the worker's peak RSS; and the
#   same 4 backups one after the other in a worker with the default limit
# The mixed image (issue 14's shape): 1 GiB random, 1 GiB text, 512 MiB that repeat
# the start of the random region (4 MiB aligned: deduplicated), 256 MiB of written
# zeroes (allocated in the qcow2, not holes), in a 6 GiB disk. Measures the
# baselines, the full backups to file:// and S3, restic's full, restores of the full
# backup from both repositories to a raw file, and a restore to a writable NBD
# export (qemu-nbd -e 4) beside nbdcopy --flush FILE NBD into the same kind of
# export; every restore's sha256 must equal the image's (exit 1 otherwise).
# BENCH_MINIO=1 adds MinIO (single drive, on loopback; restarted empty before each
# run) beside versitygw: the full backups of both images to it, restic's full to it
# (unless BENCH_RESTIC=0), and on the mixed image the restore of the full backup
# from it. It builds minio into .cache/bin when it is not on PATH (go install
# github.com/minio/minio@latest: about 15 minutes on 2 cores).
# Prints a markdown table per image and a table of the bars issues #2, #4 and #14 set.
#
# Every run but the incrementals, restic's and the worker's is repeated BENCH_RUNS
# times (default 3; a backup goes to a fresh repository or bucket each time) and the
# fastest is reported, with the highest peak RSS of all: on a shared machine the
# minimum is the figure least disturbed by other load.
#
# Environment: BENCH_QUICK=1, BENCH_RUNS, BENCH_RESTIC=0, BENCH_MINIO=1, BENCH_IMAGES (default
# "standard mixed"), BLOCKFERRY (binary; default bin/blockferry, built when missing),
# BENCH_KEEP=1 keeps the work directory, TMPDIR (where the work directory goes: it
# needs about 5x the data size free). `make bench` builds the binary first.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH="$root/.cache/bin:$PATH"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

MiB=$((1 << 20))
if [ "${BENCH_QUICK:-0}" = 1 ]; then
	mode=quick
	scale=8 # the mixed image is 8 times smaller
	disk_size=$((512 * MiB))
	data_size=$((256 * MiB))
	stage_sample=$((4 * MiB)) # per region, for the stage costs: 32 MiB in all
else
	mode=full
	scale=1
	disk_size=$((4096 * MiB))
	data_size=$((2048 * MiB))
	stage_sample=$((16 * MiB)) # 128 MiB in all
fi
regions=8 # data regions, alternately random and text, spread over the disk
region_size=$((data_size / regions))
region_stride=$((disk_size / regions))
runs=${BENCH_RUNS:-3}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_RUNS=$runs is not a positive number" >&2; exit 2; }
bench_restic=${BENCH_RESTIC:-1}
bench_minio=${BENCH_MINIO:-0}
images=${BENCH_IMAGES:-standard mixed}
for i in $images; do
	[[ "$i" =~ ^(standard|mixed)$ ]] || { echo "bench: BENCH_IMAGES: unknown image $i (standard, mixed)" >&2; exit 2; }
done
selected() { [[ " $images " == *" $1 "* ]]; } # image name: whether BENCH_IMAGES names it

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
if [ "$bench_restic" != 0 ] && ! command -v restic >/dev/null; then
	log "installing restic"
	"${sudo_cmd[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends restic >/dev/null
fi
[ "$bench_restic" = 0 ] || command -v restic >/dev/null || die "restic is not installed (BENCH_RESTIC=0 skips it)"

for t in qemu-img qemu-io qemu-nbd nbdcopy nbdinfo versitygw curl python3 sha256sum base64 seq paste; do
	command -v "$t" >/dev/null || die "$t is not installed (make setup installs the test tools)"
done

bf=${BLOCKFERRY:-$root/bin/blockferry}
if [ ! -x "$bf" ]; then
	log "building $bf"
	(cd "$root" && go build -o "$bf" ./cmd/blockferry)
fi

if [ "$bench_minio" = 1 ] && ! command -v minio >/dev/null; then
	log "building MinIO into $root/.cache/bin (go install github.com/minio/minio@latest: about 15 minutes on 2 cores)"
	# GOFLAGS cleared: the Makefile's -mod=readonly is for this module, not MinIO's.
	(cd "$root" && GOFLAGS="" GOBIN="$root/.cache/bin" go install github.com/minio/minio@latest) || die "building MinIO failed"
fi

# --- work directory and cleanup ----------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/blockferry-bench.XXXXXX")
nbd_pid=""
target_pid="" # the writable export restores write to
s3_pid=""
minio_pid=""
worker_pid=""

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
	stop_pid "$worker_pid"
	stop_pid "$nbd_pid"
	stop_pid "$target_pid"
	stop_pid "$s3_pid"
	stop_pid "$minio_pid"
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

# BenchmarkStageCost (sinks/repository) as a test binary, for the stage costs.
stage_test=$work/stagecost.test
if selected standard; then
	log "building the stage-cost benchmark"
	(cd "$root" && go test -c -o "$stage_test" ./sinks/repository) || die "go test -c ./sinks/repository failed"
fi

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

# write_region RAW OFFSET SIZE random|text: SIZE bytes of that kind at OFFSET of RAW.
write_region() {
	local raw=$1 off=$2 size=$3 kind=$4
	if [ "$kind" = random ]; then
		head -c "$size" /dev/urandom
	else
		gen_text "$size"
	fi | dd of="$raw" bs=4M seek="$off" oflag=seek_bytes iflag=fullblock conv=notrunc,sparse status=none
}

# raw_to_qcow2 RAW IMAGE: IMAGE holds RAW's data (its holes and zeroes left
# unallocated) and the persistent dirty bitmap b1; RAW is removed.
raw_to_qcow2() {
	qemu-img convert -f raw -O qcow2 "$1" "$2"
	rm -f "$1"
	qemu-img bitmap --add "$2" b1
}

stage_data=$work/stage-sample.raw
standard_image() {
	log "$mode mode: building a $((disk_size / MiB)) MiB qcow2 holding $((data_size / MiB)) MiB of data in $regions regions"
	local raw=$work/disk.raw i off kind
	truncate -s "$disk_size" "$raw"
	for ((i = 0; i < regions; i++)); do
		off=$((i * region_stride + (i % 3) * region_stride / 4)) # irregular gaps
		kind=text
		((i % 2 == 1)) || kind=random
		write_region "$raw" "$off" "$region_size" "$kind"
		# The stage-cost sample: the start of every region, so random and text in the
		# image's proportions.
		dd if="$raw" bs=1M skip="$off" count=$((stage_sample / MiB)) iflag=skip_bytes status=none >>"$stage_data"
	done
	raw_to_qcow2 "$raw" "$img"
}

# The mixed image, issue 14's shape (sizes of the full mode; quick mode divides them
# by 8): 1 GiB random at 0, 1 GiB text at 1.25 GiB, at 2.5 GiB the first 512 MiB of
# the random region again (4 MiB aligned on both sides, so its chunks are the same),
# at 3.25 GiB 256 MiB of zeroes written as data, holes up to 6 GiB.
GiB_s=$((1024 * MiB / scale))
mixed_disk_size=$((6 * GiB_s))
mixed_img=$work/mixed.qcow2
mixed_image() {
	local raw=$work/mixed.raw zero_off=$((13 * GiB_s / 4)) zero_size=$((GiB_s / 4))
	log "$mode mode: building the mixed image, $((mixed_disk_size / MiB)) MiB"
	truncate -s "$mixed_disk_size" "$raw"
	write_region "$raw" 0 "$GiB_s" random
	write_region "$raw" $((5 * GiB_s / 4)) "$GiB_s" text
	dd if="$raw" of="$raw" bs=4M skip=0 seek=$((5 * GiB_s / 2)) count=$((GiB_s / 2)) \
		iflag=count_bytes oflag=seek_bytes conv=notrunc status=none
	raw_to_qcow2 "$raw" "$mixed_img"
	# Zeroes a guest wrote: data clusters (qemu-io does not detect zeroes), which
	# the server reports as data and a backup has to read.
	qemu-io -f qcow2 -c "write -q -P 0 $zero_off $zero_size" "$mixed_img" >/dev/null
}

# Bytes holding data, as the server will report them (what nbdcopy copies).
allocated_bytes() {
	nbdinfo --map "$src" | awk '$3 == 0 { n += $2 } END { printf "%.0f\n", n }' # mawk clamps %d at 2^31-1
}

# start_qemu_nbd SOCKET PID_VARIABLE QEMU_NBD_ARGS...: serves on SOCKET, the pid in
# the variable, and waits until the export answers.
start_qemu_nbd() {
	local socket=$1 var=$2 i
	shift 2
	rm -f "$socket"
	# Its messages go to a log: clients that give up a connection at the client
	# limit (the worker's jobs) make it complain of broken pipes.
	qemu-nbd "$@" --socket="$socket" 2>>"$work/qemu-nbd.log" &
	printf -v "$var" '%s' "$!"
	for i in $(seq 100); do
		[ -S "$socket" ] && nbdinfo --size "nbd+unix:///?socket=$socket" >/dev/null 2>&1 && return 0
		kill -0 "${!var}" 2>/dev/null || die "qemu-nbd exited"
		sleep 0.1
	done
	die "qemu-nbd did not start"
}

start_nbd() { # [image]: the bench image by default
	# Read-only, 4 clients (nbdcopy and blockferry both use up to 4 connections),
	# persistent so that it outlives each client, the host page cache left on
	# (--cache=writeback, the default): after the warm-up read every reader is served
	# from memory, so no reader pays for cold disk reads the others do not.
	start_qemu_nbd "$sock" nbd_pid -r -f qcow2 -e 4 -t -B b1 --cache=writeback --aio=threads "${1:-$img}"
}

stop_nbd() {
	stop_pid "$nbd_pid"
	nbd_pid=""
}

# The writable export restores go to: a raw file of the mixed image's size, served
# by qemu-nbd to 4 clients (on a writable export shared by several, qemu-nbd 7.2
# advertises multi-conn, so blockferry and nbdcopy both open 4 connections), the
# page cache on as for the source. Each run gets a fresh, empty file.
target_raw=$work/target.raw
target_sock=$work/target.sock
target_uri="nbd+unix:///?socket=$target_sock"
reset_nbd_target() {
	stop_nbd_target
	rm -f "$target_raw"
	truncate -s "$mixed_disk_size" "$target_raw"
	start_qemu_nbd "$target_sock" target_pid -f raw -e 4 -t --cache=writeback --aio=threads "$target_raw"
}
stop_nbd_target() {
	stop_pid "$target_pid"
	target_pid=""
}

# --- measuring ---------------------------------------------------------------------

# CPU seconds (user+sys) a process has used so far; 0 when there is none.
cpu_of() {
	local pid=$1
	[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || { echo 0; return; }
	# Fields 14 and 15 (utime, stime) in clock ticks; the command name may hold spaces.
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$pid/stat"
}

# name \t wall \t rss_kib \t user+sys \t servers' cpu \t bytes \t baseline \t SERVER's cpu alone
results=$work/results.tsv
: >"$results"

# measure NAME RUNS BYTES BASELINE SERVER RESET -- CMD...: runs CMD RUNS times
# under GNU time, calling the function RESET (or nothing when "") before each run;
# the last run's stdout is left in $work/NAME.out. BYTES is the disk bytes a run
# moves (for MiB/s); BASELINE names the row it is compared with; SERVER (or "") is
# the variable holding the pid of the server (versitygw, MinIO, the writable
# qemu-nbd) whose CPU time during the run is added to the servers' column (which
# has the source qemu-nbd's) and recorded alone too; the pid is read after RESET,
# which may start the server.
measure() {
	local name=$1 n=$2 bytes=$3 baseline=$4 svar=$5 reset=$6
	shift 7
	local tf=$work/$name.time nbd0 nbd1 s0 s1 server i spid
	for ((i = 1; i <= n; i++)); do
		[ -z "$reset" ] || "$reset"
		spid=""
		[ -z "$svar" ] || spid=${!svar}
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
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$wall" "$rss" \
			"$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" "$server" "$bytes" "$baseline" \
			"$(awk -v c="$s0" -v d="$s1" 'BEGIN { printf "%.2f", d - c }')" >>"$results"
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

# --- S3 servers --------------------------------------------------------------------

s3_key=blockferry-bench
s3_secret=blockferry-bench-secret

free_port() { # a loopback TCP port nothing listens on now
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

make_bucket() { # name [endpoint]: on versitygw unless an endpoint is given
	# versitygw wants x-amz-content-sha256 (here of the empty body), which curl then
	# signs along with the rest; MinIO takes the same request.
	curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$s3_key:$s3_secret" \
		-H "x-amz-content-sha256: $(printf '' | sha256sum | cut -d' ' -f1)" \
		-X PUT "${2:-$s3_endpoint}/$1" -o /dev/null || die "creating the bucket $1 failed"
}

# wait_for_server NAME PID_VARIABLE LOG CMD...: waits until CMD succeeds, failing
# if the server NAME (its pid in the variable, its messages in LOG) exits or is
# still silent after 30 s.
wait_for_server() {
	local name=$1 var=$2 logf=$3 i
	shift 3
	for i in $(seq 300); do
		"$@" && return 0
		kill -0 "${!var}" 2>/dev/null || die "$name exited: $(cat "$logf")"
		sleep 0.1
	done
	die "$name did not answer"
}

versitygw_answers() { curl -s -o /dev/null -D - "$s3_endpoint/" 2>/dev/null | grep -qi '^server: *versitygw'; }

start_s3() {
	local dir=$work/s3 port
	mkdir -p "$dir"
	port=$(free_port)
	s3_endpoint=http://127.0.0.1:$port
	# --keep-alive as the tests run it: otherwise every request opens a connection.
	versitygw --access "$s3_key" --secret "$s3_secret" --port "127.0.0.1:$port" \
		--keep-alive --quiet posix "$dir" >"$work/versitygw.log" 2>&1 &
	s3_pid=$!
	wait_for_server versitygw s3_pid "$work/versitygw.log" versitygw_answers
	make_bucket bench
}

minio_answers() { curl -sf -o /dev/null "$minio_endpoint/minio/health/live"; }

# start_minio: a fresh MinIO (any running one stopped, its drive emptied), single
# drive in $work/minio, with the bucket bench. It is the reset of the runs to it:
# a restart is the sure way to an empty bucket, and measure reads the pid after.
# The ports, chosen at the first start, stay: the runs' command lines hold them.
minio_endpoint=""
minio_console=""
start_minio() {
	local dir=$work/minio
	stop_minio
	mkdir -p "$dir"
	[ -n "$minio_endpoint" ] || minio_endpoint=http://127.0.0.1:$(free_port)
	[ -n "$minio_console" ] || minio_console=127.0.0.1:$(free_port)
	MINIO_ROOT_USER=$s3_key MINIO_ROOT_PASSWORD=$s3_secret minio server "$dir" \
		--address "${minio_endpoint#http://}" --console-address "$minio_console" --quiet >"$work/minio.log" 2>&1 &
	minio_pid=$!
	wait_for_server MinIO minio_pid "$work/minio.log" minio_answers
	make_bucket bench "$minio_endpoint"
}

stop_minio() {
	stop_pid "$minio_pid"
	minio_pid=""
	rm -rf "$work/minio"
}

# The SDK's default credential chain, shielded from the caller's own AWS setup.
export AWS_ACCESS_KEY_ID=$s3_key AWS_SECRET_ACCESS_KEY=$s3_secret AWS_REGION=us-east-1
export AWS_SESSION_TOKEN="" AWS_PROFILE="" AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/nonexistent/blockferry-bench/aws-config
export AWS_SHARED_CREDENTIALS_FILE=/nonexistent/blockferry-bench/aws-credentials
unset AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 BLOCKFERRY_REPOSITORY BLOCKFERRY_KEY BLOCKFERRY_KEY_FILE
unset RESTIC_REPOSITORY_FILE RESTIC_PASSWORD_FILE RESTIC_PASSWORD_COMMAND RESTIC_KEY_HINT RESTIC_COMPRESSION RESTIC_PACK_SIZE
# restic's cache in the work directory: the incremental gets the one the full left.
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache

# --- shared runs -------------------------------------------------------------------

stats=$work/stats.txt # name=value lines for the report
: >"$stats"
record() { printf '%s=%s\n' "$1" "$2" >>"$stats"; } # name value
sha_failed=()                                         # restores whose sha256 differs from the image's

reset_nbdcopy_file() { rm -f "$work/nbdcopy.raw"; }
reset_full_file() { rm -rf "$work/repo"; }
# versitygw's posix backend keeps a bucket's objects as files under DIR/BUCKET.
reset_full_s3() { find "$work/s3/bench" -mindepth 1 -delete; }
reset_restore_file() { rm -f "$work/restored.raw"; }

stop_s3() { # both S3 servers
	stop_pid "$s3_pid"
	s3_pid=""
	stop_minio
	rm -rf "$work/s3" "$work/restic-cache"
}

# record_backup_stats NAME: the stats of the backup NAME.out holds (its --json).
record_backup_stats() {
	local f
	for f in bytes_read bytes_written bytes_deduplicated bytes_reused bytes_zero; do
		record "$1.$f" "$(json_field "$work/$1.out" ".stats.$f")"
	done
}

# record_restic_stats NAME: the summary of the restic backup NAME.out holds.
record_restic_stats() {
	local f
	# --json --quiet: the summary is the one line restic prints.
	grep '"message_type":"summary"' "$work/$1.out" | tail -n 1 >"$work/$1.summary"
	for f in total_bytes_processed data_added snapshot_id; do
		record "$1.$f" "$(json_field "$work/$1.summary" ".$f")"
	done
}

# measure_baselines PREFIX BYTES: one unmeasured nbdcopy read of the export to put
# it in the page cache, then nbdcopy SRC null: and nbdcopy --flush SRC FILE.
measure_baselines() {
	local p=$1 bytes=$2
	log "warm-up: nbdcopy $src null: (not measured)"
	nbdcopy "$src" null:
	record "${p}load_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
	log "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
	measure "${p}nbdcopy_null" "$runs" "$bytes" "" "" "" -- nbdcopy "$src" null:
	measure "${p}nbdcopy_file" "$runs" "$bytes" "" "" reset_nbdcopy_file -- nbdcopy --flush "$src" "$work/nbdcopy.raw"
	reset_nbdcopy_file
}

# measure_full NAME BYTES BASELINE SERVER RESET REPOSITORY: BENCH_RUNS full backups
# of the export to REPOSITORY (see measure for the rest); the last run's stats are
# recorded and its backup's id left in backup_id.
measure_full() {
	local name=$1
	measure "$name" "$runs" "$2" "$3" "$4" "$5" -- \
		"$bf" backup --source "$src" --disk "$disk" --repository "$6" --json
	backup_id=$(json_field "$work/$name.out" .backup)
	record_backup_stats "$name"
}

# measure_full_backups PREFIX BYTES: full backups of the export to a file://
# repository, to S3 on versitygw (started here) and with BENCH_MINIO=1 to MinIO
# (started here too), BENCH_RUNS times each. The last run's repository and buckets
# stay, their backups in full_id, s3_full_id and minio_full_id.
measure_full_backups() {
	local p=$1 bytes=$2
	measure_full "${p}full_file" "$bytes" "${p}nbdcopy_null" "" reset_full_file "$file_repo"
	full_id=$backup_id
	start_s3
	s3_repo="s3://bench/bf?endpoint=$s3_endpoint&region=us-east-1"
	measure_full "${p}full_s3" "$bytes" "${p}nbdcopy_null" s3_pid reset_full_s3 "$s3_repo"
	s3_full_id=$backup_id
	record "${p}s3_stored" "$(du -sb "$work/s3/bench" | cut -f1)"
	[ "$bench_minio" = 1 ] || return 0
	start_minio # for its endpoint; every run restarts it
	minio_repo="s3://bench/bf?endpoint=$minio_endpoint&region=us-east-1"
	measure_full "${p}full_minio" "$bytes" "${p}nbdcopy_null" minio_pid start_minio "$minio_repo"
	minio_full_id=$backup_id
	record "${p}minio_stored" "$(du -sb "$work/minio/bench" | cut -f1)"
}

# The whole disk through a pipe (nbdcopy writes its holes as zeros): GNU time around
# bash reports the pipeline's wall time, the CPU of both processes, and the peak RSS
# of its largest process (restic's).
restic_cmd=(bash -c 'set -o pipefail; nbdcopy "$1" - | restic backup --stdin --stdin-filename disk.raw --json --quiet' restic-backup "$src")

# restic_full_to NAME ENDPOINT SERVER BUCKET DISK_SIZE BASELINE: restic's full
# backup of the export to the fresh bucket BUCKET of the S3 server at ENDPOINT
# (SERVER: the variable holding its pid), measured once.
restic_full_to() {
	local name=$1 repository=s3:$2/$4
	make_bucket "$4" "$2"
	log "restic init ($(restic version | cut -d' ' -f1-2); not measured)"
	RESTIC_REPOSITORY=$repository restic init >"$work/restic-init.log" 2>&1 ||
		{ cat "$work/restic-init.log" >&2; die "restic init failed"; }
	measure "$name" 1 "$5" "$6" "$3" "" -- env RESTIC_REPOSITORY="$repository" "${restic_cmd[@]}"
	record_restic_stats "$name"
}

# measure_restic_full PREFIX DISK_SIZE: restic's full backup of the export to a
# fresh bucket on the running versitygw, unless BENCH_RESTIC=0, then with
# BENCH_MINIO=1 to one on MinIO; versitygw's repository stays for an incremental.
measure_restic_full() {
	local p=$1 bucket=restic${1%.}
	[ "$bench_restic" != 0 ] || return 0
	restic_full_to "${p}restic_full" "$s3_endpoint" s3_pid "$bucket" "$2" "${p}nbdcopy_null"
	export RESTIC_REPOSITORY=s3:$s3_endpoint/$bucket
	record restic_version "$(restic version | cut -d' ' -f2)"
	[ "$bench_minio" != 1 ] ||
		restic_full_to "${p}restic_full_minio" "$minio_endpoint" minio_pid "$bucket" "$2" "${p}nbdcopy_null"
}

# image_sha256 IMAGE RAW: the sha256 of IMAGE's disk, converted to the raw file RAW
# (sparse), which stays.
image_sha256() {
	qemu-img convert -f qcow2 -O raw "$1" "$2"
	sha256sum <"$2" | cut -d' ' -f1
}

# check_restored NAME FILE WANT: records FILE's sha256 beside WANT, the image's; a
# mismatch fails the bench once the report is printed.
check_restored() {
	local got
	log "checking the disk $1 restored against the image"
	got=$(sha256sum <"$2" | cut -d' ' -f1)
	record "$1.sha256" "$got"
	record "$1.sha256_want" "$3"
	[ "$got" = "$3" ] || sha_failed+=("$1")
}

# measure_restore NAME BASELINE SERVER REPOSITORY BACKUP TARGET RESET: restores
# BACKUP to TARGET BENCH_RUNS times, RESET before each; its MiB/s counts the data of
# the image being measured (data_bytes).
measure_restore() {
	local name=$1
	measure "$name" "$runs" "$data_bytes" "$2" "$3" "$7" -- \
		"$bf" restore --repository "$4" --backup "$5" --target "$6" --json
	record "$name.bytes_written" "$(json_field "$work/$name.out" .bytes_written)"
	record "$name.bytes_zero" "$(json_field "$work/$name.out" .bytes_zero)"
}

# --- the standard image --------------------------------------------------------------

# Each stage of a backup alone, on the sample of every region: CPU per GiB (this
# process's user+sys, plus versitygw's for the PUT), from which the report derives
# the bound a perfect pipeline reaches on this machine's cores.
stage_costs() {
	make_bucket stages
	log "stage costs: BenchmarkStageCost, $runs runs over a $((regions * stage_sample / MiB)) MiB sample"
	mkdir -p "$work/stage-files"
	if ! BLOCKFERRY_STAGE_DATA=$stage_data BLOCKFERRY_STAGE_DIR=$work/stage-files \
		BLOCKFERRY_STAGE_S3="s3://stages/sc?endpoint=$s3_endpoint&region=us-east-1" BLOCKFERRY_STAGE_S3_PID=$s3_pid \
		"$stage_test" -test.run '^$' -test.bench StageCost -test.benchtime 1x -test.count "$runs" >"$work/stages.txt" 2>&1; then
		cat "$work/stages.txt" >&2
		die "BenchmarkStageCost failed"
	fi
	rm -rf "$work/stage-files" "$work/s3/stages" "$stage_data"
}

# scatter_writes IMAGE SIZE N SEED: N writes of 64 KiB of random bytes at distinct
# pseudo-random 64 KiB-aligned offsets of IMAGE (fixed seed: every run writes the
# same places and bytes), with qemu-io, which keeps the image's persistent bitmap
# b1 up to date. Random bytes, as a guest's new data often is, so that nothing of
# it compresses or deduplicates.
scatter_writes() {
	local image=$1 size=$2 n=$3 seed=$4 dir=$work/writes args=() off file
	rm -rf "$dir"
	mkdir -p "$dir"
	while read -r off file; do
		args+=(-c "write -q -s $file $off 64k")
	done < <(python3 - "$size" "$n" "$seed" "$dir" <<'PY'
import random, sys
size, n, seed, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
for i, slot in enumerate(sorted(rng.sample(range(size // 65536), n))):
    path = f"{d}/{i}"
    with open(path, "wb") as f:
        f.write(rng.randbytes(65536))
    print(slot * 65536, path)
PY
)
	qemu-io -f qcow2 "${args[@]}" "$image" >/dev/null
	rm -rf "$dir"
}

# 1% of the disk rewritten in scattered 64 KiB writes, then the incrementals to both
# repositories (parents: the full backups they hold) and restic's second backup.
standard_incrementals() {
	stop_nbd
	n_writes=$((disk_size / 100 / (64 << 10)))
	record n_writes "$n_writes"
	log "rewriting 1% of the disk: $n_writes scattered 64 KiB writes of random bytes"
	scatter_writes "$img" "$disk_size" "$n_writes" 20240601
	# The 4 MiB chunks they touch: what an incremental that reads whole chunks reads.
	record dirty_chunks "$(python3 - "$disk_size" "$n_writes" 20240601 <<'PY'
import random, sys
size, n, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
print(len({slot * 65536 // (4 << 20) for slot in rng.sample(range(size // 65536), n)}))
PY
)"
	start_nbd
	nbdcopy "$src" null: # the rewritten clusters into the page cache too

	# The incremental reads the blocks the bitmap marks; its MiB/s counts those bytes
	# (bytes_read of its stats, filled in by the report).
	# It runs once: a second run against the same repository would find its chunks stored.
	measure incr_file 1 0 "" "" "" -- \
		"$bf" backup --source "$src" --bitmap b1 --parent "$full_id" --disk "$disk" --repository "$file_repo" --json
	incr_id=$(json_field "$work/incr_file.out" .backup)
	record_backup_stats incr_file
	# The same incremental to S3, its parent the full backup left in the bucket (the
	# export is read-only: b1 still marks the same clusters).
	measure incr_s3 1 0 "" s3_pid "" -- \
		"$bf" backup --source "$src" --bitmap b1 --parent "$s3_full_id" --disk "$disk" --repository "$s3_repo" --json
	record_backup_stats incr_s3
	log "verifying the S3 incremental chunk by chunk against the disk (not measured)"
	"$bf" verify --repository "$s3_repo" --backup "$(json_field "$work/incr_s3.out" .backup)" --source "$src" >"$work/verify_s3.out" 2>&1 ||
		{ cat "$work/verify_s3.out" >&2; die "the S3 incremental differs from the disk"; }
	# restic's incremental, on the same image state: the whole disk again, deduplicated.
	if [ "$bench_restic" != 0 ]; then
		measure restic_incr 1 "$disk_size" "" s3_pid "" -- "${restic_cmd[@]}"
		record_restic_stats restic_incr
		record restic_stored "$(du -sb "$work/s3/restic" | cut -f1)"
	fi
	stop_s3
	stop_nbd
}

standard_runs() {
	start_nbd
	data_bytes=$(allocated_bytes)
	record data_bytes "$data_bytes"
	log "the export reports $((data_bytes / MiB)) MiB of data"
	measure_baselines "" "$data_bytes"
	measure_full_backups "" "$data_bytes"
	stage_costs
	measure_restic_full "" "$disk_size"
	stop_minio # idle from here on: its background work stays out of the later runs
	standard_incrementals
	measure_restore restore_file nbdcopy_file "" "$file_repo" "$incr_id" "file://$work/restored.raw" reset_restore_file
	record load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
	record file_stored "$(du -sb "$work/repo" | cut -f1)"
	check_restored restore_file "$work/restored.raw" "$(image_sha256 "$img" "$work/expected.raw")"
	rm -rf "$work/expected.raw" "$work/restored.raw" "$work/repo"
}

# --- cost growth: the same changed bytes on a small and a 4x larger sparse disk -----

# Each disk holds only what n_writes scattered 64 KiB writes put there; after a
# full backup, n_writes more are scattered over it, and the incremental measured.
growth_runs() {
	local g gsize gimg
	record growth_small.size "$disk_size"
	record growth_large.size $((4 * disk_size))
	for g in small large; do
		gsize=$disk_size
		[ "$g" = small ] || gsize=$((4 * disk_size))
		gimg=$work/sparse-$g.qcow2
		log "cost growth: $((gsize / MiB)) MiB sparse disk"
		qemu-img create -q -f qcow2 "$gimg" "$gsize"
		scatter_writes "$gimg" "$gsize" "$n_writes" 7
		qemu-img bitmap --add "$gimg" b1
		start_nbd "$gimg"
		"$bf" backup --source "$src" --disk "sparse/$g" --repository "file://$work/growth-repo" --json >"$work/growth_full_$g.out" ||
			die "full backup of the $g sparse disk failed"
		stop_nbd
		scatter_writes "$gimg" "$gsize" "$n_writes" 8
		start_nbd "$gimg"
		nbdcopy "$src" null:
		measure "growth_$g" 1 0 "" "" "" -- "$bf" backup --source "$src" --bitmap b1 \
			--parent "$(json_field "$work/growth_full_$g.out" .backup)" --disk "sparse/$g" --repository "file://$work/growth-repo" --json
		record "growth_$g.bytes_read" "$(json_field "$work/growth_$g.out" .stats.bytes_read)"
		stop_nbd
		rm -f "$gimg"
	done
	rm -rf "$work/growth-repo"
}

# --- a worker running 4 jobs -----------------------------------------------------------

# A worker with --jobs 4 (embedded NATS) runs 4 full backups of the image, submitted
# as jobs, each to its own file:// repository (so that none finds another's chunks
# stored, as with four different disks): at once, with the default --memory-limit
# (128 MiB per job) and with 128 MiB for all four, and one after the other with the
# default. Its peak RSS must stay within the bound docs/PERFORMANCE.md states: the
# memory limit plus 192 MiB.
run_worker_jobs() { # name parallel|sequential [memory limit in MiB]
	local name=$1 how=$2 limit_mib=${3:-} port wdir=$work/worker-$1 i pids=() t0 t1 args=() rss
	port=$(free_port)
	[ -z "$limit_mib" ] || args=(--memory-limit "${limit_mib}MiB")
	for i in 1 2 3 4; do
		args+=(--named-repository "vd$i=file://$wdir/repository-vd$i")
	done
	mkdir -p "$wdir"
	"$bf" worker --jobs 4 "${args[@]}" --data-dir "$wdir" --listen "127.0.0.1:$port" \
		--repository "file://$wdir/repository" --log-level warn >"$wdir/worker.log" 2>&1 &
	worker_pid=$!
	# Ready once its streams and status bucket answer: a job it does not know. Its
	# embedded NATS wants the token it wrote to its data directory.
	for i in $(seq 100); do
		"$bf" status --nats-url "nats://127.0.0.1:$port" --nats-token-file "$wdir/nats.token" none 2>&1 | grep -q 'unknown job' && break
		kill -0 "$worker_pid" 2>/dev/null || die "the worker exited: $(cat "$wdir/worker.log")"
		sleep 0.2
	done
	log "running: 4 jobs in one worker, $how ($name)"
	t0=$(date +%s.%N)
	for i in 1 2 3 4; do
		"$bf" submit backup --nats-url "nats://127.0.0.1:$port" --nats-token-file "$wdir/nats.token" --repository "vd$i" \
			--disk "bench/vd$i" --source "$src" --wait >"$wdir/job$i.out" 2>&1 &
		pids+=($!)
		[ "$how" = parallel ] || { wait "$!" || die "a job of the worker failed: $(tail -n 3 "$wdir/job$i.out")"; pids=(); }
	done
	for i in "${pids[@]}"; do
		wait "$i" || die "a job of the worker failed: $(tail -n 3 "$wdir"/job*.out)"
	done
	t1=$(date +%s.%N)
	rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$worker_pid/status")
	stop_pid "$worker_pid"
	worker_pid=""
	printf '%s\t%s\t%s\t0\t0\t%s\t\t0\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" "$rss" "$((4 * data_bytes))" >>"$results"
	record "$name.limit_mib" "${limit_mib:-512}"
	rm -rf "$wdir"
}

worker_runs() {
	start_nbd
	nbdcopy "$src" null:
	run_worker_jobs worker4_default parallel ""
	run_worker_jobs worker4_128 parallel 128
	run_worker_jobs worker4_sequential sequential ""
	stop_nbd
}

# --- the mixed image ---------------------------------------------------------------

# Backups of the mixed image, restores of the full backup from both repositories to a
# raw file, and to the writable export beside nbdcopy FILE NBD; names prefixed mixed.
mixed_runs() {
	local p=mixed. want
	mixed_image
	start_nbd "$mixed_img"
	data_bytes=$(allocated_bytes)
	record mixed.data_bytes "$data_bytes"
	log "the mixed export reports $((data_bytes / MiB)) MiB of data"
	measure_baselines "$p" "$data_bytes"
	measure_full_backups "$p" "$data_bytes"
	measure_restic_full "$p" "$mixed_disk_size"
	stop_nbd
	want=$(image_sha256 "$mixed_img" "$work/expected.raw")
	reset_nbd_target
	nbdinfo --can multi-conn "$target_uri" && record mixed.target_multi_conn yes || record mixed.target_multi_conn no
	stop_nbd_target
	measure_restore "${p}restore_file" "${p}nbdcopy_file" "" "$file_repo" "$full_id" "file://$work/restored.raw" reset_restore_file
	check_restored "${p}restore_file" "$work/restored.raw" "$want"
	measure_restore "${p}restore_s3" "${p}nbdcopy_file" s3_pid "$s3_repo" "$s3_full_id" "file://$work/restored.raw" reset_restore_file
	check_restored "${p}restore_s3" "$work/restored.raw" "$want"
	if [ "$bench_minio" = 1 ]; then
		measure_restore "${p}restore_minio" "${p}nbdcopy_file" minio_pid "$minio_repo" "$minio_full_id" "file://$work/restored.raw" reset_restore_file
		check_restored "${p}restore_minio" "$work/restored.raw" "$want"
	fi
	reset_restore_file
	stop_s3
	# The image's raw file (sparse) to the writable export: nbdcopy's restore.
	measure "${p}nbdcopy_nbd" "$runs" "$data_bytes" "" target_pid reset_nbd_target -- \
		nbdcopy --flush "$work/expected.raw" "$target_uri"
	measure_restore "${p}restore_nbd" "${p}nbdcopy_nbd" target_pid "$file_repo" "$full_id" "$target_uri" reset_nbd_target
	stop_nbd_target # then its file holds all it was sent
	check_restored "${p}restore_nbd" "$target_raw" "$want"
	record mixed.load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
	rm -rf "$work/expected.raw" "$target_raw" "$mixed_img" "$work/repo"
}

# --- the runs ----------------------------------------------------------------------

if selected standard; then
	standard_image
	standard_runs
	growth_runs
	worker_runs
fi
if selected mixed; then
	mixed_runs
fi

# --- report ------------------------------------------------------------------------

python3 - "$results" "$stats" "$work/stages.txt" "$mode" "$disk_size" "$mixed_disk_size" "$runs" "$(nproc)" <<'PY'
import re
import sys

results, stats_path, stages_path, mode, disk_size, mixed_disk_size, runs, ncpu = sys.argv[1:]
disk_size, mixed_disk_size, runs = int(disk_size), int(mixed_disk_size), int(runs)
MiB = 1 << 20
GiB = 1 << 30

stats = dict(l.strip().split("=", 1) for l in open(stats_path) if "=" in l)
all_runs, order = {}, []
for line in open(results):
    name, wall, rss, cpu, server, nbytes, base, own = line.rstrip("\n").split("\t")
    if name not in all_runs:
        all_runs[name] = []
        order.append(name)
    all_runs[name].append(dict(wall=float(wall), rss=int(rss) / 1024, cpu=float(cpu),
                               server=float(server), bytes=int(nbytes), base=base, own=float(own)))
rows = {}
for name, rs in all_runs.items():
    best = dict(min(rs, key=lambda r: r["wall"]))  # the fastest run's figures...
    best["rss"] = max(r["rss"] for r in rs)        # ...but the highest peak RSS of all
    best["walls"] = sorted(r["wall"] for r in rs)
    rows[name] = best
restic_v = stats.get("restic_version", "0.14")
wall = lambda n: rows[n]["wall"]
bars = []  # (issue, what, passed, measured)


def bar(issue, what, passed, measured):
    bars.append((issue, what, passed, measured))


labels = {
    "nbdcopy_null": "nbdcopy SRC null: (read baseline)",
    "nbdcopy_file": "nbdcopy --flush SRC FILE (restore baseline)",
    "full_file": "blockferry full backup -> file://",
    "full_s3": "blockferry full backup -> s3:// (versitygw)",
    "full_minio": "blockferry full backup -> s3:// (MinIO)",
    "incr_file": "blockferry incremental (1% rewritten) -> file://",
    "incr_s3": "blockferry incremental (1% rewritten) -> s3://",
    "restic_full": f"restic {restic_v} full (nbdcopy SRC - \\| restic backup --stdin) -> s3://",
    "restic_full_minio": f"restic {restic_v} full (nbdcopy SRC - \\| restic backup --stdin) -> s3:// (MinIO)",
    "restic_incr": "restic incremental (1% rewritten) -> s3://",
    "restore_file": "blockferry restore of the incremental -> raw file",
    "worker4_default": "worker --jobs 4: 4 full backups at once (default --memory-limit 512MiB)",
    "worker4_128": "worker --jobs 4: 4 full backups at once (--memory-limit 128MiB)",
    "worker4_sequential": "worker --jobs 4: the same 4 full backups one after the other (default --memory-limit)",
    "mixed.restore_file": "blockferry restore of the full backup <- file:// -> raw file",
    "mixed.restore_s3": "blockferry restore of the full backup <- s3:// -> raw file",
    "mixed.restore_minio": "blockferry restore of the full backup <- s3:// (MinIO) -> raw file",
    "mixed.nbdcopy_nbd": "nbdcopy --flush FILE NBD (writable qemu-nbd -e 4; restore baseline)",
    "mixed.restore_nbd": "blockferry restore of the full backup <- file:// -> writable NBD export",
}


def table(names):
    print("| what | wall s | MiB/s (disk bytes / wall) | peak RSS MiB | vs nbdcopy | CPU s (client user+sys) | CPU s (servers) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        r = rows[name]
        mibs = r["bytes"] / MiB / r["wall"] if r["wall"] > 0 else float("inf")
        base = r["base"]
        vs = f"{r['wall'] / rows[base]['wall']:.2f}x" if base else "-"
        cpu = "-" if name.startswith("worker") else f"{r['cpu']:.2f}"
        srv = "-" if name.startswith("worker") else f"{r['server']:.2f}"
        label = labels.get(name, labels.get(name.split(".", 1)[-1], name))
        print(f"| {label} | {r['wall']:.2f} | {mibs:.0f} | {r['rss']:.0f} | {vs} | {cpu} | {srv} |")
    print()


def every_run(names):
    if runs > 1:
        print("- wall s of every run: " + "; ".join(
            f"{n} " + " ".join(f"{w:.2f}" for w in rows[n]["walls"]) for n in names if len(rows[n]["walls"]) > 1))


def fmt(name):
    return (f"read {int(stats[name + '.bytes_read']) / MiB:.1f} MiB, "
            f"written {int(stats[name + '.bytes_written']) / MiB:.1f} MiB, "
            f"deduplicated {int(stats[name + '.bytes_deduplicated']) / MiB:.1f} MiB, "
            f"reused {int(stats[name + '.bytes_reused']) / MiB:.1f} MiB, "
            f"zero {int(stats[name + '.bytes_zero']) / MiB:.1f} MiB")


def restic_fmt(n):
    return (f"processed {int(stats[n + '.total_bytes_processed']) / MiB:.1f} MiB, "
            f"added {int(stats[n + '.data_added']) / MiB:.1f} MiB (snapshot {stats[n + '.snapshot_id'][:8]})")


def restore_fmt(n):
    return (f"written {int(stats[n + '.bytes_written']) / MiB:.1f} MiB, "
            f"zero {int(stats[n + '.bytes_zero']) / MiB:.1f} MiB")


def minio_stats(p):
    # The S3 servers' own CPU in the fastest full backup, per GiB of objects PUT
    # (the backup's bytes_written) and per GiB of the disk's data.
    if p + "full_minio" not in rows:
        return
    print(f"- full -> MinIO:   {fmt(p + 'full_minio')} (bucket: {int(stats[p + 'minio_stored']) / MiB:.1f} MiB on disk)")
    costs = []
    for n, who in (("full_s3", "versitygw"), ("full_minio", "MinIO")):
        r = rows[p + n]
        put = int(stats[p + n + ".bytes_written"]) / GiB
        costs.append(f"{who} {r['own']:.2f} s = {r['own'] / put:.2f} s per GiB stored, "
                     f"{r['own'] / (r['bytes'] / GiB):.2f} per GiB of data")
    print(f"- S3 server CPU in the fastest full backup ({int(stats[p + 'full_s3.bytes_written']) / MiB:.1f} MiB "
          f"of objects PUT): {'; '.join(costs)}")


def minio_bars(p, what, has_restic):
    # What the MinIO rows add to the bars (what: "" or "mixed image: ").
    if p + "full_minio" not in rows:
        return
    ratio_bar(14, f"{what}full backup to s3:// (MinIO) at most 1.3x the one to file://", p + "full_minio",
              p + "full_file", 1.3)
    if has_restic and p + "restic_full_minio" in rows:
        ratio_bar(14, f"{what}full backup to MinIO at least 8x faster than restic's to MinIO", p + "restic_full_minio",
                  p + "full_minio", 8, at_most=False)


def sha_bar(issue, what, n):
    got = stats[n + ".sha256"]
    bar(issue, what, got == stats[n + ".sha256_want"], got[:16])


def ratio_bar(issue, what, num, den, limit, at_most=True):
    r = wall(num) / wall(den)
    bar(issue, what, r <= limit if at_most else r >= limit, f"{r:.2f}x ({wall(num):.2f} s / {wall(den):.2f} s)")


def standard():
    data_bytes, n_writes = int(stats["data_bytes"]), int(stats["n_writes"])
    has_restic = "restic_full" in rows
    gs, gl = int(stats["growth_small.size"]) // MiB, int(stats["growth_large.size"]) // MiB
    labels["growth_small"] = f"blockferry incremental, {gs} MiB sparse disk -> file://"
    labels["growth_large"] = f"blockferry incremental, {gl} MiB sparse disk -> file://"
    for n in ("incr_file", "incr_s3", "growth_small", "growth_large"):
        rows[n]["bytes"] = int(stats[n + ".bytes_read"])
    names = [n for n in order if "." not in n]
    print()
    print(f"blockferry benchmark, {mode} mode, standard image: {disk_size // MiB} MiB qcow2 holding "
          f"{data_bytes // MiB} MiB of data (half random, half text), exported by qemu-nbd -r -e 4 over a unix socket; "
          f"{ncpu} CPUs, load average {stats['load_before']} before the runs, {stats['load_after']} after.")
    print("One unmeasured nbdcopy read warmed the page cache first: every reader is served from memory.")
    print(f"Fastest of {runs} runs (incrementals, restic and the worker runs: 1 run); peak RSS: the highest of all runs.")
    print()
    table(names)
    print(f"- disk bytes: the {data_bytes // MiB} MiB the export reports as data; for an incremental, the bytes "
          f"it read: the dirty 64 KiB blocks of its {n_writes} scattered 64 KiB writes of random bytes "
          f"({n_writes * 64 // 1024} MiB), which touched {stats['dirty_chunks']} of the 4 MiB chunks.")
    print(f"- cost growth rows: a {gs} MiB and a {gl} MiB sparse qcow2, each holding {n_writes} scattered 64 KiB "
          f"blocks, fully backed up, then {n_writes} more blocks written: the same changed bytes on both.")
    print("- worker rows: wall time of 4 jobs submitted to one worker (embedded NATS, one file:// repository per "
          "job), peak RSS of the worker process (VmHWM); disk bytes: 4 times the data.")
    if has_restic:
        print(f"- restic rows: the whole {disk_size // MiB} MiB disk, which nbdcopy writes to the pipe holes and all; "
              "peak RSS: the largest process of the pipeline (restic); CPU s (client): nbdcopy and restic.")
    print("- vs nbdcopy: wall time over that of nbdcopy SRC null: for backups, of nbdcopy --flush SRC FILE "
          "for the restore.")
    print("- CPU s (servers): qemu-nbd's CPU time during the run, plus versitygw's (or MinIO's) for the S3 backups.")
    every_run(names)
    print()
    print("Backup stats (--json):")
    print(f"- full -> file://: {fmt('full_file')}")
    print(f"- full -> s3://:   {fmt('full_s3')} (bucket: {int(stats['s3_stored']) / MiB:.1f} MiB on disk)")
    minio_stats("")
    print(f"- incremental:     {fmt('incr_file')} (repository after full + incremental: "
          f"{int(stats['file_stored']) / MiB:.1f} MiB on disk)")
    print(f"- incremental s3:  {fmt('incr_s3')}; verify --source against the disk: passed")
    if has_restic:
        for n, what in (("restic_full", "restic full"), ("restic_incr", "restic incr")):
            print(f"- {what + ':':16} {restic_fmt(n)}")
        print(f"- restic bucket after full + incremental: {int(stats['restic_stored']) / MiB:.1f} MiB on disk")
    print(f"- restore:         {restore_fmt('restore_file')}")
    print()
    bounds = stage_costs(data_bytes)
    standard_bars(data_bytes, n_writes, has_restic, gs, gl, bounds)


def stage_costs(data_bytes):
    # Stage costs: the lowest of the runs for every figure (the first run of a stage
    # pays for warming up: fresh buffers, compression contexts).
    stages = {}
    for line in open(stages_path):
        m = re.match(r"BenchmarkStageCost/(\S+?)(?:-\d+)?\s+\d+\s+\S+ ns/op(.*)", line)
        if not m:
            continue
        cur = stages.setdefault(m.group(1), {})
        for v, unit in re.findall(r"([0-9.eE+-]+) (\S+)", m.group(2)):
            cur[unit] = min(cur.get(unit, float(v)), float(v))
    data_gib = data_bytes / GiB
    ncpu_n = int(ncpu)
    nbd = rows["nbdcopy_null"]
    read_cpu = (nbd["cpu"] + nbd["server"]) / data_gib
    cpu = lambda n: stages[n]["cpu-s/GiB"]
    print("Stage costs (BenchmarkStageCost on a sample of every region; CPU s per GiB of disk data, "
          f"lowest of {runs} runs; the NBD read from the nbdcopy SRC null: row, client + qemu-nbd):")
    print()
    print("| stage | CPU s/GiB | MiB/s per core | wall s/GiB (8 in flight) | ratio |")
    print("|---|---:|---:|---:|---:|")
    stage_labels = [("NBD read (nbdcopy SRC null:)", None), ("BLAKE3 (chunk id)", "blake3"),
                    ("zstd level 1, C, + envelope (Seal: what a backup does)", "seal-zstd")]
    stage_labels += [(f"alternative: {n[4:]}", n) for n in sorted(stages) if n.startswith("alt/")]
    stage_labels += [("AES-256-GCM (encrypted repositories only)", "aes-gcm"),
                     ("file write (file store Put: O_DIRECT, fsync, rename)", "file-put"),
                     ("S3 PUT to versitygw (client + server)", "s3-put")]
    for label, n in stage_labels:
        if n is None:
            print(f"| {label} | {read_cpu:.2f} | {1024 / read_cpu:.0f} | {nbd['wall'] / data_gib:.2f} | - |")
            continue
        if n not in stages:
            continue
        st = stages[n]
        wall_s = f"{st['wall-s/GiB']:.2f}" if "wall-s/GiB" in st else "-"
        ratio = f"{st['ratio']:.3f}" if "ratio" in st else "-"
        print(f"| {label} | {st['cpu-s/GiB']:.2f} | {1024 / st['cpu-s/GiB']:.0f} | {wall_s} | {ratio} |")
    print()
    bounds = {}
    for row, store in (("full_file", "file-put"), ("full_s3", "s3-put")):
        total = (read_cpu + cpu("blake3") + cpu("seal-zstd") + cpu(store)) * data_gib
        limits = {f"CPU {total:.2f} s / {ncpu_n} cores": total / ncpu_n, "the NBD read alone (nbdcopy SRC null:)": nbd["wall"]}
        if row == "full_file":
            limits["the file writes alone"] = stages[store]["wall-s/GiB"] * data_gib
        what = max(limits, key=limits.get)
        bounds[row] = limits[what]
        print(f"- bound of {labels[row].split(' ', 1)[1]}: {bounds[row]:.2f} s, set by {what} "
              f"(others: {', '.join(f'{k} {v:.2f} s' for k, v in limits.items() if k != what) or 'none'}); "
              f"measured {rows[row]['wall']:.2f} s = {rows[row]['wall'] / bounds[row]:.2f}x the bound")
    print()
    return bounds


def standard_bars(data_bytes, n_writes, has_restic, gs, gl, bounds):
    r = wall("full_file") / wall("nbdcopy_null")
    bar(2, "full backup to file:// within 3x of nbdcopy SRC null:", r <= 3, f"{r:.2f}x")
    bar(4, "full backup to file:// within 1.5x of nbdcopy SRC null:", r <= 1.5, f"{r:.2f}x")
    r = wall("full_s3") / wall("nbdcopy_null")
    bar(4, "full backup to s3:// within 2.5x of nbdcopy SRC null:", r <= 2.5, f"{r:.2f}x")
    for inc, full in (("incr_file", "full_file"), ("incr_s3", "full_s3")):
        r = wall(inc) / wall(full)
        bar(4, f"incremental at most 5% of the full backup's time ({inc.split('_')[1]})", r <= 0.05,
            f"{100 * r:.1f}% ({wall(inc):.2f} s / {wall(full):.2f} s)")
    read, rounded = int(stats["incr_file.bytes_read"]), int(stats["dirty_chunks"]) * 4 * MiB
    bar(4, "incremental reads at most the dirty bytes rounded up to chunks", read <= rounded,
        f"{read / MiB:.1f} MiB read; dirty {n_writes * 64 / 1024:.1f} MiB, in chunks {rounded / MiB:.0f} MiB")
    r = wall("restore_file") / wall("nbdcopy_file")
    bar(4, "restore to a raw file within 2x of nbdcopy SRC FILE", r <= 2, f"{r:.2f}x")
    one_job = [n for n in ("full_file", "full_s3", "full_minio", "incr_file", "incr_s3", "restore_file") if n in rows]
    worst = max(one_job, key=lambda n: rows[n]["rss"])
    peak = rows[worst]["rss"]
    bar(2, "peak RSS of one job under 512 MiB", peak < 512, f"{peak:.0f} MiB ({worst})")
    bar(4, "peak RSS of one job with default settings at most 256 MiB", peak <= 256, f"{peak:.0f} MiB ({worst})")
    for n in ("worker4_default", "worker4_128", "worker4_sequential"):
        limit = int(stats[n + ".limit_mib"])
        bound = limit + 192
        how = ", 4 jobs one after the other" if n.endswith("sequential") else ""
        bar(4, f"worker --jobs 4, --memory-limit {limit}MiB{how}: peak RSS within the stated bound "
            f"(limit + 192 MiB = {bound} MiB)", rows[n]["rss"] <= bound, f"{rows[n]['rss']:.0f} MiB")
    if has_restic:
        r = wall("restic_full") / wall("full_s3")
        bar(4, "full backup to S3 at least 8x faster than restic's", r >= 8,
            f"{r:.2f}x (restic {wall('restic_full'):.2f} s, blockferry {wall('full_s3'):.2f} s)")
        r = wall("restic_incr") / wall("incr_s3")
        bar(4, "incremental to S3 at least 20x faster than restic's", r >= 20,
            f"{r:.2f}x (restic {wall('restic_incr'):.2f} s, blockferry {wall('incr_s3'):.2f} s)")
    ratio_bar(4, f"incremental of the same changes: {gl} MiB sparse disk about as fast as {gs} MiB (within 1.5x)",
              "growth_large", "growth_small", 1.5)
    ratio_bar(14, "full backup to s3:// at most 1.3x the one to file://", "full_s3", "full_file", 1.3)
    minio_bars("", "", has_restic)
    r = wall("full_file") / bounds["full_file"]
    bar(14, "full backup to file:// within 1.2x of the machine's bound", r <= 1.2,
        f"{r:.2f}x ({wall('full_file'):.2f} s / {bounds['full_file']:.2f} s)")
    r = wall("restore_file") / wall("nbdcopy_file")
    bar(14, "restore to a raw file at most 1.25x nbdcopy SRC FILE", r <= 1.25, f"{r:.2f}x")
    ratio_bar(14, "--jobs 4: 4 backups at once at least 1.5x the throughput of the same 4 one after the other "
              "(sequential wall / parallel wall, default --memory-limit)", "worker4_sequential", "worker4_default",
              1.5, at_most=False)
    sha_bar(2, "restored incremental matches the image (sha256)", "restore_file")


def mixed():
    data_bytes = int(stats["mixed.data_bytes"])
    has_restic = "mixed.restic_full" in rows
    names = [n for n in order if n.startswith("mixed.")]
    g = mixed_disk_size // 6 // MiB  # "1 GiB" of the full mode
    print()
    print(f"blockferry benchmark, {mode} mode, mixed image (issue 14's shape): {mixed_disk_size // MiB} MiB qcow2 "
          f"holding {g} MiB random, {g} MiB text, {g // 2} MiB repeating the start of the random region (4 MiB "
          f"aligned) and {g // 4} MiB of written zeroes ({data_bytes // MiB} MiB the export reports as data); "
          f"load average {stats['mixed.load_before']} before the runs, {stats['mixed.load_after']} after.")
    print(f"Fastest of {runs} runs (restic: 1 run); peak RSS: the highest of all runs. The restores restore the "
          "full backup; the NBD target is a fresh raw file for every run, served by qemu-nbd -e 4 (multi-conn "
          f"advertised: {stats['mixed.target_multi_conn']}).")
    print()
    table(names)
    print("- vs nbdcopy: backups over nbdcopy SRC null:, restores to a raw file over nbdcopy --flush SRC FILE, the "
          "restore to the NBD export over nbdcopy --flush FILE NBD (FILE: the image converted to a sparse raw file).")
    print("- CPU s (servers): qemu-nbd's (the source's, or the target's for NBD restores), plus versitygw's (or "
          "MinIO's) for S3.")
    if has_restic:
        print(f"- restic row: the whole {mixed_disk_size // MiB} MiB disk through a pipe, as for the standard image.")
    every_run(names)
    print()
    print("Backup stats (--json):")
    print(f"- full -> file://: {fmt('mixed.full_file')}")
    print(f"- full -> s3://:   {fmt('mixed.full_s3')} (bucket: {int(stats['mixed.s3_stored']) / MiB:.1f} MiB on disk)")
    minio_stats("mixed.")
    if has_restic:
        print(f"- restic full:     {restic_fmt('mixed.restic_full')}")
    restores = [("restore_file", "<- file://"), ("restore_s3", "<- s3://"), ("restore_nbd", "-> NBD export")]
    if "mixed.restore_minio" in rows:
        restores.insert(2, ("restore_minio", "<- MinIO"))
    for n, what in restores:
        print(f"- restore {what + ':':13} {restore_fmt('mixed.' + n)}")
    print()
    m = lambda n: "mixed." + n
    ratio_bar(14, "mixed image: full backup to s3:// at most 1.3x the one to file://", m("full_s3"), m("full_file"), 1.3)
    if has_restic:
        ratio_bar(14, "mixed image: full backup to S3 at least 8x faster than restic's", m("restic_full"), m("full_s3"),
                  8, at_most=False)
    minio_bars("mixed.", "mixed image: ", has_restic)
    ratio_bar(14, "mixed image: restore <- file:// at most 1.25x nbdcopy SRC FILE", m("restore_file"), m("nbdcopy_file"), 1.25)
    ratio_bar(14, "mixed image: restore <- s3:// at most 1.15x the restore <- file://", m("restore_s3"), m("restore_file"), 1.15)
    if m("restore_minio") in rows:
        ratio_bar(14, "mixed image: restore <- s3:// (MinIO) at most 1.15x the restore <- file://", m("restore_minio"),
                  m("restore_file"), 1.15)
    ratio_bar(14, "mixed image: restore to a writable NBD export at most 1.3x nbdcopy FILE NBD", m("restore_nbd"),
              m("nbdcopy_nbd"), 1.3)
    peak = max(rows[m(n)]["rss"] for n in ("full_file", "full_s3", "full_minio", "restore_file", "restore_s3",
                                            "restore_minio", "restore_nbd") if m(n) in rows)
    bar(4, "mixed image: peak RSS of one job with default settings at most 256 MiB", peak <= 256, f"{peak:.0f} MiB")
    for n, what in restores:
        sha_bar(14, f"mixed image: restore {what} matches the image (sha256)", m(n))


if "nbdcopy_null" in rows:
    standard()
if "mixed.nbdcopy_null" in rows:
    mixed()
print("| issue | bar | result | measured |")
print("|---|---|---|---|")
for issue, what, passed, measured in bars:
    print(f"| #{issue} | {what} | {'PASS' if passed else 'FAIL'} | {measured} |")
if "restic_version" not in stats:
    print("\nrestic: skipped (BENCH_RESTIC=0)")
PY

[ "${#sha_failed[@]}" = 0 ] || die "restored disks differ from their image (sha256): ${sha_failed[*]}"
