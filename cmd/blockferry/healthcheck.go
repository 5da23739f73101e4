package main

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// newHealthcheckCommand probes a worker's /healthz, for container HEALTHCHECKs in
// images that have no curl.
func newHealthcheckCommand() *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 when the worker's /healthz answers (for container health checks)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := http.Client{Timeout: 5 * time.Second}
			resp, err := c.Get("http://" + localAddr(addr) + "/healthz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("/healthz answered %s", resp.Status)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "http", "127.0.0.1:9090", "address of the worker's HTTP endpoint")
	settings(cmd.Flags()) // BLOCKFERRY_HTTP: the worker's own setting finds it
	return cmd
}

// localAddr turns a listen address such as 0.0.0.0:9090 or :9090 into one to dial.
func localAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || (host != "" && host != "0.0.0.0") {
		return listen
	}
	return net.JoinHostPort("127.0.0.1", port)
}
