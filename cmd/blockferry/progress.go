package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/jobs"
)

// progressInterval is how often the progress line of a job run here is redrawn.
const progressInterval = 250 * time.Millisecond

// quietFlag is --quiet of the commands that run a job here (backup, restore,
// verify): no progress line.
func quietFlag(f *pflag.FlagSet, quiet *bool) {
	f.BoolVarP(quiet, "quiet", "q", false, "show no progress line on the terminal")
}

// progressOut is where a job run here draws its progress line: standard error
// when it is a terminal and --quiet is not given, else nowhere (nil). Standard
// output is left to the result, so that with --json it stays one JSON object.
func progressOut(cmd *cobra.Command, quiet bool) io.Writer {
	w := cmd.ErrOrStderr()
	if quiet || !isTerminal(w) {
		return nil
	}
	return w
}

// showProgress redraws p's progress line on w, the same line `submit --wait`
// draws from a worker's progress events, until stop is called; stop draws the
// final figures and ends the line, so that what follows starts on a line of its
// own. Nothing is drawn when w is nil, nor before the job knows its total.
func showProgress(w io.Writer, p *jobs.Progress) (stop func()) {
	if w == nil {
		return func() {}
	}
	draw := func(end string) {
		if s := p.Snapshot(); s.BytesTotal > 0 {
			fmt.Fprintf(w, "\r%s\033[K%s", progressLine(s), end)
		}
	}
	done, drawn := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(drawn)
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			draw("")
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		<-drawn
		draw("\n")
	}
}
