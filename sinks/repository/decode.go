package repository

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// A manifest or checkpoint is read as a stream and may grow only as far as what it
// has shown so far allows (docs/FORMAT.md, size limits): all fields but the
// per-position ones get headerBudget bytes of JSON together, and each entry of
// "chunks" or "done", each key of "patches" and each patch its own few bytes, but
// only once "size" and "chunk_size" have said how many entries there may be. So a
// crafted object costs no more memory than a genuine one of the disk it claims,
// and junk anywhere in it fails within a few MiB, never after inflating to
// gigabytes and being checked afterwards.
const (
	// headerBudget covers ids, labels (a job has at most 64 of 256 bytes each),
	// times and statistics: a few KiB in practice.
	headerBudget = 1 << 20
	// entryBudget covers one chunk id in quotes or one decimal position key, its
	// separators and room for indentation.
	entryBudget = 128
	// patchBudget covers one patch object; written out with every field at its
	// largest it is about 150 bytes.
	patchBudget = 256
	// readAhead is what json.Decoder may have read past the value it stands on:
	// its buffer holds at most twice the largest value read, plus 512 bytes.
	readAhead = 2*headerBudget + 1024
)

// errOverBudget ends a read that went past its budget. json.Decoder returns a
// reader's errors as they are, so it surfaces unchanged; io.LimitedReader's EOF
// would read as truncated JSON instead.
var errOverBudget = errors.New("over budget")

