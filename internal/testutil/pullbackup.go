package testutil

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// liveDiskNode is the node name of the disk's qcow2 format node, the node a VM's
// device would be attached to.
const liveDiskNode = "disk"

// LiveDisk is a qcow2 image that qemu-storage-daemon keeps open as a running VM's
// disk. The VM is a writable NBD export named "guest" (qemu-storage-daemon has
// no devices and no human monitor; an export is the one way in for guest writes
// while the daemon holds the image's lock, which qemu-io would need). Backups are
// taken from it over QMP as libvirt takes pull-mode backups.
type LiveDisk struct {
	QSD    *QSD
	target string // the disk's target name in libvirt terms, such as "vda"
	dir    string
	n      int // backups begun, for unique node and job names
}

// StartLiveDisk opens image in a new qemu-storage-daemon, with discard=unmap so
// that the guest's discards reach the qcow2, and exports it writable as "guest".
func StartLiveDisk(t testing.TB, image, target string) *LiveDisk {
	t.Helper()
	q := StartQSD(t)
	q.Must("blockdev-add", map[string]any{
		"driver": "qcow2", "node-name": liveDiskNode, "discard": "unmap",
		"file": map[string]any{"driver": "file", "filename": image},
	})
	q.Must("block-export-add", map[string]any{
		"type": "nbd", "id": "guest", "node-name": liveDiskNode, "name": "guest", "writable": true,
	})
	return &LiveDisk{QSD: q, target: target, dir: t.TempDir()}
}

// GuestURI is the NBD URI through which the "guest" writes to the disk.
func (d *LiveDisk) GuestURI() string { return d.QSD.ExportURI("guest") }

// Size is the disk's current virtual size.
func (d *LiveDisk) Size() int64 {
	d.QSD.t.Helper()
	var nodes []struct {
		NodeName string `json:"node-name"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	}
	ret := d.QSD.Must("query-named-block-nodes", map[string]any{"flat": true})
	if err := json.Unmarshal(ret, &nodes); err != nil {
		d.QSD.t.Fatalf("query-named-block-nodes: %v", err)
	}
	for _, n := range nodes {
		if n.NodeName == liveDiskNode {
			return n.Image.VirtualSize
		}
	}
	d.QSD.t.Fatalf("query-named-block-nodes: no node %s", liveDiskNode)
	return 0
}

// PullBackup is one pull-mode backup in progress: a read-only NBD export of the
// disk frozen at the backup's point in time, with the dirty bitmap of the
// incremental (if any) on it.
type PullBackup struct {
	d                  *LiveDisk
	node, job, scratch string
	exportName, bitmap string
}

// BeginBackup starts a pull-mode backup the way libvirt's backup-begin does
// (qemuBackupDiskPrepareDataOnePull and qemuBackupBegin, libvirt 8/9 with
// QEMU 7.2):
//
//  1. blockdev-add a scratch qcow2, the fleecing image, whose backing is the disk;
//  2. one transaction: block-dirty-bitmap-add of a persistent bitmap named
//     checkpoint on the disk (the checkpoint this backup starts); for an
//     incremental (since not empty), block-dirty-bitmap-add of a disabled bitmap
//     "backup-<target>" on the fleecing node and block-dirty-bitmap-merge of the
//     disk's bitmap since into it; and blockdev-backup sync=none from the disk to
//     the fleecing image, whose copy-before-write filter copies old data to the
//     scratch image before the guest overwrites it;
//  3. block-export-add of the fleecing node, read-only, named after the target,
//     with the "backup-<target>" bitmap.
//
// libvirt keeps every checkpoint's bitmap active, so the bitmap of the checkpoint
// an incremental counts from holds every write since then; merging it alone is
// what libvirt does when that checkpoint is the newest. The transaction makes the
// new checkpoint, the incremental's bitmap and the frozen view one point in time.
func (d *LiveDisk) BeginBackup(checkpoint, since string) *PullBackup {
	t := d.QSD.t
	t.Helper()
	d.n++
	b := &PullBackup{
		d: d, node: "fleece" + strconv.Itoa(d.n), job: "backup-" + d.target + "-" + strconv.Itoa(d.n),
		scratch: filepath.Join(d.dir, fmt.Sprintf("scratch%d.qcow2", d.n)), exportName: d.target,
	}
	MakeQcow2(t, b.scratch, d.Size())
	d.QSD.Must("blockdev-add", map[string]any{
		"driver": "qcow2", "node-name": b.node, "backing": liveDiskNode,
		"file": map[string]any{"driver": "file", "filename": b.scratch},
	})
	actions := []map[string]any{
		{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": liveDiskNode, "name": checkpoint, "persistent": true}},
	}
	if since != "" {
		b.bitmap = "backup-" + d.target
		actions = append(actions,
			map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": b.node, "name": b.bitmap, "persistent": false, "disabled": true}},
			map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{
				"node": b.node, "target": b.bitmap,
				"bitmaps": []any{map[string]any{"node": liveDiskNode, "name": since}},
			}})
	}
	actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
		"device": liveDiskNode, "target": b.node, "sync": "none", "job-id": b.job,
	}})
	d.QSD.Must("transaction", map[string]any{"actions": actions})
	export := map[string]any{"type": "nbd", "id": b.exportName, "node-name": b.node, "name": b.exportName, "writable": false}
	if b.bitmap != "" {
		export["bitmaps"] = []string{b.bitmap}
	}
	d.QSD.Must("block-export-add", export)
	return b
}

// URI is the NBD URI of the backup's export.
func (b *PullBackup) URI() string { return b.d.QSD.ExportURI(b.exportName) }

// Bitmap is the name of the dirty bitmap the export offers ("backup-<target>"),
// empty for a full backup.
func (b *PullBackup) Bitmap() string { return b.bitmap }

// End ends the backup as libvirt's backup-end does: it removes the export (which
// fails, failing the test, while a client is still connected: the backup's NBD
// connections must be closed by then) and waits until it is gone, cancels the copy-before-write job (a sync=none
// backup never ends by itself), and deletes the fleecing node and its scratch
// file. The checkpoint bitmap stays on the disk.
func (b *PullBackup) End() {
	q := b.d.QSD
	q.t.Helper()
	q.Must("block-export-del", map[string]any{"id": b.exportName})
	q.WaitFor("query-block-exports", func(ret json.RawMessage) bool { return !hasID(q.t, ret, "id", b.exportName) })
	q.Must("block-job-cancel", map[string]any{"device": b.job})
	q.WaitFor("query-block-jobs", func(ret json.RawMessage) bool { return !hasID(q.t, ret, "device", b.job) })
	q.Must("blockdev-del", map[string]any{"node-name": b.node})
	if err := os.Remove(b.scratch); err != nil {
		q.t.Fatal(err)
	}
}

// hasID reports whether a QMP list of objects holds one whose key is id.
func hasID(t testing.TB, list json.RawMessage, key, id string) bool {
	t.Helper()
	var items []map[string]any
	if err := json.Unmarshal(list, &items); err != nil {
		t.Fatalf("decode %s: %v", list, err)
	}
	return slices.ContainsFunc(items, func(it map[string]any) bool { return it[key] == id })
}
