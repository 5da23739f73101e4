package testutil

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// ManifestBomb is a repository manifest object for backup id (plain envelope,
// zstd) of a few dozen KiB that inflates to inflateMiB MiB and more: a disk of
// size bytes in chunks of chunkSize, then a label of inflateMiB MiB. Written over
// a real backup's manifest (backups/<id> in a file repository), it is what a
// hostile or broken writer could leave behind.
func ManifestBomb(id string, size, chunkSize int64, inflateMiB int) []byte {
	var obj bytes.Buffer
	obj.Write([]byte{1, 1}) // plain envelope, zstd
	w, err := zstd.NewWriter(&obj, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		panic(err) // only invalid options fail
	}
	fmt.Fprintf(w, `{"version":1,"id":%q,"size":%d,"chunk_size":%d,"labels":{"x":"`, id, size, chunkSize)
	junk := []byte(strings.Repeat("A", 1<<20))
	for range inflateMiB {
		_, _ = w.Write(junk)
	}
	_, _ = w.Write([]byte(`"}}`))
	_ = w.Close()
	return obj.Bytes()
}