// budgetReader passes on at most limit bytes of r, then fails with errOverBudget.
type budgetReader struct {
	r     io.Reader
	read  int64
	limit int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.read >= b.limit {
		return 0, errOverBudget
	}
	if int64(len(p)) > b.limit-b.read {
		p = p[:b.limit-b.read]
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
}

// indexField reads the value of one per-position field ("chunks", "patches",
// "done") into the object being decoded, granting budget entry by entry.
type indexField func(d *indexDecoder) error

// indexDecoder reads the JSON object of a manifest or checkpoint.
type indexDecoder struct {
	in      *budgetReader
	dec     *json.Decoder
	granted int64 // budget granted to per-position entries so far
	// size and chunkSize are the fields of those names, -1 until read;
	// positions is the number of chunk positions they make, -1 until both are.
	size, chunkSize int64
	positions       int
	header          bytes.Buffer // every other field, as one JSON object
	seen            map[string]bool
}

// decodeIndex reads one JSON object from r: the per-position fields named in
// fields with their readers, once size and chunk_size are known (before that, they
// count as ordinary fields), and every other field into header. Every error wraps
// ErrCorrupt; a disk too large for the format also wraps ErrDiskTooLarge.
func decodeIndex(r io.Reader, header any, fields map[string]indexField) error {
	d := &indexDecoder{in: &budgetReader{r: r}, size: -1, chunkSize: -1, positions: -1, seen: map[string]bool{}}
	d.grant(0)
	d.dec = json.NewDecoder(d.in)
	err := d.object(fields)
	switch {
	case errors.Is(err, errOverBudget) && d.positions < 0:
		return fmt.Errorf("%w: more than %d bytes of JSON before its size and chunk_size", ErrCorrupt, headerBudget+readAhead)
	case errors.Is(err, errOverBudget):
		return fmt.Errorf("%w: more JSON than %d chunk positions and the entries read so far may take (%d bytes)",
			ErrCorrupt, d.positions, d.in.limit)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if err := json.Unmarshal(d.header.Bytes(), header); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// grant lets the input grow by n more bytes.
func (d *indexDecoder) grant(n int64) {
	d.granted += n
	d.in.limit = headerBudget + readAhead + d.granted
}

func (d *indexDecoder) object(fields map[string]indexField) error {
	if ok, err := d.open('{'); err != nil || !ok {
		return errors.Join(err, errors.New("not a JSON object"))
	}
	d.header.WriteByte('{')
	for d.dec.More() {
		t, err := d.dec.Token()
		if err != nil {
			return err
		}
		key, _ := t.(string) // object keys are strings
		if d.seen[key] {
			return fmt.Errorf("field %q appears twice", key)
		}
		d.seen[key] = true
		if read, ok := fields[key]; ok && d.positions >= 0 {
			if err := read(d); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			continue
		}
		var raw json.RawMessage
		if err := d.dec.Decode(&raw); err != nil {
			return err
		}
		if err := d.headerField(key, raw); err != nil {
			return err
		}
	}
	if _, err := d.dec.Token(); err != nil { // the closing brace
		return err
	}
	if _, err := d.dec.Token(); err != io.EOF {
		return errors.Join(err, errors.New("data after the JSON object"))
	}
	d.header.WriteByte('}')
	return nil
}

// headerField adds a field to the header object; size and chunk_size also set the
// number of chunk positions once both are read.
func (d *indexDecoder) headerField(key string, raw json.RawMessage) error {
	if d.header.Len() > 1 {
		d.header.WriteByte(',')
	}
	k, _ := json.Marshal(key)
	d.header.Write(k)
	d.header.WriteByte(':')
	d.header.Write(raw)
	var dst *int64
	switch key {
	case "size":
		dst = &d.size
	case "chunk_size":
		dst = &d.chunkSize
	default:
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	if key == "chunk_size" && !ValidChunkSize(d.chunkSize) {
		return fmt.Errorf("chunk_size %d: not a power of two from %d to %d", d.chunkSize, MinChunkSize, MaxChunkSize)
	}
	if d.size < 0 || d.chunkSize < 0 {
		return nil
	}
	if err := CheckDiskSize(d.size, d.chunkSize); err != nil {
		return err
	}
	d.positions = ChunkCount(d.size, d.chunkSize)
	return nil
}

// open reads the opening delimiter of an array or object; ok is false for null.
func (d *indexDecoder) open(want json.Delim) (ok bool, err error) {
	t, err := d.dec.Token()
	if err != nil || t == nil {
		return false, err
	}
	if t != want {
		return false, fmt.Errorf("want %v, found %v", want, t)
	}
	return true, nil
}

// entry is called before each entry of a per-position field: it refuses the
// entry past the limit and grants the entry its budget otherwise.
func (d *indexDecoder) entry(have, limit int, budget int64) error {
	if have >= limit {
		return fmt.Errorf("more than %d entries", limit)
	}
	d.grant(budget)
	return nil
}

// chunkList reads an array of one chunk id (or "") per chunk position.
func (d *indexDecoder) chunkList(dst *[]string) error {
	if ok, err := d.open('['); err != nil || !ok {
		return err
	}
	for d.dec.More() {
		if err := d.entry(len(*dst), d.positions, entryBudget); err != nil {
			return err
		}
		var s string
		if err := d.dec.Decode(&s); err != nil {
			return err
		}
		*dst = append(*dst, s)
	}
	_, err := d.dec.Token()
	return err
}

// positionMap reads an object keyed by chunk position, calling value for each
// key's value.
func (d *indexDecoder) positionMap(value func(i int) error) error {
	if ok, err := d.open('{'); err != nil || !ok {
		return err
	}
	done := map[int]bool{}
	for d.dec.More() {
		if err := d.entry(len(done), d.positions, entryBudget); err != nil {
			return err
		}
		t, err := d.dec.Token()
		if err != nil {
			return err
		}
		key, _ := t.(string)
		i, err := strconv.Atoi(key)
		if err != nil || i < 0 || i >= d.positions || done[i] {
			return fmt.Errorf("key %q: not a chunk position below %d, or repeated", key, d.positions)
		}
		done[i] = true
		if err := value(i); err != nil {
			return fmt.Errorf("chunk position %d: %w", i, err)
		}
	}
	_, err := d.dec.Token()
	return err
}

// doneMap reads a checkpoint's chunk position -> chunk id map.
func (d *indexDecoder) doneMap(dst *map[int]string) error {
	*dst = map[int]string{}
	return d.positionMap(func(i int) error {
		var s string
		if err := d.dec.Decode(&s); err != nil {
			return err
		}
		(*dst)[i] = s
		return nil
	})
}

// patchMap reads the patches of chunk positions.
func (d *indexDecoder) patchMap(dst *map[int][]Patch) error {
	*dst = map[int][]Patch{}
	return d.positionMap(func(i int) error {
		if ok, err := d.open('['); err != nil || !ok {
			return err
		}
		var ps []Patch
		for d.dec.More() {
			if err := d.entry(len(ps), MaxPatchesPerPosition, patchBudget); err != nil {
				return err
			}
			var p Patch
			if err := d.dec.Decode(&p); err != nil {
				return err
			}
			ps = append(ps, p)
		}
		(*dst)[i] = ps
		_, err := d.dec.Token()
		return err
	})
}

// decodeManifest reads a stored manifest's JSON within its budget.
func (c *codec) decodeManifest(obj []byte, aad string) (*Manifest, error) {
	var m Manifest
	err := c.decodeStream(obj, aad, &m, map[string]indexField{
		"chunks":  func(d *indexDecoder) error { return d.chunkList(&m.Chunks) },
		"patches": func(d *indexDecoder) error { return d.patchMap(&m.Patches) },
	})
	return &m, err
}

// decodeCheckpoint reads a stored checkpoint's JSON within its budget.
func (c *codec) decodeCheckpoint(obj []byte, aad string) (*Checkpoint, error) {
	var cp Checkpoint
	err := c.decodeStream(obj, aad, &cp, map[string]indexField{
		"done":    func(d *indexDecoder) error { return d.doneMap(&cp.Done) },
		"patches": func(d *indexDecoder) error { return d.patchMap(&cp.Patches) },
	})
	return &cp, err
}

func (c *codec) decodeStream(obj []byte, aad string, header any, fields map[string]indexField) error {
	r, release, err := c.openStream(obj, aad)
	if err != nil {
		return err
	}
	defer release()
	return decodeIndex(r, header, fields)
}
