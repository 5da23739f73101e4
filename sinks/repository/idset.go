package repository

import (
	"bytes"
	"slices"
)

// idSet is a set of chunk ids kept as one sorted slice: 32 bytes an id and no
// per-entry overhead, so that garbage collection of a repository of ten million
// chunks holds its mark set in about 320 MB (a map would take several times that).
// Ids are appended unsorted and the slice is sorted and compacted whenever it
// doubles, so building it from manifests that name the same chunks over and over
// never takes more than twice the unique ids (plus 64 Ki ids).
type idSet struct {
	ids    []ChunkID
	sorted int // ids[:sorted] is sorted and has no duplicates
}

func compareIDs(a, b ChunkID) int { return bytes.Compare(a[:], b[:]) }

func (s *idSet) add(id ChunkID) {
	s.ids = append(s.ids, id)
	if len(s.ids) >= 2*s.sorted+1<<16 {
		s.compact()
	}
}

// addHex adds a chunk id in hex; "" (a zero position) and malformed ids are
// skipped (manifests are validated when read).
func (s *idSet) addHex(h string) {
	if h == "" {
		return
	}
	if id, err := ParseChunkID(h); err == nil {
		s.add(id)
	}
}

// compact sorts the set and drops duplicates; has needs it after the last add.
func (s *idSet) compact() {
	slices.SortFunc(s.ids, compareIDs)
	s.ids = slices.Compact(s.ids)
	s.sorted = len(s.ids)
}

func (s *idSet) has(id ChunkID) bool {
	_, ok := slices.BinarySearchFunc(s.ids[:s.sorted], id, compareIDs)
	return ok
}

func (s *idSet) len() int { return s.sorted }

// addManifest adds every chunk m names, base chunks and those of patches.
func (s *idSet) addManifest(chunks []string, patches map[int][]Patch) {
	for _, c := range chunks {
		s.addHex(c)
	}
	for _, ps := range patches {
		for _, p := range ps {
			s.addHex(p.Chunk)
		}
	}
}

// marshalIDs is the body of a condemned list or a pin: the ids one after the
// other, 32 bytes each.
func marshalIDs(ids []ChunkID) []byte {
	out := make([]byte, 0, 32*len(ids))
	for _, id := range ids {
		out = append(out, id[:]...)
	}
	return out
}

func unmarshalIDs(b []byte) ([]ChunkID, error) {
	if len(b)%32 != 0 {
		return nil, errCorruptIDList
	}
	ids := make([]ChunkID, len(b)/32)
	for i := range ids {
		copy(ids[i][:], b[32*i:])
	}
	return ids, nil
}
