package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/worker"
)

const clientNATSURL = "nats://127.0.0.1:4222"

func newSubmitCommand(g *globals) *cobra.Command {
	var (
		n      natsFlags
		s      jobs.Spec
		src    jobs.Endpoint
		tgt    jobs.Endpoint
		labels []string
		wait   bool
	)
	cmd := &cobra.Command{
		Use:   "submit backup|restore|verify",
		Short: "Submit a job to the workers (--wait follows it to its end)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s.SpecVersion, s.Kind, s.Repository = jobs.SpecVersion, args[0], g.repository
			if s.ID == "" {
				s.ID = s.Kind + "-" + jobs.NewBackupID()
			}
			if src.URI != "" {
				s.Source = &src
			}
			if tgt.URI != "" {
				s.Target = &tgt
			}
			var err error
			if s.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			c, closeConn, err := n.client("blockferry-submit")
			if err != nil {
				return err
			}
			defer closeConn()
			isNew, err := c.Submit(cmd.Context(), s)
			if err != nil {
				return err
			}
			if !wait {
				return g.print(cmd.OutOrStdout(), map[string]any{"job_id": s.ID, "duplicate": !isNew},
					fmt.Sprintf("submitted %s job %s%s\n", s.Kind, s.ID, map[bool]string{true: "", false: " (duplicate: already submitted)"}[isNew]))
			}
			return followJob(cmd.Context(), g, c, s.ID, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	n.register(f, clientNATSURL)
	f.StringVar(&s.ID, "id", "", "job id (default: generated); re-submitting an id is a no-op")
	f.StringVar(&s.Disk, "disk", "", "disk name (backup)")
	f.StringVar(&src.URI, "source", "", "NBD URI of the disk (backup; verify: compare with it)")
	f.StringVar(&src.Bitmap, "bitmap", "", "dirty bitmap (incremental backup)")
	f.StringVar(&s.Parent, "parent", "", "parent backup id (incremental backup)")
	f.StringVar(&s.Backup, "backup", "", "backup id (restore, verify)")
	f.StringVar(&tgt.URI, "target", "", "raw file or writable NBD export (restore)")
	f.Int64Var(&s.Options.ChunkSize, "chunk-size", 0, "chunk size in bytes")
	f.StringVar(&s.Options.Compression, "compression", "", "zstd or none")
	f.IntVar(&s.Options.Concurrency, "concurrency", 0, "chunks in flight")
	f.StringVar(&s.Options.RateLimit, "rate-limit", "", "cap on source reads per second, e.g. 200MiB")
	f.StringSliceVar(&labels, "label", nil, "key=value label (repeatable)")
	f.BoolVar(&wait, "wait", false, "follow the job with a progress bar until it ends; exit status says how")
	return cmd
}

// followJob shows a job's events until its terminal one, and fails unless it
// completed.
func followJob(ctx context.Context, g *globals, c *worker.Client, id string, out, errOut io.Writer) error {
	var last worker.Event
	tty := isTerminal(errOut)
	err := c.Watch(ctx, id, true, func(ev worker.Event) bool {
		last = ev
		if g.json {
			return true
		}
		if ev.Type == worker.EventProgress {
			line := progressLine(ev.Data)
			if tty {
				fmt.Fprintf(errOut, "\r%s", line)
			} else {
				fmt.Fprintln(errOut, line)
			}
			return true
		}
		if tty {
			fmt.Fprint(errOut, "\r\033[K")
		}
		fmt.Fprintln(errOut, eventLine(ev))
		return true
	})
	if err != nil {
		return err
	}
	if g.json {
		if err := g.print(out, last, ""); err != nil {
			return err
		}
	}
	switch last.Type {
	case worker.EventCompleted:
		if !g.json && last.Data.Backup != "" {
			fmt.Fprintln(out, last.Data.Backup)
		}
		return nil
	case worker.EventFailed:
		return fmt.Errorf("job %s failed: %s: %s", id, last.Data.Error.Code, printable(last.Data.Error.Message))
	default:
		return fmt.Errorf("job %s %s", id, strings.TrimPrefix(last.Type, "io.blockferry.job."))
	}
}

func progressLine(d worker.EventData) string {
	pct := 0.0
	if d.BytesTotal > 0 {
		pct = 100 * float64(d.BytesDone) / float64(d.BytesTotal)
	}
	const width = 30
	filled := int(pct / 100 * width)
	return fmt.Sprintf("[%s%s] %5.1f%% %s/%s %s/s eta %ds", strings.Repeat("#", filled), strings.Repeat(".", width-filled), pct,
		bytesText(d.BytesDone), bytesText(d.BytesTotal), bytesText(int64(d.RateBytesPerSec)), int(d.ETASeconds))
}

func eventLine(ev worker.Event) string {
	d := ev.Data
	s := fmt.Sprintf("%s %-9s %s %s attempt %d on %s", ev.Time.Local().Format("15:04:05"), strings.TrimPrefix(ev.Type, "io.blockferry.job."),
		d.JobID, d.Kind, d.Attempt, d.Worker)
	switch {
	case ev.Type == worker.EventProgress:
		s += " " + progressLine(d)
	case d.Error != nil:
		s += fmt.Sprintf(": %s: %s", d.Error.Code, d.Error.Message)
		if d.RetryIn > 0 {
			s += fmt.Sprintf(" (retry in %.0fs)", d.RetryIn)
		}
	case d.Backup != "":
		s += " backup " + d.Backup
	}
	return s
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func newWatchCommand(g *globals) *cobra.Command {
	var n natsFlags
	var replay bool
	cmd := &cobra.Command{
		Use:   "watch [JOB_ID]",
		Short: "Show job events as they happen (one job: from its first event to its end)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id, replay = args[0], true
			}
			c, closeConn, err := n.client("blockferry-watch")
			if err != nil {
				return err
			}
			defer closeConn()
			enc := json.NewEncoder(cmd.OutOrStdout())
			return c.Watch(cmd.Context(), id, replay, func(ev worker.Event) bool {
				if g.json {
					enc.Encode(ev)
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), printable(eventLine(ev)))
				}
				return true
			})
		},
	}
	n.register(cmd.Flags(), clientNATSURL)
	cmd.Flags().BoolVar(&replay, "replay", false, "start from the oldest stored event, not from now")
	return cmd
}

