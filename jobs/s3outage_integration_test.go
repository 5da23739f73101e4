package jobs_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/blockferry/blockferry/internal/testutil"
	"github.com/blockferry/blockferry/jobs"
)

// TestBackupRidesOutS3Outage: the S3 server is down for a whole minute in the
// middle of a backup. The store's retries last longer than that (sinks/s3), so
// the one attempt waits the outage out and completes: no failure, no second
// attempt, and its restore equals the disk.
func TestBackupRidesOutS3Outage(t *testing.T) {
	if testing.Short() {
		t.Skip("the outage lasts a minute")
	}
	const outage = 60 * time.Second
	srv := testutil.StartS3Server(t)
	testutil.CreateBucket(t, srv.Endpoint, testutil.S3AccessKey, testutil.S3SecretKey, "bkt")
	testutil.S3Env(t, testutil.S3AccessKey, testutil.S3SecretKey)
	r := jobs.NewRunner(jobs.WithDefaultRepository("s3://bkt/outage?endpoint=" + url.QueryEscape(srv.Endpoint)))
	disk, want := rawDisk(t, 16*mib)

	// 5 MiB of data read at 512 KiB/s: the backup runs for about 10 s, and the
	// server stops once it is under way.
	progress := jobs.NewProgress()
	type outcome struct {
		res jobs.Result
		err error
		at  time.Time
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := r.Run(context.Background(), jobs.Spec{SpecVersion: jobs.SpecVersion, ID: "outage", Kind: jobs.KindBackup,
			Disk: "vm1/vda", Source: &jobs.Endpoint{URI: "file://" + disk},
			Options: jobs.Options{ChunkSize: jobs.ByteSize(chunkSize), RateLimit: "512KiB"}}, progress)
		done <- outcome{res, err, time.Now()}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for progress.Snapshot().BytesTotal == 0 { // the repository is open and the backup started
		if time.Now().After(deadline) {
			t.Fatal("the backup did not start within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second)
	srv.Stop()
	stopped := time.Now()
	time.Sleep(outage)
	if err := srv.Start(); err != nil {
		t.Fatalf("restarting the S3 server: %v", err)
	}
	var o outcome
	select {
	case o = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the backup did not end within 2 minutes of the server's return")
	}
	if o.err != nil {
		t.Fatalf("backup across a %v outage: %v", outage, o.err)
	}
	if o.at.Before(stopped.Add(outage)) {
		t.Fatalf("the backup ended %v after the server stopped, before the outage ended: it did not run across it", o.at.Sub(stopped))
	}
	out, err := restoreToFile(t, r, o.res.Backup.ID)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := fileSum(t, out); got != want {
		t.Errorf("restore after the outage: sha256 %s, want %s", got, want)
	}
}
