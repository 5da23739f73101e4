#!/usr/bin/env bash
# The whole story on embedded defaults: a demo qcow2 disk with a dirty bitmap,
# exported by qemu-nbd; a worker with embedded NATS JetStream and its default file
# repository; a full backup and an incremental submitted as jobs with progress
# shown; both restored through the worker and compared with the disk as it was.
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

say "A 256 MiB qcow2 disk with 80 MiB of data (random, text, patterns) and a persistent dirty bitmap"
truncate -s 256M "$work/disk.raw"
head -c 32M /dev/urandom | dd of="$work/disk.raw" bs=1M iflag=fullblock seek=180 conv=notrunc status=none   # incompressible
seq 1 2000000 | dd of="$work/disk.raw" bs=1M iflag=fullblock seek=0 conv=notrunc status=none  # compressible text
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2" && rm "$work/disk.raw"
qemu-io -f qcow2 -c "write -P 0x62 100M 16M" "$work/disk.qcow2" >/dev/null
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

say "The guest writes 12 MiB; submit an incremental against $full_id with bitmap chk1"
qemu-io -f qcow2 -c "write -P 0x71 8M 4M" -c "write -z 100M 4M" -c "write -P 0x72 250M 4M" "$work/disk.qcow2" >/dev/null
qemu-img bitmap --add "$work/disk.qcow2" chk2
qemu-img convert -O raw "$work/disk.qcow2" "$work/at-inc.raw"
serve chk1
inc_id=$("$bf" submit backup "${nats[@]}" --id demo-inc --disk demo/vda --source "nbd+unix:///?socket=$work/nbd.sock" \
	--bitmap chk1 --parent "$full_id" --wait)
unserve
echo "incremental backup: $inc_id"
"$bf" status "${nats[@]}" demo-inc

say "Backups in the repository"
"$bf" ls --repository "$repo"

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
