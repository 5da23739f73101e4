package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

func newInitCommand(g *globals) *cobra.Command {
	chunkSize := jobs.ByteSize(jobs.DefaultChunkSize)
	var compression string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a repository (encrypted when a key is given); backup also creates one on first use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := jobs.CheckChunkSize(chunkSize); err != nil {
				return fmt.Errorf("--chunk-size: %w", err)
			}
			store, key, err := g.store(cmd.Context())
			if err != nil {
				return err
			}
			repo, err := repository.Init(cmd.Context(), store, repository.InitOptions{Key: key, ChunkSize: int64(chunkSize), Compression: compression})
			if err != nil {
				return err
			}
			cfg := repo.Config()
			return g.print(cmd.OutOrStdout(), map[string]any{"repository": repo.Location(), "id": cfg.ID, "encrypted": repo.Encrypted(), "chunk_size": cfg.ChunkSize},
				fmt.Sprintf("created repository %s at %s (encrypted: %t)\n", cfg.ID, repo.Location(), repo.Encrypted()))
		},
	}
	cmd.Flags().Var(&chunkSize, "chunk-size", "default chunk size of the repository's backups (power of two, 64KiB to 64MiB)")
	cmd.Flags().StringVar(&compression, "compression", jobs.DefaultCompression, "zstd or none")
	return cmd
}

func newBackupCommand(g *globals) *cobra.Command {
	var jf jobFlags
	var quiet bool
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up a disk exported over NBD (full, or incremental with --bitmap and --parent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := required(cmd, "source", "disk"); err != nil {
				return err
			}
			s, err := jf.job(jobs.KindBackup, cliJobID())
			if err != nil {
				return err
			}
			res, err := runJob(cmd.Context(), g, s, progressOut(cmd, quiet))
			if err != nil {
				return err
			}
			m := res.Backup
			st := m.Stats
			human := fmt.Sprintf("backup %s of %s (%s): %s read, %s written, %s deduplicated, %s reused from parent, %s zero, in %.1fs\n",
				m.ID, m.Disk, m.Kind, bytesText(st.BytesRead), bytesText(st.BytesWritten), bytesText(st.BytesDeduplicated),
				bytesText(st.BytesReused), bytesText(st.BytesZero), st.DurationSeconds)
			return g.print(cmd.OutOrStdout(), backupView(m), human)
		},
	}
	jf.register(cmd.Flags())
	quietFlag(cmd.Flags(), &quiet)
	return cmd
}

func newRestoreCommand(g *globals) *cobra.Command {
	var s jobs.Spec
	var quiet bool
	tgt := &jobs.Endpoint{}
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Restore a backup to a raw file or a writable NBD export",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s.SpecVersion, s.ID, s.Kind, s.Target = jobs.SpecVersion, cliJobID(), jobs.KindRestore, tgt
			if err := required(cmd, "backup", "target"); err != nil {
				return err
			}
			res, err := runJob(cmd.Context(), g, s, progressOut(cmd, quiet))
			if err != nil {
				return err
			}
			r := res.Restore
			return g.print(cmd.OutOrStdout(), r, fmt.Sprintf("restored backup %s to %s: %s written, %s zero, in %.1fs\n",
				r.Backup, tgt.URI, bytesText(r.BytesWritten), bytesText(r.BytesZero), r.DurationSeconds))
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Backup, "backup", "", "backup id to restore")
	f.StringVar(&tgt.URI, "target", "", "file:///path/disk.raw (created sparse) or a writable nbd:// export")
	concurrencyFlag(f, &s.Options.Concurrency)
	quietFlag(f, &quiet)
	return cmd
}

func newVerifyCommand(g *globals) *cobra.Command {
	var s jobs.Spec
	var quiet bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-read and re-hash every chunk of a backup; names missing and corrupt chunks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s.SpecVersion, s.ID, s.Kind = jobs.SpecVersion, cliJobID(), jobs.KindVerify
			if err := required(cmd, "backup"); err != nil {
				return err
			}
			res, err := runJob(cmd.Context(), g, s, progressOut(cmd, quiet))
			if res.Verify != nil {
				r := res.Verify
				human := fmt.Sprintf("backup %s: %d chunks checked, %d missing, %d corrupt\n", r.Backup, r.ChunksChecked, len(r.Missing), len(r.Corrupt))
				for _, c := range r.Missing {
					human += "missing " + c + "\n"
				}
				for _, c := range r.Corrupt {
					human += "corrupt " + c + "\n"
				}
				if perr := g.print(cmd.OutOrStdout(), r, human); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&s.Backup, "backup", "", "backup id to verify")
	cmd.Flags().Var(sourceFlag{&s.Source}, "source", "also compare the backup with this disk (NBD URI or raw file)")
	concurrencyFlag(cmd.Flags(), &s.Options.Concurrency)
	quietFlag(cmd.Flags(), &quiet)
	return cmd
}

