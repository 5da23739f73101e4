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
	"golang.org/x/term"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/worker"
)

const clientNATSURL = "nats://127.0.0.1:4222"

func newSubmitCommand(g *globals) *cobra.Command {
	var (
		n    natsFlags
		jf   jobFlags
		id   string
		tgt  jobs.Endpoint
		back string
		wait bool
		rf   retentionFlags
		sv   jobs.Spec // a serve's listen and lifetime
	)
	cmd := &cobra.Command{
		Use:   "submit backup|restore|verify|prune|serve",
		Short: "Submit a job to the workers (--wait follows it to its end)",
		Long: "Submit a job to the workers (--wait follows it to its end). A backup takes the flags of the backup command;\n" +
			"a restore takes --backup, --target and --concurrency; a verify --backup, --concurrency and, to compare\n" +
			"the backup with the disk, --source. A prune takes --disk with --keep-* rules (forget that disk's backups\n" +
			"the rules do not keep, then collect garbage), or neither (only collect). A serve takes --backup, --listen,\n" +
			"--lifetime and --concurrency; with --wait it prints the export's URI once the export is up and returns (the\n" +
			"job serves on until its lifetime ends or `blockferry cancel` stops it).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if id == "" {
				id = args[0] + "-" + jobs.NewBackupID()
			}
			s, err := jf.job(args[0], id)
			if err != nil {
				return err
			}
			s.Repository, s.Backup = g.repository, back
			if s.Retention, err = rf.retention(); err != nil {
				return err
			}
			s.Listen, s.Options.Lifetime = sv.Listen, sv.Options.Lifetime
			if tgt.URI != "" {
				s.Target = &tgt
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
			if s.Kind == jobs.KindServe {
				return waitExport(cmd.Context(), g, c, s.ID, cmd.OutOrStdout())
			}
			return followJob(cmd.Context(), g, c, s.ID, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	n.register(f, clientNATSURL)
	f.StringVar(&id, "id", "", "job id (default: generated); re-submitting an id is a no-op")
	jf.register(f)
	f.Lookup("concurrency").Usage = "chunks in flight (default: the worker's --concurrency)"
	f.StringVar(&back, "backup", "", "backup id (restore, verify)")
	f.StringVar(&tgt.URI, "target", "", "raw file or writable NBD export (restore)")
	rf.register(f)
	f.StringVar(&sv.Listen, "listen", "", "unix:///path/to.sock or tcp://127.0.0.1:port: where the export listens (serve; on the worker's --allow-serve-listen list)")
	f.StringVar(&sv.Options.Lifetime, "lifetime", "", "how long the export is served, e.g. 90m (serve; default and maximum: the worker's --max-serve-lifetime)")
	f.BoolVar(&wait, "wait", false, "follow the job with a progress bar until it ends; exit status says how (serve: until its export is up)")
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
			line := progressLine(eventProgress(ev.Data))
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
	default:
		return jobEnd(id, last)
	}
}

// waitExport waits until serve job id's export is up and prints its URI (with
// --json, the event that says so). A job that ends first is an error, as
// followJob says it.
func waitExport(ctx context.Context, g *globals, c *worker.Client, id string, out io.Writer) error {
	var up *worker.Event
	var last worker.Event
	err := c.Watch(ctx, id, true, func(ev worker.Event) bool {
		last = ev
		if ev.Data.Export != "" {
			up = &ev
			return false
		}
		return true
	})
	if err != nil {
		return err
	}
	if up == nil {
		return jobEnd(id, last)
	}
	return g.print(out, up, up.Data.Export+"\n")
}

// jobEnd is the error of a job that ended as last says without completing.
func jobEnd(id string, last worker.Event) error {
	if last.Type == worker.EventFailed {
		return fmt.Errorf("job %s failed: %s: %s", id, last.Data.Error.Code, printable(last.Data.Error.Message))
	}
	return fmt.Errorf("job %s %s", id, strings.TrimPrefix(last.Type, "io.blockferry.job."))
}

// eventProgress is the progress a worker's event reports.
func eventProgress(d worker.EventData) jobs.ProgressSnapshot {
	return jobs.ProgressSnapshot{BytesTotal: d.BytesTotal, BytesDone: d.BytesDone, BytesWritten: d.BytesWritten,
		BytesDeduplicated: d.BytesDeduplicated, RateBytesPerSec: d.RateBytesPerSec, ETASeconds: d.ETASeconds}
}

// progressLine is a job's progress as one line: bar, percentage, bytes done of
// the total, rate and ETA. `submit --wait` draws it from a worker's events, the
// commands that run a job here from the job's own counters.
func progressLine(d jobs.ProgressSnapshot) string {
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
		s += " " + progressLine(eventProgress(d))
	case d.Error != nil:
		s += fmt.Sprintf(": %s: %s", d.Error.Code, d.Error.Message)
		if d.RetryIn > 0 {
			s += fmt.Sprintf(" (retry in %.0fs)", d.RetryIn)
		}
	case d.Backup != "":
		s += " backup " + d.Backup
	case ev.Type == worker.EventCompleted && d.Kind == jobs.KindPrune:
		s += ": " + pruneSummary(d.Stats)
	}
	return s
}

// isTerminal reports whether w is a terminal, where a progress bar redraws one
// line instead of printing a line per update.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
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
