#!/usr/bin/env bash
# The whole story on embedded defaults: a demo qcow2 disk with a dirty bitmap,
# exported by qemu-nbd; a full backup, more writes, an incremental; restore both and
# compare checksums with the disk as it was at each backup.
#
#   make demo            (or: bash deploy/scripts/demo.sh after make build)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bf=${BLOCKFERRY:-$root/bin/blockferry}
work=$(mktemp -d "${TMPDIR:-/tmp}/blockferry-demo.XXXXXX")
repo=${DEMO_REPOSITORY:-file://$work/repo}
nbd_pid=""
cleanup() {
	[ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null && wait "$nbd_pid" 2>/dev/null
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
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

say "A 256 MiB qcow2 disk with 64 MiB of data and a persistent dirty bitmap"
qemu-img create -q -f qcow2 "$work/disk.qcow2" 256M
qemu-io -f qcow2 -c "write -P 0x61 0 16M" -c "write -P 0x62 100M 16M" "$work/disk.qcow2" >/dev/null
qemu-io -f qcow2 -c "write -P 0x63 180M 32M" "$work/disk.qcow2" >/dev/null
qemu-img bitmap --add "$work/disk.qcow2" chk1
qemu-img convert -O raw "$work/disk.qcow2" "$work/at-full.raw"

say "Full backup to $repo"
serve chk1
full=$("$bf" backup --json --source "nbd+unix:///?socket=$work/nbd.sock" --disk demo/vda --repository "$repo")
unserve
full_id=$(echo "$full" | json '["backup"]')
echo "$full" | python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["stats"]; print("backup %s: read %d MiB, stored %d MiB, %d chunks zero" % (d["backup"], s["bytes_read"]>>20, s["bytes_written"]>>20, s["chunks_zero"]))'

say "The guest writes 12 MiB; incremental backup against $full_id with bitmap chk1"
qemu-io -f qcow2 -c "write -P 0x71 8M 4M" -c "write -z 100M 4M" -c "write -P 0x72 250M 4M" "$work/disk.qcow2" >/dev/null
qemu-img bitmap --add "$work/disk.qcow2" chk2
qemu-img convert -O raw "$work/disk.qcow2" "$work/at-inc.raw"
serve chk1
inc=$("$bf" backup --json --source "nbd+unix:///?socket=$work/nbd.sock" --bitmap chk1 --parent "$full_id" --disk demo/vda --repository "$repo")
unserve
inc_id=$(echo "$inc" | json '["backup"]')
echo "$inc" | python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["stats"]; print("backup %s: read %d MiB, stored %d KiB, %d chunks reused from the parent" % (d["backup"], s["bytes_read"]>>20, s["bytes_written"]>>10, s["chunks_reused"]))'

say "Backups in the repository"
"$bf" ls --repository "$repo"

say "Restore both and compare with the disk as it was"
status=0
for pair in "$full_id:at-full" "$inc_id:at-inc"; do
	id=${pair%%:*} want=$work/${pair#*:}.raw
	"$bf" restore --repository "$repo" --backup "$id" --target "file://$work/restored-$id.raw"
	a=$(sha256sum <"$want" | cut -d' ' -f1) b=$(sha256sum <"$work/restored-$id.raw" | cut -d' ' -f1)
	if [ "$a" = "$b" ]; then echo "$id: sha256 $b matches"; else echo "$id: MISMATCH $a != $b"; status=1; fi
done
"$bf" verify --repository "$repo" --backup "$inc_id"
exit $status
