package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks/repository"
)

// openRepository opens the repository the global flags name.
func openRepository(ctx context.Context, g *globals) (*repository.Repository, error) {
	store, key, err := g.store(ctx)
	if err != nil {
		return nil, err
	}
	return repository.Open(ctx, store, key)
}

func newForgetCommand(g *globals) *cobra.Command {
	var (
		rf      retentionFlags
		disk    string
		backups []string
		dryRun  bool
	)
	cmd := &cobra.Command{
		Use:   "forget",
		Short: "Delete backups by retention policy or by id (their chunks are collected by prune)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, err := openRepository(cmd.Context(), g)
			if err != nil {
				return err
			}
			if len(backups) > 0 {
				if !dryRun {
					if err := repo.Forget(cmd.Context(), backups); err != nil {
						return err
					}
				}
				return g.print(cmd.OutOrStdout(), forgetView(nil, backups, dryRun), forgetText(nil, backups, dryRun))
			}
			if disk == "" {
				return fmt.Errorf("--disk (with --keep-* rules) or --backup is required")
			}
			p, err := rf.policy()
			if err != nil {
				return err
			}
			decisions, remove, bad, err := repo.ForgetByPolicy(cmd.Context(), disk, p, dryRun)
			if err != nil {
				return err
			}
			for _, b := range bad {
				fmt.Fprintf(cmd.ErrOrStderr(), "skipped %s: %s\n", b.Name, b.Error)
			}
			return g.print(cmd.OutOrStdout(), forgetView(decisions, remove, dryRun), forgetText(decisions, remove, dryRun))
		},
	}
	f := cmd.Flags()
	f.StringVar(&disk, "disk", "", "the disk whose backups the policy applies to")
	rf.register(f)
	f.StringArrayVar(&backups, "backup", nil, "forget this backup (repeatable; no policy applies)")
	f.BoolVar(&dryRun, "dry-run", false, "print what would be forgotten, change nothing")
	return cmd
}

func forgetView(ds []repository.Decision, remove []string, dry bool) map[string]any {
	var kept []map[string]any
	for _, d := range ds {
		if d.Keep {
			kept = append(kept, map[string]any{"backup": d.Backup.ID, "reasons": d.Reasons})
		}
	}
	return map[string]any{"forgotten": remove, "kept": kept, "dry_run": dry}
}

func forgetText(ds []repository.Decision, remove []string, dry bool) string {
	var b strings.Builder
	for _, d := range ds {
		if d.Keep {
			fmt.Fprintf(&b, "keep   %s  %s  (%s)\n", d.Backup.ID, d.Backup.Started.Local().Format(time.RFC3339), strings.Join(d.Reasons, ", "))
		}
	}
	verb := "forget"
	if dry {
		verb = "would forget"
	}
	for _, id := range remove {
		fmt.Fprintf(&b, "%s %s\n", verb, id)
	}
	fmt.Fprintf(&b, "%d backups %s; run prune to free their chunks\n", len(remove), map[bool]string{true: "would be forgotten", false: "forgotten"}[dry])
	return b.String()
}