func newStatusCommand(g *globals) *cobra.Command {
	var n natsFlags
	cmd := &cobra.Command{
		Use:   "status JOB_ID",
		Short: "Show a job's latest state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeConn, err := n.client("blockferry-status")
			if err != nil {
				return err
			}
			defer closeConn()
			st, err := c.Status(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			human := fmt.Sprintf("%s: %s (%s %s, attempt %d, worker %s, updated %s)", st.JobID, st.State, st.Kind, st.Disk, st.Attempt,
				orDash(st.Worker), st.Updated.Local().Format(time.RFC3339))
			if st.Backup != "" {
				human += " backup " + st.Backup
			}
			if st.Error != nil {
				human += fmt.Sprintf(": %s: %s", st.Error.Code, st.Error.Message)
			}
			return g.print(cmd.OutOrStdout(), st, printable(human)+"\n")
		},
	}
	n.register(cmd.Flags(), clientNATSURL)
	return cmd
}

func newCancelCommand(g *globals) *cobra.Command {
	var n natsFlags
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID",
		Short: "Cancel a queued or running job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeConn, err := n.client("blockferry-cancel")
			if err != nil {
				return err
			}
			defer closeConn()
			if err := c.Cancel(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), map[string]any{"job_id": args[0], "cancel_requested": true},
				fmt.Sprintf("cancellation of %s requested\n", args[0]))
		},
	}
	n.register(cmd.Flags(), clientNATSURL)
	return cmd
}

// redactURI drops user information from a URI before it is logged.
func redactURI(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URI)"
	}
	u.User = nil
	return u.String()
}
