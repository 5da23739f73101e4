package s3

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// credentialsFileVars are the variables a credentials file may set.
var credentialsFileVars = map[string]bool{"AWS_ACCESS_KEY_ID": true, "AWS_SECRET_ACCESS_KEY": true, "AWS_SESSION_TOKEN": true}

// ReadCredentialsFile reads the S3 credentials of one repository from an env-file
// of AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and (optionally) AWS_SESSION_TOKEN
// lines (KEY=VALUE, optionally quoted or after "export"; blank lines and # comments
// are skipped). A file that group or others may read is refused, not used. Its
// errors name the file and a line number, never what the file holds.
func ReadCredentialsFile(path string) (aws.Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return aws.Credentials{}, invalid("credentials file: %v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return aws.Credentials{}, invalid("credentials file: %v", err)
	}
	if !st.Mode().IsRegular() {
		return aws.Credentials{}, invalid("credentials file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return aws.Credentials{}, invalid("credentials file %s is open to group or others (mode %04o): chmod 600 it", path, perm)
	}
	vars, err := parseEnvFile(io.LimitReader(f, 64<<10))
	if err != nil {
		return aws.Credentials{}, invalid("credentials file %s: %v", path, err)
	}
	creds := aws.Credentials{AccessKeyID: vars["AWS_ACCESS_KEY_ID"], SecretAccessKey: vars["AWS_SECRET_ACCESS_KEY"],
		SessionToken: vars["AWS_SESSION_TOKEN"], Source: "blockferry credentials file"}
	if creds.AccessKeyID == "" || creds.SecretAccessKey == "" {
		return aws.Credentials{}, invalid("credentials file %s: want AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", path)
	}
	return creds, nil
}

// parseEnvFile reads the credential variables of an env-file. Anything else is an
// error rather than ignored: a mistyped name would otherwise fall back to no
// credentials.
func parseEnvFile(r io.Reader) (map[string]string, error) {
	vars := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		name = strings.TrimSpace(name)
		if !ok || !credentialsFileVars[name] {
			return nil, fmt.Errorf("line %d: want AWS_ACCESS_KEY_ID=, AWS_SECRET_ACCESS_KEY= or AWS_SESSION_TOKEN=", n)
		}
		if _, dup := vars[name]; dup {
			return nil, fmt.Errorf("line %d: %s is set twice", n, name)
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		vars[name] = value
	}
	return vars, sc.Err()
}