func newPruneCommand(g *globals) *cobra.Command {
	var (
		dryRun bool
		grace  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Collect chunks, checkpoints and leftovers that no backup needs (safe beside running backups)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, err := openRepository(cmd.Context(), g)
			if err != nil {
				return err
			}
			if grace > 0 && !dryRun {
				if err := repo.SetGrace(cmd.Context(), grace); err != nil {
					return err
				}
			}
			rep, err := repo.Prune(cmd.Context(), repository.PruneOptions{DryRun: dryRun})
			if err != nil {
				return err
			}
			verb := "deleted"
			if dryRun {
				verb = "would delete"
			}
			human := fmt.Sprintf("%s %d chunks (%s) from %d condemned lists, %d checkpoints, %d pins; condemned %d chunks (%s) for a later prune; %d lists pending; %d chunks stored (%s)\n",
				verb, rep.ChunksDeleted, bytesText(rep.BytesFreed), rep.ListsSwept, rep.CheckpointsDeleted, rep.PinsDeleted,
				rep.ChunksCondemned, bytesText(rep.BytesCondemned), rep.ListsPending, rep.ChunksTotal, bytesText(rep.BytesTotal))
			return g.print(cmd.OutOrStdout(), rep, human)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be collected, change nothing")
	cmd.Flags().DurationVar(&grace, "grace", 0, "set the repository's grace period (default 24h); lower it only while no backup runs")
	return cmd
}

func newCheckCommand(g *globals) *cobra.Command {
	var subset string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that every manifest decodes and every chunk it names exists; optionally re-hash a sample",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fraction, err := parseFraction(subset)
			if err != nil {
				return err
			}
			repo, err := openRepository(cmd.Context(), g)
			if err != nil {
				return err
			}
			rep, err := repo.Check(cmd.Context(), repository.CheckOptions{ReadData: fraction})
			if err != nil {
				return err
			}
			var b strings.Builder
			fmt.Fprintf(&b, "%d backups, %d chunks referenced, %d stored, %d read back\n", rep.Backups, rep.ChunksNamed, rep.ChunksStored, rep.ChunksRead)
			for _, o := range rep.BadManifests {
				fmt.Fprintf(&b, "bad manifest %s: %s\n", o.Name, o.Error)
			}
			for _, c := range rep.MissingChunks {
				fmt.Fprintf(&b, "missing chunk %s\n", c)
			}
			for _, c := range rep.CorruptChunks {
				fmt.Fprintf(&b, "corrupt chunk: %s\n", c)
			}
			if err := g.print(cmd.OutOrStdout(), rep, b.String()); err != nil {
				return err
			}
			if !rep.OK {
				return fmt.Errorf("check failed: %d bad manifests, %d missing and %d corrupt chunks",
					len(rep.BadManifests), len(rep.MissingChunks), len(rep.CorruptChunks))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&subset, "read-data-subset", "", "also read and re-hash this share of the chunks (5% or 0.05)")
	return cmd
}

// parseFraction reads "5%", "0.05" or "" (zero).
func parseFraction(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	scale := 1.0
	if t, ok := strings.CutSuffix(s, "%"); ok {
		s, scale = t, 100
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v/scale > 1 {
		return 0, fmt.Errorf("--read-data-subset %q: want a percentage up to 100%% or a fraction up to 1", s)
	}
	return v / scale, nil
}

func newStatsCommand(g *globals) *cobra.Command {
	var disk string
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Backups, logical and stored bytes and the deduplication ratio, in all and per disk",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, err := openRepository(cmd.Context(), g)
			if err != nil {
				return err
			}
			st, err := repo.Stats(cmd.Context(), disk)
			if err != nil {
				return err
			}
			var b strings.Builder
			line := func(name string, d repository.DiskStats) {
				fmt.Fprintf(&b, "%-20s %6d backups  %10s logical  %10s stored  %6.2fx\n", name, d.Backups, bytesText(d.Logical), bytesText(d.Stored), d.DedupRatio)
			}
			for name, d := range st.Disks {
				line(name, *d)
			}
			line("all", st.DiskStats)
			fmt.Fprintf(&b, "repository: %d chunks, %s stored\n", st.ChunksTotal, bytesText(st.StoredTotal))
			return g.print(cmd.OutOrStdout(), st, b.String())
		},
	}
	cmd.Flags().StringVar(&disk, "disk", "", "only this disk's backups")
	return cmd
}

// pruneSummary says in a line what a prune job's completed event reports.
func pruneSummary(stats any) string {
	var r jobs.PruneResult
	if data, err := json.Marshal(stats); err != nil || json.Unmarshal(data, &r) != nil {
		return "no figures"
	}
	return fmt.Sprintf("forgot %d backups, kept %d; deleted %d chunks (%s), condemned %d (%s)",
		len(r.Forgotten), r.Kept, r.ChunksDeleted, bytesText(r.BytesFreed), r.ChunksCondemned, bytesText(r.BytesCondemned))
}
