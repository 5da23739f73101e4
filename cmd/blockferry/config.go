package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Configuration precedence, for every flag of every command:
//
//	command-line flag > BLOCKFERRY_<FLAG> environment variable > YAML file > default
//
// The environment variable is the flag's name in upper case with dashes as
// underscores (--nats-url: BLOCKFERRY_NATS_URL); the YAML file (--config, or
// BLOCKFERRY_CONFIG) maps flag names to values, lists for repeatable flags.
// Secrets have no flag, only variables: BLOCKFERRY_KEY, BLOCKFERRY_NATS_PASSWORD,
// BLOCKFERRY_NATS_TOKEN, and the AWS_* chain.

// envName is the environment variable of a flag.
func envName(flag string) string {
	return "BLOCKFERRY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Only settings take values from the environment and the file: the worker's
// flags, NATS connection flags, the repository and its key. The flags that
// describe one job (backup --disk, submit --rate-limit, …) do not, so that a
// worker's environment never leaks into the jobs a shell next to it submits.
const envAnnotation = "blockferry/env"

// settings marks flags of fs as settings: all of them when no name is given.
func settings(fs *pflag.FlagSet, names ...string) {
	mark := func(f *pflag.Flag) {
		if f.Name != "help" {
			_ = fs.SetAnnotation(f.Name, envAnnotation, []string{envName(f.Name)})
		}
	}
	if len(names) == 0 {
		fs.VisitAll(mark)
		return
	}
	for _, n := range names {
		if f := fs.Lookup(n); f != nil {
			mark(f)
		}
	}
}

// takesEnv reports whether f is a setting.
func takesEnv(f *pflag.Flag) bool {
	_, ok := f.Annotations[envAnnotation]
	return ok
}

// settingNames are the settings of every command: a file may be shared by the
// worker and the commands used next to it, so a key is a typo only when no command
// knows it.
func settingNames(root *cobra.Command) map[string]bool {
	names := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if takesEnv(f) {
				names[f.Name] = true
			}
		})
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) {
			if takesEnv(f) {
				names[f.Name] = true
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return names
}

// annotateEnv appends each flag's environment variable to its help text, so that
// --help lists everything a deployment can set.
func annotateEnv(root *cobra.Command) {
	var walk func(c *cobra.Command)
	seen := map[*pflag.Flag]bool{}
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.LocalNonPersistentFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if takesEnv(f) && !seen[f] {
					seen[f] = true
					f.Usage += " (env " + envName(f.Name) + ")"
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// applyConfig sets every flag of cmd that the command line left alone from the
// environment or, failing that, from the configuration file.
func applyConfig(cmd *cobra.Command, file string) error {
	values := map[string]any{}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		if err := yaml.Unmarshal(data, &values); err != nil {
			return fmt.Errorf("config file %s: %w", file, err)
		}
	}
	errs := flattenSections(file, values)
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || !takesEnv(f) {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok && v != "" {
			if err := setFlag(f, []string{v}, true); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", envName(f.Name), err))
			}
			return
		}
		if v, ok := values[f.Name]; ok {
			if err := setFlag(f, yamlStrings(v), false); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %s: %v", file, f.Name, err))
			}
		}
	})
	known := settingNames(cmd.Root())
	for k := range values {
		if !known[k] && !configSections[k] {
			errs = append(errs, fmt.Sprintf("%s: unknown setting %q", file, k))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("configuration: %s", strings.Join(errs, "; "))
	}
	return nil
}

// settingSections are the configuration file's sections that group settings:
// each of their keys stands for a flag.
//
//	nbd_tls: {certificates: /etc/pki/blockferry, verify_peer: true}
//	allow: {sources: ["nbd+unix:///*?socket=/run/blockferry/*.sock"], targets: […]}
var settingSections = map[string]map[string]string{
	"nbd_tls": {"certificates": "nbd-tls-certificates", "psk_file": "nbd-tls-psk-file",
		"username": "nbd-tls-username", "verify_peer": "nbd-tls-verify-peer"},
	"allow": {"sources": "allow-source", "targets": "allow-target"},
}

// flattenSections replaces the sections of values by the flags their keys stand
// for, and returns what is wrong: a section that is no mapping, an unknown key,
// a setting given both in a section and as a flag name.
func flattenSections(file string, values map[string]any) []string {
	var errs []string
	for section, keys := range settingSections {
		v, ok := values[section]
		if !ok {
			continue
		}
		delete(values, section)
		fields, ok := v.(map[string]any)
		if !ok {
			errs = append(errs, fmt.Sprintf("%s: %s: want a mapping", file, section))
			continue
		}
		for k, fv := range fields {
			flag, ok := keys[k]
			switch {
			case !ok:
				errs = append(errs, fmt.Sprintf("%s: %s: unknown setting %q", file, section, k))
			case has(values, flag):
				errs = append(errs, fmt.Sprintf("%s: %s.%s and %s set the same thing", file, section, k, flag))
			default:
				values[flag] = fv
			}
		}
	}
	sort.Strings(errs)
	return errs
}

// setFlag sets f as if given on the command line; a slice flag from the
// environment takes a comma-separated list.
func setFlag(f *pflag.Flag, vals []string, fromEnv bool) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		if fromEnv {
			vals = strings.Split(vals[0], ",")
		}
		return sv.Replace(vals)
	}
	if len(vals) != 1 {
		return fmt.Errorf("want one value, got %d", len(vals))
	}
	return f.Value.Set(vals[0])
}

func yamlStrings(v any) []string {
	if list, ok := v.([]any); ok {
		out := make([]string, len(list))
		for i, e := range list {
			out[i] = fmt.Sprint(e)
		}
		return out
	}
	return []string{fmt.Sprint(v)}
}

func has(m map[string]any, key string) bool {
	_, ok := m[key]
	return ok
}
