// Command blockferry backs up virtual disks at block level: from the command line
// (backup, restore, verify, ls) or as a NATS JetStream worker.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	_ "github.com/blockferry/blockferry/backends/file"
	_ "github.com/blockferry/blockferry/backends/nbd"
	_ "github.com/blockferry/blockferry/sinks/file"
	_ "github.com/blockferry/blockferry/sinks/s3"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "blockferry: %s\n", oneLine(err.Error()))
		os.Exit(1)
	}
}
