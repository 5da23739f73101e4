#!/usr/bin/env bash
# The whole story on embedded defaults: a demo qcow2 disk with a dirty bitmap,
# exported by qemu-nbd; a worker with embedded NATS JetStream and its default file
# repository; a full backup and an incremental submitted as jobs with progress
# shown, and what each read, stored and took from elsewhere; both restored through
# the worker and compared with the disk as it was.
#
#   make demo            (or: bash deploy/scripts/demo.sh after make build)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bf=${BLOCKFERRY:-$root/bin/blockferry}
work=$(mktemp -d "${TMPDIR:-/tmp}/blockferry-demo.XXXXXX")
repo=file://$work/data/repository
port=${DEMO_NATS_PORT:-14222}
nbd_pid="" worker_pid=""
cleanup() {
	[ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null && wait "$nbd_pid" 2>/dev/null
	[ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
serve() { # serve the image read-only with a bitmap, as libvirt or CloudStack would
	qemu-nbd --read-only --persistent --shared=8 --format=qcow2 --socket="$work/nbd.sock" --bitmap="$1" "$work/disk.qcow2" &
	nbd_pid=$!
	for _ in $(seq 50); do [ -S "$work/nbd.sock" ] && return; sleep 0.1; done
	echo "qemu-nbd did not start" >&2; exit 1
}
unserve() { kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=""; rm -f "$work/nbd.sock"; }

# Data that looks like data: log lines (text zstd shrinks, but not to nothing) and
# random bytes (media, archives: nothing to shrink).
text() { # text MiB SEED
	awk -v bytes=$(($1 << 20)) -v seed="$2" 'BEGIN { srand(seed)
		split("GET POST PUT DELETE", verb, " "); split("200 200 200 201 204 304 404 500", code, " ")
		for (i = 0; n < bytes; i++) { # ten requests a second
			line = sprintf("2026-12-05T%02d:%02d:%02d.%03dZ vm1042 api[%d]: %s /v1/items/%d %s %d bytes %.1f ms\n",
				int(i / 36000) % 24, int(i / 600) % 60, int(i / 10) % 60, i % 10 * 100 + int(rand() * 100), 1000 + int(rand() * 8),
				verb[1 + int(rand() * 4)], int(rand() * 1e6), code[1 + int(rand() * 8)], int(rand() * 65536), rand() * 250)
			if (n + length(line) > bytes) line = substr(line, 1, bytes - n)
			printf "%s", line; n += length(line)
		} }'
}
random() { head -c $(($1 << 20)) /dev/urandom; } # random MiB
put() { dd of="$1" bs=1M iflag=fullblock seek="$2" conv=notrunc status=none; } # put FILE MIB_OFFSET <data

say "A 256 MiB qcow2 disk with 64 MiB of data and a persistent dirty bitmap"
echo "24 MiB of service logs at 0, a 32 MiB media file at 180 MiB, its first 8 MiB copied to 120 MiB"
truncate -s 256M "$work/disk.raw"
text 24 1 | put "$work/disk.raw" 0
random 32 >"$work/media"
put "$work/disk.raw" 180 <"$work/media"
head -c 8M "$work/media" | put "$work/disk.raw" 120
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2" && rm "$work/disk.raw" "$work/media"
qemu-img bitmap --add "$work/disk.qcow2" chk1
qemu-img convert -O raw "$work/disk.qcow2" "$work/at-full.raw"

say "A worker with embedded NATS JetStream (store and repository under $work/data)"
"$bf" worker --data-dir "$work/data" --listen "127.0.0.1:$port" --name demo-worker --log-level warn \
	--allow-target "file://$work/*" &
worker_pid=$!
nats=(--nats-url "nats://127.0.0.1:$port" --nats-token-file "$work/data/nats.token")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

say "Submit a full backup and follow it"
serve chk1
full_id=$("$bf" submit backup "${nats[@]}" --id demo-full --disk demo/vda --source "nbd+unix:///?socket=$work/nbd.sock" --rate-limit 16MiB --wait)
unserve
echo "full backup: $full_id"

say "The guest writes; then an incremental against $full_id with bitmap chk1"
echo "a new 8 MiB download at 60 MiB (random), 4 MiB more log at 24 MiB (text), 64 pages of 4 KiB"
echo "in a 16 MiB database at 140 MiB and 16 scattered over the disk (random), and 8 MiB of"
echo "the media file discarded (zeroes)"
random 8 >"$work/download"
text 4 2 >"$work/log"
random 1 | split -b 4096 -a 3 - "$work/page."
writes=(-c "write -s $work/download 60M 8M" -c "write -s $work/log 24M 4M" -c "write -z 200M 8M")
pages=("$work"/page.*)
for k in $(seq 0 79); do # pages at pseudo-random 4 KiB slots of the database, then of the disk
	if [ "$k" -lt 64 ]; then at=$((140 * 1024 + (k * 797 + 13) % 4096 * 4)); else at=$(((k * 7919 + 13) % 65536 * 4)); fi
	writes+=(-c "write -s ${pages[k]} ${at}k 4k")
done
qemu-io -f qcow2 "${writes[@]}" "$work/disk.qcow2" >/dev/null
rm "$work/download" "$work/log" "$work"/page.*
qemu-img bitmap --add "$work/disk.qcow2" chk2
qemu-img convert -O raw "$work/disk.qcow2" "$work/at-inc.raw"
serve chk1
inc_id=$("$bf" submit backup "${nats[@]}" --id demo-inc --disk demo/vda --source "nbd+unix:///?socket=$work/nbd.sock" \
	--bitmap chk1 --parent "$full_id" --wait)
unserve
echo "incremental backup: $inc_id"
"$bf" status "${nats[@]}" demo-inc

say "What each backup read from the disk, stored, and took from elsewhere"
"$bf" ls --repository "$repo" --json | python3 -c '
import json, sys
def size(n):
    if n < 1024:
        return "%d B" % n
    for unit in "KMGTPE":
        n /= 1024
        if n < 1024:
            return "%.1f %siB" % (n, unit)
rows = [("BACKUP", "KIND", "READ", "WRITTEN", "REUSED", "DEDUPLICATED", "ZERO", "PATCHED")]
for b in json.load(sys.stdin)["backups"]:
    s = b["stats"]
    rows.append((b["backup"], b["kind"], size(s["bytes_read"]), size(s["bytes_written"]), size(s["bytes_reused"]),
                 size(s["bytes_deduplicated"]), size(s["bytes_zero"]), "%d of %d" % (s.get("chunks_patched", 0), s["chunks_total"])))
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
'
cat <<'LEGEND'
READ: bytes read from the disk          WRITTEN: stored in the repository, compressed
REUSED: taken from the parent unread    DEDUPLICATED: read, but the repository had it
ZERO: stored as zero markers            PATCHED: chunk positions of which only the
                                        changed 64 KiB blocks were read and stored
LEGEND

say "Backups in the repository, and what it stores for them"
"$bf" ls --repository "$repo"
"$bf" stats --repository "$repo"

say "Restore both through the worker and compare with the disk as it was"
status=0
for pair in "$full_id:at-full" "$inc_id:at-inc"; do
	id=${pair%%:*} want=$work/${pair#*:}.raw
	"$bf" submit restore "${nats[@]}" --id "restore-$id" --backup "$id" --target "file://$work/restored-$id.raw" --wait >/dev/null
	a=$(sha256sum <"$want" | cut -d' ' -f1) b=$(sha256sum <"$work/restored-$id.raw" | cut -d' ' -f1)
	if [ "$a" = "$b" ]; then echo "$id: sha256 $b matches the disk"; else echo "$id: MISMATCH $a != $b"; status=1; fi
done
"$bf" submit verify "${nats[@]}" --id "verify-$inc_id" --backup "$inc_id" --wait >/dev/null && echo "verify $inc_id: every chunk intact"
exit $status
