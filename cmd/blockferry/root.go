package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"

	"github.com/blockferry/blockferry/jobs"
	"github.com/blockferry/blockferry/sinks"
)

// globals are the flags every command takes.
type globals struct {
	json       bool
	repository string
	keyFile    string
	configFile string
	cpuProfile string
	profile    *os.File
	nbdTLS     nbdTLSFlags
}

// startProfile starts CPU profiling when --cpu-profile is given: figures in
// docs/PERFORMANCE.md come from such profiles.
func (g *globals) startProfile() error {
	if g.cpuProfile == "" {
		return nil
	}
	f, err := os.Create(g.cpuProfile)
	if err != nil {
		return err
	}
	g.profile = f
	return pprof.StartCPUProfile(f)
}

func (g *globals) stopProfile() error {
	if g.profile == nil {
		return nil
	}
	pprof.StopCPUProfile()
	return g.profile.Close()
}

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "blockferry",
		Short:         "Block-level backup of virtual disks over NBD into a deduplicated repository",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.BoolVar(&g.json, "json", false, "print one JSON object as the result")
	pf.StringVar(&g.repository, "repository", "", "repository URI: file:///srv/bf or s3://bucket/prefix?endpoint=…&region=…")
	pf.StringVar(&g.cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the command to this file")
	pf.MarkHidden("cpu-profile")
	pf.StringVar(&g.configFile, "config", os.Getenv("BLOCKFERRY_CONFIG"), "YAML file of settings: flag names as keys (env BLOCKFERRY_CONFIG)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := applyConfig(cmd, g.configFile); err != nil {
			return err
		}
		return g.startProfile()
	}
	root.PersistentPostRunE = func(*cobra.Command, []string) error { return g.stopProfile() }
	pf.StringVar(&g.keyFile, "key-file", "", "file holding the repository encryption key (or the key itself in BLOCKFERRY_KEY)")
	settings(pf, "repository", "key-file")
	g.nbdTLS.register(pf)
	root.AddCommand(
		newInitCommand(g), newBackupCommand(g), newRestoreCommand(g), newVerifyCommand(g), newLsCommand(g),
		newWorkerCommand(g), newSubmitCommand(g), newWatchCommand(g), newStatusCommand(g), newCancelCommand(g),
		newHealthcheckCommand(), newForgetCommand(g), newPruneCommand(g), newCheckCommand(g), newStatsCommand(g),
	)
	root.AddCommand(newServeCommand(g))
	annotateEnv(root)
	return root
}

// key reads the encryption key: from --key-file, else from BLOCKFERRY_KEY. Jobs
// never carry keys.
func (g *globals) key() ([]byte, error) {
	if g.keyFile != "" {
		return readKeyFile(g.keyFile)
	}
	if k := os.Getenv("BLOCKFERRY_KEY"); k != "" {
		return []byte(k), nil
	}
	return nil, nil
}

// store opens the --repository store and reads the key, for the commands that
// work on a repository directly rather than through a job.
func (g *globals) store(ctx context.Context) (sinks.Store, []byte, error) {
	key, err := g.key()
	if err != nil {
		return nil, nil, err
	}
	if g.repository == "" {
		return nil, nil, fmt.Errorf("--repository is required")
	}
	store, err := sinks.OpenStore(ctx, g.repository)
	return store, key, err
}

func (g *globals) runner(extra ...jobs.RunnerOption) (*jobs.Runner, error) {
	key, err := g.key()
	if err != nil {
		return nil, err
	}
	tls, err := g.nbdTLS.tls()
	if err != nil {
		return nil, err
	}
	opts := append([]jobs.RunnerOption{jobs.WithDefaultRepository(g.repository), jobs.WithKey(key), jobs.WithDeviceTLS(tls)}, extra...)
	return jobs.NewRunner(opts...), nil
}

// print writes v as JSON with --json, else the human text.
func (g *globals) print(w io.Writer, v any, human string) error {
	if g.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	_, err := io.WriteString(w, human)
	return err
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func cliJobID() string { return "cli-" + jobs.NewBackupID() }
