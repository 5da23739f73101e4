package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/blockferry/blockferry/sinks/repository"
)

// SpecVersion is the job contract version this code implements (docs/JOBS.md).
const SpecVersion = 1

// Job kinds.
const (
	KindBackup  = "backup"
	KindRestore = "restore"
	KindVerify  = "verify"
	KindPrune   = "prune" // forget a disk's backups by retention policy, collect garbage (prune.go)
	KindServe   = "serve"
)

// Limits of a job document.
const (
	MaxSpecBytes   = 64 << 10
	maxDiskLength  = 256
	maxURILength   = 4096
	maxLabels      = 64
	maxLabelLength = 256
	maxConcurrency = 256
)

// Spec is a job as orchestrators submit it. It carries no secrets: credentials come
// from the worker's configuration.
//
// A spec is validated once, where it enters: DecodeSpec (the worker's queue),
// Client.Submit (the submit command) and the command line's job commands call
// Validate; the Runner and the engine behind it trust it.
type Spec struct {
	SpecVersion int       `json:"spec_version"`
	ID          string    `json:"id"`
	Kind        string    `json:"kind"`
	Disk        string    `json:"disk,omitempty"`
	Source      *Endpoint `json:"source,omitempty"`
	Parent      string    `json:"parent,omitempty"`
	Backup      string    `json:"backup,omitempty"`
	Target      *Endpoint `json:"target,omitempty"`
	Repository  string    `json:"repository,omitempty"`
	// Listen is where a serve job's NBD export listens: unix:///path/to.sock or
	// tcp://127.0.0.1:port (loopback only: a job's export has no TLS).
	Listen  string            `json:"listen,omitempty"`
	Options Options           `json:"options,omitzero"`
	Labels  map[string]string `json:"labels,omitempty"`

	// Checkpoint names the checkpoint this backup starts: the point in time of the
	// image it reads, from which the next incremental's bitmap counts (libvirt:
	// the <name> of the checkpoint given to backup-begin). The manifest records it.
	Checkpoint string `json:"checkpoint,omitempty"`
	// SinceCheckpoint names the checkpoint the source's dirty bitmap counts from
	// (libvirt: <incremental> of the backup XML). It must be the checkpoint the
	// parent recorded; otherwise the chain is broken (Options.OnBrokenChain).
	SinceCheckpoint string `json:"since_checkpoint,omitempty"`
	// Retention is a prune job's rules for its disk (prune.go).
	Retention *Retention `json:"retention,omitempty"`
}

// Endpoint is a device a job reads or writes.
type Endpoint struct {
	URI    string `json:"uri"`
	Bitmap string `json:"bitmap,omitempty"`
	// Overwrite lets a restore write over an existing file or block device.
	Overwrite bool `json:"overwrite,omitempty"`
}

// Options tune a job; zero values take the worker's defaults.
type Options struct {
	ChunkSize   ByteSize `json:"chunk_size,omitempty"` // a number of bytes, or a string with units: "4MiB"
	Compression string   `json:"compression,omitempty"`
	Concurrency int      `json:"concurrency,omitempty"`
	RateLimit   string   `json:"rate_limit,omitempty"` // bytes per second: "200MiB", "50M", "1000000"

	// OnBrokenChain is what an incremental whose chain is broken does (chain.go):
	// OnBrokenChainFull (the default) or OnBrokenChainFail.
	OnBrokenChain string `json:"on_broken_chain,omitempty"`

	// Lifetime is how long a serve job serves before it completes, a Go duration
	// ("90m", "8h"); the worker's maximum bounds it, and is its default.
	Lifetime string `json:"lifetime,omitempty"`
}

