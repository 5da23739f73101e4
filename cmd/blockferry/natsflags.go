package main

import (
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/worker"
	"github.com/blockferry/blockferry/worker/embedded"
)

// natsFlags say how to reach NATS and where blockferry's streams are.
type natsFlags struct {
	conn      worker.ConnectOptions
	topo      worker.Topology
	tokenFile string
}

func (n *natsFlags) register(f *pflag.FlagSet, defaultURL string) {
	n.topo = worker.DefaultTopology()
	f.StringVar(&n.conn.URLs, "nats-url", defaultURL, "NATS server URLs, comma-separated")
	f.StringVar(&n.conn.CredsFile, "nats-creds", "", "NATS credentials file")
	f.StringVar(&n.conn.NKeyFile, "nats-nkey", "", "NATS nkey seed file")
	f.StringVar(&n.conn.User, "nats-user", "", "NATS user (the password comes from BLOCKFERRY_NATS_PASSWORD)")
	f.StringVar(&n.tokenFile, "nats-token-file", "", "file holding the NATS token (default: the embedded server's, "+embedded.TokenFile(defaultDataDir())+", when no other credentials are given)")
	f.StringVar(&n.conn.CAFile, "nats-ca", "", "CA certificate for NATS TLS")
	f.StringVar(&n.conn.CertFile, "nats-cert", "", "client certificate for NATS TLS")
	f.StringVar(&n.conn.KeyFile, "nats-key", "", "client key for NATS TLS")
	f.StringVar(&n.topo.Prefix, "subject-prefix", worker.DefaultPrefix, "prefix of job and event subjects")
	settings(f, "nats-url", "nats-creds", "nats-nkey", "nats-user", "nats-token-file", "nats-ca", "nats-cert", "nats-key", "subject-prefix")
	// Secrets are read from the environment only, so they never show in ps.
	n.conn.Password = os.Getenv("BLOCKFERRY_NATS_PASSWORD")
	n.conn.Token = os.Getenv("BLOCKFERRY_NATS_TOKEN")
}

func (n *natsFlags) connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	n.conn.Name = name
	if err := n.findToken(); err != nil {
		return nil, nil, err
	}
	nc, err := worker.Connect(n.conn)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(10*time.Second))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// client connects for one command and returns a job client and the function that
// closes the connection.
func (n *natsFlags) client(name string) (*worker.Client, func(), error) {
	nc, js, err := n.connect(name)
	if err != nil {
		return nil, nil, err
	}
	return worker.NewClient(js, n.topo), nc.Close, nil
}

// findToken reads the NATS token from --nats-token-file or, when the connection
// has no credentials of any kind, from the embedded server's token file in the
// worker's data directory (BLOCKFERRY_DATA_DIR, else the default) if there is one: a command run next to a worker with an
// embedded server finds its credentials by itself.
func (n *natsFlags) findToken() error {
	file := n.tokenFile
	if file == "" {
		c := n.conn
		if c.CredsFile != "" || c.NKeyFile != "" || c.User != "" || c.Token != "" || strings.Contains(c.URLs, "@") {
			return nil
		}
		dataDir := os.Getenv(envName("data-dir")) // the worker's setting, when this shell has it
		if dataDir == "" {
			dataDir = defaultDataDir()
		}
		file = embedded.TokenFile(dataDir)
		if _, err := os.Stat(file); err != nil {
			return nil
		}
	}
	token, err := embedded.ReadToken(file)
	if err != nil {
		return err
	}
	n.conn.Token = token
	return nil
}
