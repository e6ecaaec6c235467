package cache

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzDecodeMeta: a blob's meta record read from a bbolt file (which a
// crash, a disk error or a hand edit may have damaged) either decodes into
// a consistent record that encodes to the same bytes, or fails with
// ErrCorrupt; never a panic.
func FuzzDecodeMeta(f *testing.F) {
	var k key
	f.Add(blobMeta{state: stateWhole, chunkSize: minChunkSize, size: 10, stored: 10, added: 1, updated: 2}.encode())
	f.Add(blobMeta{state: statePending, chunkSize: maxChunkSize, size: SizeUnknown, stored: 0}.encode())
	f.Add([]byte{metaVersion})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMeta(k, b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if m.stored < 0 || (m.state == stateWhole && m.stored != m.size) {
			t.Fatalf("accepted an inconsistent record %+v", m)
		}
		if !bytes.Equal(m.encode(), b) {
			t.Fatalf("record %x re-encodes as %x", b, m.encode())
		}
	})
}