var (
	diskPattern = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._:/@-]*$`)
)

// DecodeSpec parses a job strictly: unknown fields, trailing data and oversized
// documents are errors wrapping ErrInvalid. The spec is validated too. When the
// document names an id, it is returned even on error so that the failure can be
// reported against it.
func DecodeSpec(data []byte) (Spec, error) {
	s, err := decodeSpec(data)
	if validID(s.ID) != nil {
		s.ID = "" // an invalid id is never echoed into subjects, keys or events
	}
	return s, err
}

func decodeSpec(data []byte) (Spec, error) {
	var s Spec
	if len(data) > MaxSpecBytes {
		return s, fmt.Errorf("%w: job is %d bytes, at most %d are accepted", ErrInvalid, len(data), MaxSpecBytes)
	}
	if err := checkKeys(data, reflect.TypeFor[Spec]()); err != nil {
		s.ID = peekID(data)
		return s, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		s.ID = peekID(data)
		return s, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return s, fmt.Errorf("%w: data after the job object", ErrInvalid)
	}
	return s, s.Validate()
}

func validID(id string) error {
	if err := repository.CheckID(id); err != nil {
		return fmt.Errorf("%w: id %w", ErrInvalid, err)
	}
	return nil
}

// Validate checks a spec's fields and their combination: everything about a job
// that can be known without opening its repository and devices.
func (s *Spec) Validate() error {
	if s.SpecVersion != SpecVersion {
		return fmt.Errorf("%w: spec_version %d is not supported (want %d)", ErrInvalid, s.SpecVersion, SpecVersion)
	}
	if err := validID(s.ID); err != nil {
		return err
	}
	if err := s.validateFields(); err != nil {
		return err
	}
	return s.validateKind()
}

// invalid is an ErrInvalid about this job.
func (s *Spec) invalid(format string, a ...any) error {
	return fmt.Errorf("%w: job %s: %s", ErrInvalid, s.ID, fmt.Sprintf(format, a...))
}

// validateFields checks each field on its own: names, lengths, labels, options.
func (s *Spec) validateFields() error {
	bad := s.invalid
	if s.Disk != "" && (len(s.Disk) > maxDiskLength || !diskPattern.MatchString(s.Disk) || strings.Contains(s.Disk, "..")) {
		return bad("disk %q: want letters, digits and . _ : / @ -, at most %d characters", s.Disk, maxDiskLength)
	}
	for _, e := range []*Endpoint{s.Source, s.Target} {
		if e != nil && (e.URI == "" || len(e.URI) > maxURILength) {
			return bad("a source or target needs a uri of at most %d characters", maxURILength)
		}
		if e != nil && e.Bitmap != "" && (len(e.Bitmap) > repository.MaxIDLength || strings.ContainsAny(e.Bitmap, "\x00/")) {
			return bad("bitmap %q is not a valid name", e.Bitmap)
		}
	}
	if len(s.Repository) > maxURILength || len(s.Listen) > maxURILength {
		return bad("repository or listen uri too long")
	}
	if s.Listen != "" && s.Kind != KindServe || s.Options.Lifetime != "" && s.Kind != KindServe {
		return bad("listen and options.lifetime are for a serve job")
	}
	for _, name := range []string{s.Checkpoint, s.SinceCheckpoint} {
		if name != "" && !validCheckpointName(name) {
			return bad("checkpoint %q is not a valid name", name)
		}
	}
	for _, ref := range []string{s.Parent, s.Backup} {
		if ref != "" && !repository.ValidID(ref) {
			return bad("backup id %q is not valid", ref)
		}
	}
	if len(s.Labels) > maxLabels {
		return bad("%d labels, at most %d", len(s.Labels), maxLabels)
	}
	for k, v := range s.Labels {
		if k == "" || len(k) > maxLabelLength || len(v) > maxLabelLength {
			return bad("label %q: keys and values of 1 to %d characters", k, maxLabelLength)
		}
	}
	if err := s.Options.validate(); err != nil {
		return bad("%v", err)
	}
	return nil
}

// validateKind checks which fields the job's kind requires and which it refuses.
func (s *Spec) validateKind() error {
	bad := s.invalid
	if s.Retention != nil && s.Kind != KindPrune {
		return bad("only a prune takes retention rules")
	}
	switch s.Kind {
	case KindBackup:
		switch {
		case s.Disk == "":
			return bad("a backup needs a disk")
		case s.Source == nil:
			return bad("a backup needs a source")
		case s.Target != nil || s.Backup != "":
			return bad("a backup takes no target or backup")
		case (s.Source.Bitmap == "") != (s.Parent == ""):
			return bad("an incremental backup needs both source.bitmap and parent; a full backup neither")
		case s.SinceCheckpoint != "" && s.Parent == "":
			return bad("since_checkpoint is for an incremental backup (with source.bitmap and parent)")
		}
	case KindRestore:
		switch {
		case s.Options.ChunkSize != 0 || s.Options.Compression != "" || s.Options.RateLimit != "" || s.Options.OnBrokenChain != "":
			return bad("a restore takes only options.concurrency")
		case s.Checkpoint != "" || s.SinceCheckpoint != "":
			return bad("a restore takes no checkpoint")
		case s.Backup == "":
			return bad("a restore needs a backup id")
		case s.Target == nil:
			return bad("a restore needs a target")
		case s.Source != nil || s.Parent != "":
			return bad("a restore takes no source or parent")
		}
	case KindVerify:
		switch {
		case s.Options.ChunkSize != 0 || s.Options.Compression != "" || s.Options.RateLimit != "" || s.Options.OnBrokenChain != "":
			return bad("a verify takes only options.concurrency")
		case s.Checkpoint != "" || s.SinceCheckpoint != "":
			return bad("a verify takes no checkpoint")
		case s.Backup == "":
			return bad("a verify needs a backup id")
		case s.Target != nil || s.Parent != "":
			return bad("a verify takes no target or parent")
		case s.Source != nil && s.Source.Bitmap != "":
			return bad("a verify compares with a source, it takes no bitmap")
		}
	case KindPrune:
		if err := s.validatePrune(); err != nil {
			return bad("%v", err)
		}
	case KindServe:
		if err := s.validateServe(); err != nil {
			return bad("%v", err)
		}
	case "":
		return bad("kind is required")
	default:
		return bad("unknown kind %q (want backup, restore, verify, prune or serve)", s.Kind)
	}
	return nil
}

func (o Options) validate() error {
	if o.ChunkSize != 0 {
		if err := CheckChunkSize(o.ChunkSize); err != nil {
			return fmt.Errorf("chunk_size: %w", err)
		}
	}
	if o.Compression != "" && o.Compression != "zstd" && o.Compression != "none" {
		return fmt.Errorf("compression %q: want zstd or none", o.Compression)
	}
	if o.Concurrency < 0 || o.Concurrency > maxConcurrency {
		return fmt.Errorf("concurrency %d: want 1 to %d", o.Concurrency, maxConcurrency)
	}
	if o.OnBrokenChain != "" && o.OnBrokenChain != OnBrokenChainFull && o.OnBrokenChain != OnBrokenChainFail {
		return fmt.Errorf("on_broken_chain %q: want full or fail", o.OnBrokenChain)
	}
	if o.RateLimit != "" {
		if _, err := ParseByteSize(o.RateLimit); err != nil {
			return fmt.Errorf("rate_limit: %w", err)
		}
	}
	if o.Lifetime != "" {
		if d, err := time.ParseDuration(o.Lifetime); err != nil || d <= 0 {
			return fmt.Errorf("lifetime %q: want a positive duration such as 90m or 8h", o.Lifetime)
		}
	}
	return nil
}

// validateServe checks the fields of a serve job.
func (s *Spec) validateServe() error {
	switch {
	case s.Options.ChunkSize != 0 || s.Options.Compression != "" || s.Options.RateLimit != "" || s.Options.OnBrokenChain != "":
		return errors.New("a serve takes only options.concurrency and options.lifetime")
	case s.Checkpoint != "" || s.SinceCheckpoint != "":
		return errors.New("a serve takes no checkpoint")
	case s.Backup == "":
		return errors.New("a serve needs a backup id")
	case s.Listen == "":
		return errors.New("a serve needs listen (unix:///path/to.sock or tcp://127.0.0.1:port)")
	case s.Source != nil || s.Target != nil || s.Parent != "":
		return errors.New("a serve takes no source, target or parent")
	}
	_, err := ParseListen(s.Listen, "", false)
	return err
}

// CheckChunkSize says whether n is a chunk size the repository format supports,
// and if not, why in units: the trap is a decimal unit, 4M being 4000000 bytes.
func CheckChunkSize(n ByteSize) error {
	if repository.ValidChunkSize(int64(n)) {
		return nil
	}
	return fmt.Errorf("%d bytes is not a power of two from %s to %s (KiB and MiB are powers of two, K and M powers of ten)",
		n, ByteSize(repository.MinChunkSize), ByteSize(repository.MaxChunkSize))
}
