package cache

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/dpcache/dpcache/manifest"
)

// Bucket names. The layout:
//
//	blobs    raw digest (32 bytes)                  -> blobMeta (38 bytes)
//	chunks   raw digest + uint32 big-endian index   -> chunk bytes
//	docs     repository path                        -> uvarint(len(data)) data sig
//	versions product (nested bucket): serial BE + version -> JSON Version
//	records  name (nested bucket): key              -> value
//	state    "open"                                 -> session flags
var (
	bucketBlobs    = []byte("blobs")
	bucketChunks   = []byte("chunks")
	bucketDocs     = []byte("docs")
	bucketVersions = []byte("versions")
	bucketRecords  = []byte("records")
	bucketState    = []byte("state")

	keyOpen = []byte("open")
)

const (
	digestLen   = 32
	chunkKeyLen = digestLen + 4
	metaLen     = 38
	metaVersion = 1

	statePending byte = 1
	stateWhole   byte = 2

	// SizeUnknown may be passed to [Cache.NewWriter] when the blob's size is
	// not known in advance; Commit then checks the digest only.
	SizeUnknown int64 = -1
)

// key is a raw SHA-256 digest.
type key = manifest.Digest

// parseDigest parses a digest argument with manifest.ParseDigest (64
// lower-case hex characters); the error wraps ErrInvalid.
func parseDigest(s string) (key, error) {
	k, err := manifest.ParseDigest(s)
	if err != nil {
		return k, fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	return k, nil
}

// keyOf converts a stored key of bucketBlobs.
func keyOf(b []byte) (key, error) {
	var k key
	if len(b) != digestLen {
		return k, fmt.Errorf("blob key %x: %d bytes, want %d: %w", b, len(b), digestLen, ErrCorrupt)
	}
	copy(k[:], b)
	return k, nil
}

// chunkKey is the key of chunk idx of blob k.
func chunkKey(k key, idx uint32) []byte {
	b := make([]byte, chunkKeyLen)
	copy(b, k[:])
	binary.BigEndian.PutUint32(b[digestLen:], idx)
	return b
}

// blobMeta is the per-blob record in bucketBlobs.
type blobMeta struct {
	state     byte
	chunkSize uint32
	size      int64 // SizeUnknown while pending with an unknown size
	stored    int64 // bytes in stored chunks (== size once whole)
	added     int64 // unix nanoseconds: when the ingest started, then when it became whole
	updated   int64 // unix nanoseconds: last chunk stored
}

func (m blobMeta) encode() []byte {
	b := make([]byte, metaLen)
	b[0] = metaVersion
	b[1] = m.state
	binary.BigEndian.PutUint32(b[2:], m.chunkSize)
	binary.BigEndian.PutUint64(b[6:], uint64(m.size))
	binary.BigEndian.PutUint64(b[14:], uint64(m.stored))
	binary.BigEndian.PutUint64(b[22:], uint64(m.added))
	binary.BigEndian.PutUint64(b[30:], uint64(m.updated))
	return b
}

func decodeMeta(k key, b []byte) (blobMeta, error) {
	if len(b) != metaLen || b[0] != metaVersion {
		return blobMeta{}, fmt.Errorf("blob %s: meta record of %d bytes, version %d: %w", k, len(b), firstByte(b), ErrCorrupt)
	}
	m := blobMeta{
		state:     b[1],
		chunkSize: binary.BigEndian.Uint32(b[2:]),
		size:      int64(binary.BigEndian.Uint64(b[6:])),
		stored:    int64(binary.BigEndian.Uint64(b[14:])),
		added:     int64(binary.BigEndian.Uint64(b[22:])),
		updated:   int64(binary.BigEndian.Uint64(b[30:])),
	}
	ok := (m.state == statePending || m.state == stateWhole) &&
		m.chunkSize >= minChunkSize && m.chunkSize <= maxChunkSize &&
		m.stored >= 0 && (m.size == SizeUnknown && m.state == statePending || m.size >= m.stored) &&
		(m.state != stateWhole || m.stored == m.size)
	if !ok {
		return blobMeta{}, fmt.Errorf("blob %s: inconsistent meta record %+v: %w", k, m, ErrCorrupt)
	}
	return m, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// maxBlobSize is the largest blob a chunk size can address (uint32 indexes).
func maxBlobSize(chunkSize int) int64 { return int64(chunkSize) << 32 }

func nanos(t time.Time) int64 { return t.UnixNano() }

// validName checks a product or version name with manifest.ValidName:
// [A-Za-z0-9._-], 1 to 128 characters, not "." or "..".
func validName(what, s string) error {
	if err := manifest.ValidName(s); err != nil {
		return fmt.Errorf("%s %w: %w", what, err, ErrInvalid)
	}
	return nil
}

// validKey checks document paths, record bucket names and record keys:
// non-empty, at most 1024 bytes, no NUL.
func validKey(what, s string) error {
	if len(s) == 0 || len(s) > 1024 {
		return fmt.Errorf("%s %q: want 1 to 1024 bytes: %w", what, s, ErrInvalid)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%s %q: contains NUL: %w", what, s, ErrInvalid)
		}
	}
	return nil
}
