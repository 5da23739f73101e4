package worker

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnectOptions say how to reach a NATS cluster. Secrets come from files or the
// environment of the process, never from a job.
type ConnectOptions struct {
	URLs      string // comma-separated
	Name      string
	CredsFile string // JWT + nkey seed (.creds)
	NKeyFile  string // nkey seed file
	User      string
	Password  string
	Token     string
	CAFile    string
	CertFile  string
	KeyFile   string
}

// Connect opens a connection that reconnects forever: a worker outlives restarts
// of the servers it talks to.
func Connect(o ConnectOptions) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(false),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nkey: %w", err)
		}
		opts = append(opts, opt)
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" || o.KeyFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	v := &violations{}
	opts = append(opts, nats.ErrorHandler(v.handle))
	nc, err := nats.Connect(o.URLs, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", RedactURLs(o.URLs), err)
	}
	connViolations.Store(nc, v)
	nc.SetClosedHandler(func(nc *nats.Conn) { connViolations.Delete(nc) })
	return nc, nil
}

// RedactURLs is a comma-separated list of NATS URLs fit for messages: a password
// or token in a URL's user information is replaced by "xxxxx".
func RedactURLs(urls string) string {
	list := strings.Split(urls, ",")
	for i, s := range list {
		u, err := url.Parse(strings.TrimSpace(s))
		switch {
		case err != nil && strings.Contains(s, "@"):
			list[i] = "(unparsable URL)"
		case err != nil || u.User == nil:
		case hasPassword(u.User):
			list[i] = u.Redacted()
		default: // nats://token@host: the user name is the secret
			u.User = url.User("xxxxx")
			list[i] = u.String()
		}
	}
	return strings.Join(list, ",")
}

func hasPassword(u *url.Userinfo) bool { _, ok := u.Password(); return ok }
