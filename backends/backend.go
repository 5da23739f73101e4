// Package backends defines the block devices blockferry reads from and writes to.
//
// A Source is what a backup reads: a point-in-time disk image with its allocation
// and, for an incremental backup, a dirty bitmap. A Target is what a restore writes.
// Implementations live in subpackages (nbd, file) and register a URI scheme with
// Register; callers open devices with OpenSource and OpenTarget and never branch on
// the kind of device.
package backends

import (
	"context"
	"errors"
	"io"
)

// Extent is a run of bytes that share allocation and dirty state, as the seed's
// get_dirty_extents reports it: a dirty range that reads as zero has Zero set, so a
// backup can store a zero marker instead of reading it.
type Extent struct {
	Start  int64
	Length int64
	// Dirty is true when the range changed since the bitmap was created. Without a
	// bitmap every range is dirty.
	Dirty bool
	// Zero is true when the range reads as zeroes (a hole or a zeroed range).
	Zero bool
}

// End is the offset just past the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// Source is a disk image to back up. ReadAt may be called from many goroutines.
type Source interface {
	// ReadAt reads len(p) bytes at off, as io.ReaderAt does. ctx is the job's: a
	// read that waits (for a rate limit, for a queue) stops waiting when it ends.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// Size is the image size in bytes.
	Size() int64
	// Extents describes [start, start+length): the extents returned are contiguous,
	// start at start and cover at least one byte of the window, but may stop short
	// of its end; callers loop. Length is clipped to the image size.
	Extents(ctx context.Context, start, length int64) ([]Extent, error)
	Close() error
}

// Target is a disk image to restore into. WriteAt may be called from many goroutines.
type Target interface {
	io.WriterAt
	// Size is the image size in bytes.
	Size() int64
	// Zero makes [off, off+length) read as zeroes, without sending zero bytes where
	// the device can.
	Zero(ctx context.Context, off, length int64) error
	// Flush makes all completed writes durable.
	Flush(ctx context.Context) error
	Close() error
}

// SourceOptions are the settings OpenSource passes to an implementation.
type SourceOptions struct {
	// Bitmap names the dirty bitmap of an incremental backup; empty for a full one.
	Bitmap string
	// Connections is the most connections to open when the server allows several;
	// zero opens one. The caller chooses (jobs.DefaultConnections).
	Connections int
	// MaxInFlight bounds the bytes of outstanding read requests per connection;
	// zero leaves the bound to the implementation.
	MaxInFlight int64
	// TLS authenticates a source reached over TLS (nbds://, nbds+unix://).
	TLS TLS
}

// SourceOption sets a SourceOptions field.
type SourceOption func(*SourceOptions)

// WithBitmap asks the source for the dirty bitmap name.
func WithBitmap(name string) SourceOption { return func(o *SourceOptions) { o.Bitmap = name } }

// WithConnections sets the most connections the source may open.
func WithConnections(n int) SourceOption { return func(o *SourceOptions) { o.Connections = n } }

// WithMaxInFlight bounds the bytes of outstanding reads per connection.
func WithMaxInFlight(n int64) SourceOption { return func(o *SourceOptions) { o.MaxInFlight = n } }

// WithTLS sets how a source reached over TLS is authenticated.
func WithTLS(t TLS) SourceOption { return func(o *SourceOptions) { o.TLS = t } }

// TLS is how a client authenticates itself to a device reached over TLS (NBD's
// nbds:// and nbds+unix://) and checks the device. The zero value is libnbd's
// default: the system's trusted CAs, no client certificate, the server's
// certificate verified.
type TLS struct {
	// Certificates is a directory holding ca-cert.pem (the CA the server's
	// certificate must chain to) and, for servers that ask for one, the client's
	// client-cert.pem and client-key.pem: the layout libnbd and qemu use.
	Certificates string
	// PSKFile authenticates with a pre-shared key instead of certificates: lines
	// of username:hex-key, as psktool writes them (and qemu-nbd's
	// tls-creds-psk reads).
	PSKFile string
	// Username picks the PSK file's line; empty is libnbd's default, the login
	// name of the process.
	Username string
	// SkipVerifyPeer accepts a server certificate that does not chain to the CA
	// (a test set-up): the connection is then encrypted, not authenticated.
	SkipVerifyPeer bool
}

// TargetOptions are the settings OpenTarget passes to an implementation.
type TargetOptions struct {
	// Size is the size the target must have; a file target is created or grown to
	// it, an NBD export must be at least as large.
	Size int64
	// Connections is the most connections to open when the server allows several;
	// zero opens one.
	Connections int
	// TLS authenticates a target reached over TLS (nbds://, nbds+unix://).
	TLS TLS
}

// TargetOption sets a TargetOptions field.
type TargetOption func(*TargetOptions)

// WithSize sets the size a target must have.
func WithSize(n int64) TargetOption { return func(o *TargetOptions) { o.Size = n } }

// WithTargetConnections sets the most connections a target may open.
func WithTargetConnections(n int) TargetOption {
	return func(o *TargetOptions) { o.Connections = n }
}

// WithTargetTLS sets how a target reached over TLS is authenticated.
func WithTargetTLS(t TLS) TargetOption { return func(o *TargetOptions) { o.TLS = t } }

// Errors an implementation wraps so that callers can classify failures.
var (
	// ErrUnsupportedScheme: no implementation is registered for the URI scheme.
	ErrUnsupportedScheme = errors.New("unsupported device URI scheme")
	// ErrNoBitmap: the source has no dirty bitmap of that name, or cannot have one.
	ErrNoBitmap = errors.New("dirty bitmap not available")
	// ErrUnreachable: the device could not be reached (no socket, refused, DNS).
	ErrUnreachable = errors.New("device unreachable")
	// ErrTLS: the device and the client did not agree on TLS: a certificate or
	// key that does not match, no TLS where the other side requires it.
	ErrTLS = errors.New("TLS with the device failed")
	// ErrTooSmall: a target is smaller than the image to restore.
	ErrTooSmall = errors.New("target too small")
	// ErrInvalidSource: what the source URI names is no disk image to back up (a
	// directory, a character device, a size beyond what a backup may hold, a
	// server whose replies break its protocol).
	ErrInvalidSource = errors.New("not a disk image to back up")
	// ErrInvalidTarget: what the target URI names is no disk image to restore to
	// (a directory, a character device).
	ErrInvalidTarget = errors.New("not a disk image to restore to")
)
