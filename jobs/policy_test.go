package jobs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPolicyRepository(t *testing.T) {
	p, err := NewPolicy(PolicyConfig{
		Repositories:      map[string]NamedRepository{"prod": {URI: "s3://b/p", Key: []byte("k1")}, "lab": {URI: "file:///srv/lab"}},
		DefaultRepository: "prod",
	})
	if err != nil {
		t.Fatal(err)
	}
	for named, want := range map[string]string{"": "s3://b/p", "prod": "s3://b/p", "lab": "file:///srv/lab"} {
		uri, _, err := p.repository(named)
		if err != nil || uri != want {
			t.Errorf("%q: %q, %v; want %q", named, uri, err, want)
		}
	}
	for _, named := range []string{"PROD", "other", "file:///etc/cron.d", "s3://loot/x?endpoint=http://attacker:9000", "/etc/cron.d"} {
		if _, _, err := p.repository(named); !errors.Is(err, ErrForbidden) || Classify(err).Code != CodeForbidden || Classify(err).Retryable {
			t.Errorf("%q: %v, want forbidden", named, err)
		}
	}
	open, err := NewPolicy(PolicyConfig{RepositoryURIs: true, URIKey: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	if uri, key, err := open.repository("file:///srv/x"); err != nil || uri != "file:///srv/x" || string(key) != "k" {
		t.Errorf("URIs allowed: %q %q %v", uri, key, err)
	}
	for _, uri := range []string{"s3://b/p?endpoint=http://attacker:9000&credentials_file=/etc/blockferry/prod.env", "s3://b/p?profile=prod"} {
		if _, _, err := open.repository(uri); !errors.Is(err, ErrForbidden) {
			t.Errorf("a job URI that picks the worker's credentials: %v, want forbidden", err)
		}
	}
	if _, _, err := open.repository(""); !errors.Is(err, ErrForbidden) {
		t.Errorf("no default: %v", err)
	}
	if _, err := NewPolicy(PolicyConfig{DefaultRepository: "nope"}); err == nil {
		t.Error("a default that is not in the table was accepted")
	}
}

func TestPolicySources(t *testing.T) {
	dir, _ := filepath.EvalSymlinks(t.TempDir())
	images := filepath.Join(dir, "images")
	outside := filepath.Join(dir, "outside")
	for _, d := range []string{images, filepath.Join(images, "sub"), outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(images, "a.raw"), filepath.Join(images, "sub", "b.raw"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(images, "link.raw")); err != nil {
		t.Fatal(err)
	}
	defaults, err := NewPolicy(PolicyConfig{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(PolicyConfig{Sources: []string{
		"file://" + images + "/**", "file:///dev/*", "nbd://*.hv.example.net:10809/*", "nbd+unix:///*?socket=/run/bf/*.sock",
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p    *Policy
		uri  string
		want string // "" for forbidden
	}{
		{defaults, "nbd+unix:///vda?socket=/run/any/vm.sock", "nbd+unix:///vda?socket=/run/any/vm.sock"},
		{defaults, "file://" + images + "/a.raw", ""},
		{defaults, "nbd://host:10809/vda", ""},
		{defaults, "/etc/shadow", ""},
		{p, "file://" + images + "/a.raw", "file://" + images + "/a.raw"},
		{p, images + "/sub/b.raw", "file://" + images + "/sub/b.raw"},
		{p, "file://" + images + "/../outside/secret", ""},
		{p, "file://" + images + "/link.raw", ""}, // a symlink out of the directory
		{p, "file://" + images + "/sub", ""},      // a directory
		{p, "file:///dev/null", ""},               // a character device
		{p, "file:///etc/shadow", ""},
		{p, "nbd://VM1.hv.example.net/vda", "nbd://vm1.hv.example.net:10809/vda"},
		{p, "nbd://vm1.hv.example.net:22/vda", ""},
		{p, "nbd://attacker:9000/x", ""},
		{p, "nbd://vm1.hv.example.net/vda?tls=require", ""},
		{p, "nbd+unix:///vda?socket=/run/bf/vm.sock", "nbd+unix:///vda?socket=/run/bf/vm.sock"},
		{p, "nbd+unix:///vda?socket=/run/bf/../x/vm.sock", ""},
		{p, "nbd+unix:///vda?socket=/run/bf/vm.sock&tls-certificates=/etc", ""},
		{p, "nbd+unix:///vda?socket=/run/other/vm.sock", ""},
		{p, "nbd://user:pw@vm1.hv.example.net/vda", ""},
	} {
		got, err := admitSource(c.p.sources, c.uri)
		if c.want == "" {
			if !errors.Is(err, ErrForbidden) {
				t.Errorf("%s: %q, %v; want forbidden", c.uri, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.uri, got, err, c.want)
		}
	}
}

func TestPolicyTargets(t *testing.T) {
	dir, _ := filepath.EvalSymlinks(t.TempDir())
	restore := filepath.Join(dir, "restore")
	if err := os.Mkdir(restore, 0o755); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(restore, "old.raw")
	if err := os.WriteFile(existing, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "victim"), filepath.Join(restore, "escape.raw")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(restore, "up")); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(PolicyConfig{Targets: []string{"file://" + restore + "/*"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		uri       string
		overwrite bool
		ok        bool
	}{
		{"file://" + restore + "/new.raw", false, true},
		{"file://" + existing, false, false},
		{"file://" + existing, true, true},
		{"file://" + restore + "/escape.raw", true, false}, // a dangling symlink out
		{"file://" + restore + "/up/victim", true, false},  // through a symlinked directory
		{"file://" + dir + "/victim", true, false},
		{"file://" + restore + "/sub/x.raw", false, false}, // "*" stays in the directory
	} {
		_, err := admitTarget(p.targets, c.uri, c.overwrite)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrForbidden)) {
			t.Errorf("%s (overwrite %t): %v; want allowed %t", c.uri, c.overwrite, err, c.ok)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "victim")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a check created a file: %v", err)
	}
}

func TestAdmitSpec(t *testing.T) {
	p, err := NewPolicy(PolicyConfig{Repositories: map[string]NamedRepository{"default": {URI: "file:///srv/r"}}, DefaultRepository: "default"})
	if err != nil {
		t.Fatal(err)
	}
	s := Spec{SpecVersion: 1, ID: "j", Kind: KindBackup, Disk: "d", Source: &Endpoint{URI: "nbd+unix:///?socket=/run/x.sock", Overwrite: true}}
	if _, err := p.admit(s); !errors.Is(err, ErrInvalid) {
		t.Errorf("overwrite on a source: %v", err)
	}
	s.Source.Overwrite = false
	g, err := p.admit(s)
	if err != nil || g.repository != "file:///srv/r" || g.spec.Source.URI != "nbd+unix:///?socket=/run/x.sock" || s.Source.URI != "nbd+unix:///?socket=/run/x.sock" {
		t.Errorf("grant %+v, %v (job %+v)", g, err, s.Source)
	}
}

func TestPolicyServe(t *testing.T) {
	dir, _ := filepath.EvalSymlinks(t.TempDir())
	serveDir := filepath.Join(dir, "serve")
	if err := os.Mkdir(serveDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(serveDir, "up")); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(PolicyConfig{Repositories: map[string]NamedRepository{"r": {URI: "file:///r"}}, DefaultRepository: "r",
		Listens: []string{"unix://" + serveDir + "/*.sock", "unix://" + serveDir + "/up/*.sock", "tcp://127.0.0.1:*"}, MaxServeLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	job := func(listen, lifetime string) Spec {
		return Spec{SpecVersion: 1, ID: "s", Kind: KindServe, Backup: "b", Listen: listen, Options: Options{Lifetime: lifetime}}
	}
	for listen, want := range map[string]string{
		"unix://" + serveDir + "/a.sock": "unix://" + serveDir + "/a.sock",
		"tcp://127.0.0.1:0":              "tcp://127.0.0.1:0",
		"tcp://127.0.0.1:10809":          "tcp://127.0.0.1:10809",
	} {
		if g, err := p.admit(job(listen, "1h")); err != nil || g.spec.Listen != want {
			t.Errorf("%s: %q, %v; want %q", listen, g.spec.Listen, err, want)
		}
	}
	for _, s := range []Spec{
		job("unix://"+dir+"/a.sock", ""),            // not on the list
		job("unix://"+serveDir+"/../a.sock", ""),    // .. parts
		job("unix://"+serveDir+"/up/a.sock", ""),    // on the list as written, resolves off it
		job("unix://"+serveDir+"/a.sock", "61m"),    // beyond the maximum
		job("tcp://0.0.0.0:10809", ""),              // not loopback: no TLS
		job("tcp://localhost.attacker.net:1", ""),   // not loopback
		job("unix://"+serveDir+"/a.sock?x=1", "1h"), // a query
	} {
		if _, err := p.admit(s); !errors.Is(err, ErrForbidden) {
			t.Errorf("%s lifetime %q: %v, want forbidden", s.Listen, s.Options.Lifetime, err)
		}
	}
	none, err := NewPolicy(PolicyConfig{Repositories: map[string]NamedRepository{"r": {URI: "file:///r"}}, DefaultRepository: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := none.admit(job("unix://"+serveDir+"/a.sock", "")); !errors.Is(err, ErrForbidden) {
		t.Errorf("no listen allow-list: %v, want forbidden", err)
	}
	if _, err := NewPolicy(PolicyConfig{Listens: []string{"tcp://0.0.0.0:*"}}); err == nil {
		t.Error("a listen pattern off loopback was accepted")
	}
}

// TestPolicyPrune: prune jobs delete backups, so a worker runs them only when its
// operator says so.
func TestPolicyPrune(t *testing.T) {
	prune := Spec{SpecVersion: SpecVersion, ID: "p1", Kind: KindPrune}
	for allowed, want := range map[bool]bool{false: false, true: true} {
		p, err := NewPolicy(PolicyConfig{Repositories: map[string]NamedRepository{"default": {URI: "file:///srv/bf"}},
			DefaultRepository: "default", PruneJobs: allowed})
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.admit(prune)
		if got := err == nil; got != want {
			t.Errorf("PruneJobs %v: admitted %v (%v), want %v", allowed, got, err, want)
		}
		if err != nil && !errors.Is(err, ErrForbidden) {
			t.Errorf("PruneJobs %v: %v, want forbidden", allowed, err)
		}
	}
}
