// Package embedded runs the single-node NATS JetStream server a worker starts when
// it is given no NATS URL. It is apart from package worker so that the commands
// that only submit, watch or cancel jobs do not link the NATS server.
package embedded

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultListen is where the embedded server listens unless told otherwise.
const DefaultListen = "127.0.0.1:4222"

// Start runs a single-node JetStream server in this process, with its store under
// dataDir/nats, listening on listen (host:port). Clients must present the token of
// dataDir/nats.token (see Token), which the first start generates.
func Start(dataDir, listen string) (*server.Server, error) {
	token, err := Token(dataDir)
	if err != nil {
		return nil, err
	}
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS port %q: %w", portText, err)
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "blockferry-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(dataDir, "nats"),
		NoSigs:     true,
		MaxPayload: 1 << 20,
		// Anyone who may publish a job may have the worker read and write what
		// its policy allows: an anonymous local user must not be able to.
		Authorization: token,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s", listen)
	}
	return s, nil
}
