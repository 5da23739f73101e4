package worker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/worker"
)

// TestSubmitRefusedAtOnce: a submit on a subject the account may not publish to
// fails at once with the server's permissions violation, not when its timeout
// runs out with "context deadline exceeded" (the server answers a refused publish
// with an asynchronous -ERR only).
func TestSubmitRefusedAtOnce(t *testing.T) {
	config := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(config, []byte(`authorization {
  users = [
    {user: admin, password: admin-pw}
    {user: reader, password: reader-pw, permissions: {publish: {deny: ["blockferry.jobs.>"]}, subscribe: ">"}}
  ]
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	server := testutil.StartNATSWithConfig(t, config, nil, nats.UserInfo("admin", "admin-pw"))
	nc, err := worker.Connect(worker.ConnectOptions{URLs: server.URL, User: "reader", Password: "reader-pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	client := worker.NewClient(js, worker.DefaultTopology())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = client.Submit(ctx, jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "job-1", Kind: jobs.KindBackup, Disk: "vm1/vda",
		Source: &jobs.Endpoint{URI: "nbd+unix:///?socket=/run/x.sock"}})
	if !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("submit: %v, want a permissions violation", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the refused submit took %v", took)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
}
