package testutil

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// QSD is a running qemu-storage-daemon: the block layer of QEMU without a VM,
// driven over QMP as libvirt drives a VM's QEMU. It also runs an NBD server on a
// Unix socket, whose exports are added with block-export-add.
type QSD struct {
	t       testing.TB
	nbdSock string

	mu   sync.Mutex // one QMP command at a time
	conn net.Conn
	in   *bufio.Reader
}

// QMPError is an error QEMU answered a command with.
type QMPError struct {
	Command, Class, Desc string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// StartQSD starts qemu-storage-daemon with a QMP monitor and an NBD server, each
// on a Unix socket in a temporary directory, and negotiates QMP capabilities. The
// daemon stops when the test ends.
func StartQSD(t testing.TB) *QSD {
	t.Helper()
	prog := RequireTool(t, "qemu-storage-daemon")
	dir := t.TempDir()
	qmpSock := filepath.Join(dir, "qmp.sock")
	q := &QSD{t: t, nbdSock: filepath.Join(dir, "nbd.sock")}
	// The daemon writes its pid file once its monitor and NBD server listen.
	serve(t, prog, []string{
		"--chardev", "socket,id=qmp0,server=on,wait=off,path=" + qmpSock,
		"--monitor", "chardev=qmp0",
		"--nbd-server", "addr.type=unix,addr.path=" + q.nbdSock,
		"--pidfile", filepath.Join(dir, "qsd.pid"),
	}, filepath.Join(dir, "qsd.pid"))
	conn, err := net.Dial("unix", qmpSock)
	if err != nil {
		t.Fatalf("qmp: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	q.conn, q.in = conn, bufio.NewReader(conn)
	if _, err := q.readReply(); err != nil { // the greeting, {"QMP": {...}}
		t.Fatalf("qmp greeting: %v", err)
	}
	q.Must("qmp_capabilities", nil)
	return q
}

// ExportURI is the NBD URI of the daemon's export name.
func (q *QSD) ExportURI(name string) string {
	return "nbd+unix:///" + name + "?socket=" + q.nbdSock
}

// Execute runs one QMP command (args nil or a value that marshals to a JSON
// object) and returns its "return" value, or a *QMPError.
func (q *QSD) Execute(command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	if err := q.conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	reply, err := q.readReply()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	if reply.Error != nil {
		return nil, &QMPError{Command: command, Class: reply.Error.Class, Desc: reply.Error.Desc}
	}
	return reply.Return, nil
}

// Must runs a QMP command and fails the test if QEMU answers with an error.
func (q *QSD) Must(command string, args any) json.RawMessage {
	q.t.Helper()
	ret, err := q.Execute(command, args)
	if err != nil {
		q.t.Fatal(err)
	}
	return ret
}

// WaitFor runs command until until(its return value) holds, failing the test
// after 30s. It is for QMP's asynchronous steps (a cancelled job, a deleted
// export), polled rather than followed by events so that the client stays a
// simple request-reply loop.
func (q *QSD) WaitFor(command string, until func(json.RawMessage) bool) {
	q.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !until(q.Must(command, nil)) {
		if time.Now().After(deadline) {
			q.t.Fatalf("qmp %s: condition not met in 30s", command)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

// readReply reads the next message that is not an event: QMP sends events
// (JOB_STATUS_CHANGE, BLOCK_EXPORT_DELETED, ...) between replies at any time.
func (q *QSD) readReply() (qmpReply, error) {
	for {
		line, err := q.in.ReadBytes('\n')
		if err != nil {
			return qmpReply{}, err
		}
		var r qmpReply
		if err := json.Unmarshal(line, &r); err != nil {
			return qmpReply{}, fmt.Errorf("decode %q: %w", line, err)
		}
		if r.Event == "" {
			return r, nil
		}
	}
}
