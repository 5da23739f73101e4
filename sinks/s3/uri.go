package s3

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/blockferry/blockferry/sinks"
)

// uriConfig is what an s3:// URI says, read without the SDK or the environment.
type uriConfig struct {
	bucket    string
	prefix    string // "" or ends with "/"
	name      string // s3://bucket/prefix, for messages
	location  string // the URI; it never holds credentials
	endpoint  string // "" for AWS
	region    string // "" to take it from the AWS configuration
	pathStyle bool
	profile   string // AWS shared-config profile; "" for the default chain
	// credentialsFile is an env-file of this store's credentials (see
	// ReadCredentialsFile); "" for the profile or the default chain.
	credentialsFile string
}

// parseURI reads an s3:// URI: the host is the bucket, the path a key prefix, and
// the query holds endpoint, region and path_style (see Open). A repeated parameter
// counts with its last value.
func parseURI(u *url.URL) (uriConfig, error) {
	if u.Scheme != "s3" {
		return uriConfig{}, invalid("s3 store: scheme %q is not s3", u.Scheme)
	}
	if u.User != nil {
		return uriConfig{}, invalid("s3 store %s: credentials do not belong in the URI; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile", u.Redacted())
	}
	c := uriConfig{bucket: u.Host, prefix: strings.Trim(u.Path, "/")}
	if c.bucket == "" {
		return uriConfig{}, invalid("s3 store %s: no bucket (want s3://bucket/prefix)", u.Redacted())
	}
	c.name = "s3://" + c.bucket
	if c.prefix != "" {
		c.name += "/" + c.prefix
		c.prefix += "/"
	}
	c.location = c.name
	if u.RawQuery != "" {
		c.location += "?" + u.RawQuery
	}
	if err := c.parseQuery(u.Query()); err != nil {
		return uriConfig{}, err
	}
	return c, nil
}

// parseQuery sets endpoint, region and path style from the URI's query.
func (c *uriConfig) parseQuery(q url.Values) error {
	pathStyleSet := false
	for k, vs := range q {
		v := vs[len(vs)-1]
		switch k {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return invalid("%s: endpoint %q is not an http(s) URL", c.name, v)
			}
			c.endpoint = v
		case "region":
			c.region = v
		case "profile":
			c.profile = v
		case "credentials_file":
			if !strings.HasPrefix(v, "/") {
				return invalid("%s: credentials_file %q is not an absolute path", c.name, v)
			}
			c.credentialsFile = v
		case "path_style":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return invalid("%s: path_style=%q is not a boolean", c.name, v)
			}
			c.pathStyle, pathStyleSet = b, true
		default:
			// Refuse rather than ignore: a mistyped "endpiont" would otherwise send
			// backups to AWS.
			return invalid("%s: unknown parameter %q (want endpoint, region, path_style, profile, credentials_file)", c.name, k)
		}
	}
	if c.profile != "" && c.credentialsFile != "" {
		return invalid("%s: profile and credentials_file are two sources of credentials: give one", c.name)
	}
	if !pathStyleSet {
		// S3-compatible servers rarely have wildcard DNS for bucket subdomains.
		c.pathStyle = c.endpoint != ""
	}
	return nil
}

// invalid is an error of the URI: the message as given, matching
// sinks.ErrInvalidLocation, which no retry changes.
func invalid(format string, args ...any) error {
	return &storeError{msg: fmt.Sprintf(format, args...), kind: sinks.ErrInvalidLocation}
}