func newLsCommand(g *globals) *cobra.Command {
	var disk string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the backups in a repository",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, key, err := g.store(cmd.Context())
			if err != nil {
				return err
			}
			repo, err := repository.Open(cmd.Context(), store, key)
			if err != nil {
				return err
			}
			list, bad, err := repo.ListBackups(cmd.Context(), disk)
			if err != nil {
				return err
			}
			for _, o := range bad {
				fmt.Fprintf(cmd.ErrOrStderr(), "skipped %s: %s\n", o.Name, o.Error)
			}
			views := make([]map[string]any, 0, len(list))
			var b strings.Builder
			tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "BACKUP\tDISK\tKIND\tPARENT\tCOMPLETED\tSIZE\tWRITTEN")
			for _, m := range list {
				views = append(views, backupView(m))
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Disk, m.Kind, orDash(m.Parent),
					m.Completed.Format(time.RFC3339), bytesText(m.Size), bytesText(m.Stats.BytesWritten))
			}
			tw.Flush()
			return g.print(cmd.OutOrStdout(), map[string]any{"backups": views, "skipped": bad}, b.String())
		},
	}
	cmd.Flags().StringVar(&disk, "disk", "", "only the backups of this disk")
	return cmd
}

// runJob validates a job the command line describes and runs it here: the
// command line is one of the boundaries where specs are validated (jobs.Spec).
// Its progress line goes to bar, unless bar is nil (progressOut).
func runJob(ctx context.Context, g *globals, s jobs.Spec, bar io.Writer) (jobs.Result, error) {
	r, err := g.runner()
	if err != nil {
		return jobs.Result{}, err
	}
	if s.Repository == "" && g.repository == "" {
		return jobs.Result{}, fmt.Errorf("--repository is required")
	}
	if err := s.Validate(); err != nil {
		return jobs.Result{}, err
	}
	progress := jobs.NewProgress()
	defer showProgress(bar, progress)()
	return r.Run(ctx, s, progress)
}

// backupView is what commands print of a backup: the manifest without its index.
func backupView(m *repository.Manifest) map[string]any {
	return map[string]any{
		"backup": m.ID, "disk": m.Disk, "kind": m.Kind, "parent": m.Parent, "bitmap": m.Bitmap,
		"size": m.Size, "chunk_size": m.ChunkSize, "started": m.Started, "completed": m.Completed,
		"labels": m.Labels, "stats": m.Stats,
	}
}

// concurrencyFlag is --concurrency of a job: 0 leaves it to the runner.
func concurrencyFlag(f *pflag.FlagSet, n *int) {
	f.IntVar(n, "concurrency", 0, fmt.Sprintf("chunks in flight (default %d)", jobs.DefaultConcurrency))
}

// sourceFlag sets an optional source endpoint.
type sourceFlag struct{ e **jobs.Endpoint }

func (f sourceFlag) String() string {
	if *f.e == nil {
		return ""
	}
	return (*f.e).URI
}
func (f sourceFlag) Set(v string) error { *f.e = &jobs.Endpoint{URI: v}; return nil }
func (f sourceFlag) Type() string       { return "string" }

// required checks flags after the environment and the config file had their say
// (cobra's own check runs before them).
func required(cmd *cobra.Command, names ...string) error {
	for _, n := range names {
		if f := cmd.Flags().Lookup(n); f != nil && f.Value.String() == "" {
			return fmt.Errorf("--%s is required", n)
		}
	}
	return nil
}

func parseLabels(kv []string) (map[string]string, error) {
	if len(kv) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(kv))
	for _, l := range kv {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", l)
		}
		out[k] = v
	}
	return out, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
