#!/usr/bin/env bash
# Benchmarks listing and garbage collection on a synthetic repository (issue 11):
# 1,000 backups of 20 disks (deploy/scripts/synthrepo: 256 chunk positions a disk,
# each backup after a disk's first replacing 8 of them; 12,960 chunks), once on a
# file:// repository and once on S3 (versitygw on loopback). Measures wall time and
# peak RSS (GNU time) of:
#   ls --disk        one disk's 50 backups, through the backup index
#   ls --disk        the same with index/ moved away, as in a repository written
#                    before the index: every manifest is read
#   ls               all 1,000 backups
#   prune            after forget --keep-last 10 on every disk: the mark phase reads
#                    the 200 manifests left and condemns the 6,400 chunks only the
#                    forgotten backups named
#   prune            after the grace period (set to 30s here; a sweep must end
#                    within half of it): the sweep deletes them
# then `check` must pass. Prints a markdown table.
#
# Environment: BLOCKFERRY (binary; default bin/blockferry, built when missing),
# BENCH_KEEP=1 keeps the work directory, TMPDIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$root/.cache/bin:/usr/local/go/bin:$PATH"
say() { printf 'bench-gc: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

bf=${BLOCKFERRY:-$root/bin/blockferry}
[ -x "$bf" ] || (cd "$root" && go build -o "$bf" ./cmd/blockferry)
for t in versitygw curl; do command -v "$t" >/dev/null || fail "$t is not installed (make setup)"; done
[ -x /usr/bin/time ] || fail "GNU time (/usr/bin/time) is not installed"

work=$(mktemp -d "${TMPDIR:-/tmp}/blockferry-bench-gc.XXXXXX")
s3_pid=
finish() {
	[ -z "$s3_pid" ] || { kill "$s3_pid" 2>/dev/null || true; wait "$s3_pid" 2>/dev/null || true; }
	if [ "${BENCH_KEEP:-0}" = 1 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
}
trap finish EXIT
(cd "$root" && go build -o "$work/synthrepo" ./deploy/scripts/synthrepo)

export AWS_ACCESS_KEY_ID=bench-gc AWS_SECRET_ACCESS_KEY=bench-gc-secret AWS_REGION=us-east-1
export AWS_SESSION_TOKEN="" AWS_PROFILE="" AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/nonexistent/bench-gc AWS_SHARED_CREDENTIALS_FILE=/nonexistent/bench-gc
unset AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 BLOCKFERRY_REPOSITORY BLOCKFERRY_KEY BLOCKFERRY_KEY_FILE

# versitygw's posix backend keeps object KEY of bucket B as the file $s3_dir/B/KEY.
s3_dir=$work/s3
mkdir -p "$s3_dir/bench"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
versitygw --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --port "127.0.0.1:$port" \
	--keep-alive --quiet posix "$s3_dir" >"$work/versitygw.log" 2>&1 &
s3_pid=$!
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
	kill -0 "$s3_pid" 2>/dev/null || fail "versitygw exited: $(cat "$work/versitygw.log")"
	sleep 0.1
done

rows=$work/rows.tsv # what \t store \t wall s \t peak RSS KiB
: >"$rows"
timed() { # what store -- cmd...
	local what=$1 store=$2
	shift 3
	say "$store: $what"
	/usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; fail "$what on $store"; }
	read -r wall rss < <(tail -n 1 "$work/time")
	printf '%s\t%s\t%s\t%s\n' "$what" "$store" "$wall" "$rss" >>"$rows"
}

for store in file s3; do
	if [ "$store" = file ]; then
		repo=file://$work/repo dir=$work/repo
	else
		repo="s3://bench/gc?endpoint=http://127.0.0.1:$port&region=us-east-1" dir=$s3_dir/bench/gc
	fi
	timed "write the synthetic repository (not blockferry's work)" "$store" -- "$work/synthrepo" -repository "$repo"
	timed "ls --disk (50 of 1,000 backups, through the index)" "$store" -- "$bf" ls --json --repository "$repo" --disk vm-07/vda
	n=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["backups"]))' "$work/out")
	[ "$n" = 50 ] || fail "ls --disk listed $n backups, want 50"
	mv "$dir/index" "$work/index.aside"
	timed "ls --disk without the index (every manifest read)" "$store" -- "$bf" ls --json --repository "$repo" --disk vm-07/vda
	mv "$work/index.aside" "$dir/index"
	timed "ls (all 1,000 backups)" "$store" -- "$bf" ls --json --repository "$repo"
	for d in $(seq -w 0 19); do
		"$bf" forget --repository "$repo" --disk "vm-$d/vda" --keep-last 10 >/dev/null
	done
	timed "prune: mark 200 manifests, condemn 6,400 of 12,960 chunks" "$store" -- "$bf" prune --json --repository "$repo" --grace 30s
	sleep 31
	timed "prune after the grace period: sweep, delete 6,400 chunks" "$store" -- "$bf" prune --json --repository "$repo"
	deleted=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["chunks_deleted"])' "$work/out")
	[ "$deleted" = 6400 ] || fail "the sweep deleted $deleted chunks, want 6400"
	"$bf" check --repository "$repo" >/dev/null || fail "check after the prune on $store"
done

python3 - "$rows" "$(nproc)" <<'PY'
import sys
rows, ncpu = sys.argv[1], sys.argv[2]
table = {}
order = []
for line in open(rows):
    what, store, wall, rss = line.rstrip("\n").split("\t")
    if what not in table:
        table[what] = {}
        order.append(what)
    table[what][store] = (float(wall), int(rss) / 1024)
print(f"Listing and garbage collection, 1,000 synthetic backups of 20 disks ({ncpu} CPUs):")
print()
print("| operation | file:// wall | file:// peak RSS | s3:// wall | s3:// peak RSS |")
print("|---|---:|---:|---:|---:|")
for what in order:
    cells = []
    for store in ("file", "s3"):
        wall, rss = table[what].get(store, (float("nan"), float("nan")))
        cells += [f"{wall:.2f} s", f"{rss:.0f} MiB"]
    print(f"| {what} | " + " | ".join(cells) + " |")
PY
