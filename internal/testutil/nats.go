package testutil

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FreePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the caller binds it.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	return p
}

// NATSServer is a nats-server process with JetStream, listening on a loopback port
// with its store in a temporary directory. It can be stopped and started again on
// the same port with the same store, as a server restart in production.
type NATSServer struct {
	t        testing.TB
	bin      string
	Port     int
	StoreDir string
	URL      string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	out    *syncBuffer
}

// StartNATS runs nats-server with JetStream on a free loopback port and waits until
// JetStream answers. The server is stopped when the test ends. Skips (fails in
// CI) when nats-server is not installed.
func StartNATS(t testing.TB) *NATSServer {
	t.Helper()
	s := &NATSServer{t: t, bin: RequireTool(t, "nats-server"), StoreDir: t.TempDir()}
	t.Cleanup(s.Stop)
	var lastErr error
	for range 3 { // the free port may be taken before nats-server binds it
		s.Port = FreePort(t)
		s.URL = "nats://127.0.0.1:" + strconv.Itoa(s.Port)
		if lastErr = s.start(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("starting nats-server: %v", lastErr)
	return nil
}

// Start starts a stopped server again on the same port with the same store.
func (s *NATSServer) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("restarting nats-server on port %d: %v", s.Port, err)
	}
}

func (s *NATSServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("nats-server is already running")
	}
	out := &syncBuffer{}
	cmd := exec.Command(s.bin, "--addr", "127.0.0.1", "--port", strconv.Itoa(s.Port),
		"--jetstream", "--store_dir", filepath.Join(s.StoreDir, "js"), "--server_name", "blockferry-test")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := jetStreamReady(s.URL); err == nil {
			s.cmd, s.exited, s.out = cmd, exited, out
			return nil
		} else if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("JetStream on %s not ready in 30s (%v): %s", s.URL, err, out.Bytes())
		}
		select {
		case <-exited:
			return fmt.Errorf("nats-server on port %d exited: %s", s.Port, out.Bytes())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// jetStreamReady reports whether a server at url accepts connections and answers
// JetStream API requests (after a restart it recovers its streams first).
func jetStreamReady(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// Stop shuts the server down gracefully (SIGTERM: JetStream state is flushed) and
// waits until it exited. It does nothing when the server is not running.
func (s *NATSServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd, s.exited = nil, nil
}

// Output is what the server logged since it was last started.
func (s *NATSServer) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return string(s.out.Bytes())
}
