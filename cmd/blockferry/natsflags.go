package main

import (
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"

	"github.com/blockferry/blockferry/worker"
)

// natsFlags say how to reach NATS and where blockferry's streams are.
type natsFlags struct {
	conn worker.ConnectOptions
	topo worker.Topology
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (n *natsFlags) register(f *pflag.FlagSet, defaultURL string) {
	n.topo = worker.DefaultTopology()
	f.StringVar(&n.conn.URLs, "nats-url", envOr("BLOCKFERRY_NATS_URL", defaultURL), "NATS server URLs, comma-separated (env BLOCKFERRY_NATS_URL)")
	f.StringVar(&n.conn.CredsFile, "nats-creds", os.Getenv("BLOCKFERRY_NATS_CREDS"), "NATS credentials file (env BLOCKFERRY_NATS_CREDS)")
	f.StringVar(&n.conn.NKeyFile, "nats-nkey", os.Getenv("BLOCKFERRY_NATS_NKEY"), "NATS nkey seed file (env BLOCKFERRY_NATS_NKEY)")
	f.StringVar(&n.conn.User, "nats-user", os.Getenv("BLOCKFERRY_NATS_USER"), "NATS user (env BLOCKFERRY_NATS_USER; password in BLOCKFERRY_NATS_PASSWORD)")
	f.StringVar(&n.conn.CAFile, "nats-ca", os.Getenv("BLOCKFERRY_NATS_CA"), "CA certificate for NATS TLS (env BLOCKFERRY_NATS_CA)")
	f.StringVar(&n.conn.CertFile, "nats-cert", os.Getenv("BLOCKFERRY_NATS_CERT"), "client certificate for NATS TLS (env BLOCKFERRY_NATS_CERT)")
	f.StringVar(&n.conn.KeyFile, "nats-key", os.Getenv("BLOCKFERRY_NATS_KEY"), "client key for NATS TLS (env BLOCKFERRY_NATS_KEY)")
	f.StringVar(&n.topo.Prefix, "subject-prefix", envOr("BLOCKFERRY_SUBJECT_PREFIX", worker.DefaultPrefix), "prefix of job and event subjects")
	// Secrets are read from the environment only, so they never show in ps.
	n.conn.Password = os.Getenv("BLOCKFERRY_NATS_PASSWORD")
	n.conn.Token = os.Getenv("BLOCKFERRY_NATS_TOKEN")
}

func (n *natsFlags) connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	n.conn.Name = name
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
