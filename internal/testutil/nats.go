package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	// Name is the server's name; args are its flags beyond the listen address
	// and JetStream store (a cluster member's cluster and routes).
	Name string
	args []string
	// env is added to the process's environment (variables a config file
	// names); ready are the options the readiness check connects with.
	env   []string
	ready []nats.Option

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
	s := &NATSServer{t: t, bin: RequireTool(t, "nats-server"), StoreDir: t.TempDir(), Name: "blockferry-test"}
	return s.startOnFreePort()
}

// StartNATSWithConfig is StartNATS with a configuration file (accounts, users and
// their permissions): env holds the variables the file names, such as passwords,
// and ready the connect options of a user who may ask for JetStream account info
// (the readiness check). The flags' listen address and store win over the file's.
func StartNATSWithConfig(t testing.TB, configFile string, env []string, ready ...nats.Option) *NATSServer {
	t.Helper()
	s := &NATSServer{t: t, bin: RequireTool(t, "nats-server"), StoreDir: t.TempDir(), Name: "blockferry-test",
		args: []string{"--config", configFile}, env: env, ready: ready}
	return s.startOnFreePort()
}

func (s *NATSServer) startOnFreePort() *NATSServer {
	t := s.t
	t.Helper()
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
	if err := s.launch(); err != nil {
		return err
	}
	return s.waitReady()
}

// launch starts the process without waiting for it to serve.
func (s *NATSServer) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("nats-server is already running")
	}
	out := &syncBuffer{}
	args := append([]string{"--addr", "127.0.0.1", "--port", strconv.Itoa(s.Port),
		"--jetstream", "--store_dir", filepath.Join(s.StoreDir, "js"), "--server_name", s.Name}, s.args...)
	cmd := exec.Command(s.bin, args...)
	if len(s.env) > 0 {
		cmd.Env = append(os.Environ(), s.env...)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.exited, s.out = cmd, exited, out
	return nil
}

// waitReady waits until JetStream answers through the server (in a cluster: a
// meta leader was elected), or kills it after 30 s.
func (s *NATSServer) waitReady() error {
	s.mu.Lock()
	cmd, exited, out := s.cmd, s.exited, s.out
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := jetStreamReady(s.URL, s.ready...)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			s.forget()
			return fmt.Errorf("JetStream on %s not ready in 30s (%v): %s", s.URL, err, out.Bytes())
		}
		select {
		case <-exited:
			s.forget()
			return fmt.Errorf("nats-server on port %d exited: %s", s.Port, out.Bytes())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *NATSServer) forget() {
	s.mu.Lock()
	s.cmd, s.exited = nil, nil
	s.mu.Unlock()
}

// jetStreamReady reports whether a server at url accepts connections and answers
// JetStream API requests (after a restart it recovers its streams first).
func jetStreamReady(url string, opts ...nats.Option) error {
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(time.Second), nats.NoReconnect()}, opts...)...)
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

// Kill stops the server at once (SIGKILL), as a crashed node, and waits until it
// exited.
func (s *NATSServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd, s.exited = nil, nil
}

// NATSCluster is a JetStream cluster of nats-server processes on loopback, for
// replicated (R3) streams and buckets.
type NATSCluster struct {
	Servers []*NATSServer
	// URLs lists every server's client URL, comma-separated, for a client that
	// fails over between them.
	URLs string
}

// StartNATSCluster runs a 3-node JetStream cluster and waits until every node
// answers JetStream requests. The servers are stopped when the test ends.
func StartNATSCluster(t testing.TB) *NATSCluster {
	t.Helper()
	bin := RequireTool(t, "nats-server")
	const n = 3
	c := &NATSCluster{}
	clusterPorts := make([]int, n)
	var routes []string
	for i := range n {
		clusterPorts[i] = FreePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", clusterPorts[i]))
	}
	var urls []string
	for i := range n {
		s := &NATSServer{t: t, bin: bin, StoreDir: t.TempDir(), Port: FreePort(t), Name: fmt.Sprintf("blockferry-test-%d", i+1)}
		s.URL = "nats://127.0.0.1:" + strconv.Itoa(s.Port)
		s.args = []string{"--cluster_name", "blockferry-test", "--cluster", routes[i], "--routes", strings.Join(routes, ",")}
		t.Cleanup(s.Stop)
		c.Servers = append(c.Servers, s)
		urls = append(urls, s.URL)
	}
	c.URLs = strings.Join(urls, ",")
	for _, s := range c.Servers {
		if err := s.launch(); err != nil {
			t.Fatalf("starting %s: %v", s.Name, err)
		}
	}
	for _, s := range c.Servers {
		if err := s.waitReady(); err != nil {
			t.Fatalf("cluster node %s: %v", s.Name, err)
		}
	}
	return c
}

// Output is what every node logged, each under its name.
func (c *NATSCluster) Output() string {
	var b strings.Builder
	for _, s := range c.Servers {
		fmt.Fprintf(&b, "--- %s\n%s", s.Name, s.Output())
	}
	return b.String()
}
