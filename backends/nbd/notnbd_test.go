package nbd

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockferry/blockferry/backends"
)

// TestNotAnNBDServer: a server that answers the NBD greeting with something else
// is no disk image, as a source or as a target, which no retry changes.
func TestNotAnNBDServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "http.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
			time.AfterFunc(time.Second, func() { c.Close() })
		}
	}()
	uri := "nbd+unix:///?socket=" + sock
	if _, err := backends.OpenSource(context.Background(), uri); !errors.Is(err, backends.ErrInvalidSource) {
		t.Errorf("source: %v, want %v", err, backends.ErrInvalidSource)
	}
	if _, err := backends.OpenTarget(context.Background(), uri); !errors.Is(err, backends.ErrInvalidTarget) {
		t.Errorf("target: %v, want %v", err, backends.ErrInvalidTarget)
	}
}
