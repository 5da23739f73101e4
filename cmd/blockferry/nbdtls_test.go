package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigSections: worker.yaml's nbd_tls: and allow: sections set the flags
// their keys stand for; unknown keys, a setting given twice and a section that
// is no mapping are errors.
func TestConfigSections(t *testing.T) {
	dir := t.TempDir()
	write := func(name, yaml string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, env := range []string{"BLOCKFERRY_NBD_TLS_CERTIFICATES", "BLOCKFERRY_NBD_TLS_VERIFY_PEER", "BLOCKFERRY_ALLOW_SOURCE", "BLOCKFERRY_ALLOW_TARGET"} {
		t.Setenv(env, "")
	}
	good := write("good.yaml", "nbd_tls: {certificates: /etc/pki/bf, verify_peer: false}\n"+
		"allow: {sources: [\"nbds+unix:///*?socket=/run/bf/*.sock\"], targets: [\"file:///srv/restore/*\"]}\n")
	cmd, _, err := newRootCommand().Find([]string{"worker"})
	if err != nil {
		t.Fatal(err)
	}
	if err := applyConfig(cmd, good); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{
		"nbd-tls-certificates": "/etc/pki/bf", "nbd-tls-verify-peer": "false",
		"allow-source": "[nbds+unix:///*?socket=/run/bf/*.sock]", "allow-target": "[file:///srv/restore/*]",
	} {
		if got := cmd.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("%s = %s, want %s", flag, got, want)
		}
	}
	for yaml, want := range map[string]string{
		"nbd_tls: {certificate: /x}\n":                   `nbd_tls: unknown setting "certificate"`,
		"allow: {sources: [a]}\nallow-source: [b]\n":     "allow.sources and allow-source set the same thing",
		"nbd_tls: /etc/pki\n":                            "nbd_tls: want a mapping",
		"allow: {sources: [a], target: [b]}\n":           `allow: unknown setting "target"`,
		"nbd_tls: {psk_file: /x, username: u, foo: 1}\n": `unknown setting "foo"`,
	} {
		cmd, _, _ := newRootCommand().Find([]string{"worker"})
		err := applyConfig(cmd, write("bad.yaml", yaml))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %s", yaml, err, want)
		}
	}
}

// TestNBDTLSSettings: the TLS settings are checked before anything connects,
// and a TLS query on a plain NBD URI is refused on the command line.
func TestNBDTLSSettings(t *testing.T) {
	dir := t.TempDir()
	psk := filepath.Join(dir, "keys.psk")
	if err := os.WriteFile(psk, []byte("blockferry:0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flags nbdTLSFlags
		want  string
	}{
		{nbdTLSFlags{certificates: dir, pskFile: psk}, "one or the other"},
		{nbdTLSFlags{pskFile: psk}, "open to group or others"},
		{nbdTLSFlags{certificates: psk}, "not a directory"},
		{nbdTLSFlags{certificates: filepath.Join(dir, "none")}, "no such file"},
	} {
		if _, err := c.flags.tls(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.flags, err, c.want)
		}
	}
	if err := os.Chmod(psk, 0o600); err != nil {
		t.Fatal(err)
	}
	f := nbdTLSFlags{pskFile: psk, username: "bf", verifyPeer: true}
	if got, err := f.tls(); err != nil || got.PSKFile != psk || got.Username != "bf" || got.SkipVerifyPeer {
		t.Errorf("PSK settings: %+v, %v", got, err)
	}

	repo := "file://" + filepath.Join(dir, "repo")
	sock := filepath.Join(dir, "none.sock")
	mustFail(t, cli(t, nil, "backup", "--repository", repo, "--disk", "vm1/vda", "--source", "nbd+unix:///?socket="+sock+"&tls=on"), "nbds+unix://")
	mustFail(t, cli(t, nil, "backup", "--repository", repo, "--disk", "vm1/vda", "--source", "nbd://127.0.0.1:1/x?tls-certificates=/etc/pki"), "nbds://")
	mustFail(t, cli(t, []string{"BLOCKFERRY_NBD_TLS_PSK_FILE=" + filepath.Join(dir, "missing")}, "backup", "--repository", repo,
		"--disk", "vm1/vda", "--source", "nbds+unix:///?socket="+sock), "--nbd-tls-psk-file")
}
