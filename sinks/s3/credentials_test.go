package s3

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockferry/blockferry/sinks"
)

func TestReadCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.env", "# keys\n\nexport AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_ACCESS_KEY=\"s3cr=t\"\nAWS_SESSION_TOKEN='tok'\n", 0o600)
	c, err := ReadCredentialsFile(good)
	if err != nil || c.AccessKeyID != "AKID" || c.SecretAccessKey != "s3cr=t" || c.SessionToken != "tok" {
		t.Fatalf("ReadCredentialsFile = %+v, %v", c, err)
	}
	for name, tc := range map[string]struct {
		data string
		perm os.FileMode
		want string
	}{
		"open":    {"AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=hidden-value\n", 0o640, "group or others"},
		"unknown": {"AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACESS_KEY=hidden-value\n", 0o600, "line 2"},
		"garbage": {"root:hidden-value:0:0\n", 0o600, "line 1"},
		"twice":   {"AWS_ACCESS_KEY_ID=a\nAWS_ACCESS_KEY_ID=hidden-value\n", 0o600, "set twice"},
		"no key":  {"AWS_ACCESS_KEY_ID=hidden-value\n", 0o600, "want AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"},
	} {
		_, err := ReadCredentialsFile(write(name, tc.data, tc.perm))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, sinks.ErrInvalidLocation) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		} else if strings.Contains(err.Error(), "hidden-value") {
			t.Errorf("%s: the error shows the file's content: %v", name, err)
		}
	}
}

func TestCredentialsFileParameter(t *testing.T) {
	u, _ := url.Parse("s3://b/p?credentials_file=/etc/bf/b.env")
	if c, err := parseURI(u); err != nil || c.credentialsFile != "/etc/bf/b.env" {
		t.Errorf("parseURI = %+v, %v", c, err)
	}
	for raw, want := range map[string]string{
		"s3://b/p?credentials_file=b.env":                          "absolute path",
		"s3://b/p?credentials_file=/etc/bf/b.env&profile=tenant-b": "give one",
		"s3://b/p?credentials_file=/nonexistent/blockferry/b.env":  "credentials file",
	} {
		u, _ := url.Parse(raw)
		if _, err := Open(t.Context(), u); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", raw, err, want)
		}
	}
}
