package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/restic/chunker"
)

// How Publish cuts files into chunks. The parameters are fixed: the same
// bytes must always be cut at the same places, in every version and by
// every publisher, or no chunk of an old version would be found again in
// a new one.
const (
	// ChunkThreshold is the smallest file that PublishOptions.Chunk cuts
	// into chunks; smaller files stay whole (a chunk list would cost more
	// than it saves).
	ChunkThreshold = 1 << 20

	// ChunkPolynomial is the irreducible polynomial of the Rabin
	// fingerprint that finds the boundaries (restic/chunker), chosen once
	// with chunker.RandomPolynomial and never to be changed.
	ChunkPolynomial = chunker.Pol(0x3DA3358B4DC173)

	// ChunkMinSize and ChunkMaxSize bound a chunk's size (the last chunk
	// of a file may be shorter than ChunkMinSize).
	ChunkMinSize = 16 << 10
	ChunkMaxSize = 512 << 10

	// ChunkAverageBits sets the average: past ChunkMinSize, a boundary
	// is found after 2^16 bytes on average, so chunks average about
	// 80 KiB. Measured on a 64 MiB file (agent/chunk_bench_test.go):
	// 1 MiB rewritten + 100 KiB inserted moves 1.27x what xdelta3 sends
	// (1.37x with the 110 KB manifest); 200 scattered 4 KiB edits move
	// 25x, since each edit moves a whole chunk. Smaller chunks serve
	// scattered edits better (2^14: 9.5x, but 3,200 chunks, a 290 KB
	// chunk list per version of the file, and as many requests per fresh
	// install until blobs are read in batches); larger ones serve
	// neither (2^17: 1.5x and 42x).
	ChunkAverageBits = 16
)

// Cut reads r to its end and calls fn with each chunk's bytes, in order,
// cut at the content-defined boundaries of the Chunk* parameters. The
// bytes passed to fn are only valid during the call.
func Cut(r io.Reader, fn func(data []byte) error) error {
	c := chunker.NewWithBoundaries(r, ChunkPolynomial, ChunkMinSize, ChunkMaxSize)
	c.SetAverageBits(ChunkAverageBits)
	buf := make([]byte, ChunkMaxSize)
	for {
		ch, err := c.Next(buf)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(ch.Data); err != nil {
			return err
		}
	}
}

// chunkFile cuts the source file of f into chunks, stores each chunk not
// yet in blobDir as a blob, and sets f.Chunks. It checks that the bytes
// still have f's size and digest (the source may change under us). seen
// holds the digests of blobs present or written in this publish.
func chunkFile(src, blobDir string, f *File, seen map[string]bool, res *PublishResult) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("chunks of %s: %w", f.Path, err)
	}
	defer in.Close()
	whole := sha256.New()
	var chunks []Chunk
	err = Cut(io.TeeReader(in, whole), func(data []byte) error {
		sum := sha256.Sum256(data)
		c := Chunk{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data))}
		chunks = append(chunks, c)
		if seen[c.SHA256] {
			return nil
		}
		seen[c.SHA256] = true
		dst := filepath.Join(blobDir, c.SHA256)
		if fi, err := os.Lstat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == c.Size {
			res.BlobsReused++
			return nil
		}
		n, err := writeAtomic(dst, bytes.NewReader(data), nil, false)
		if err != nil {
			return err
		}
		res.BlobsWritten++
		res.BytesWritten += n
		return nil
	})
	if err != nil {
		return fmt.Errorf("chunks of %s: %w", f.Path, err)
	}
	var n int64
	for _, c := range chunks {
		n += c.Size
	}
	if n != f.Size {
		return fmt.Errorf("source file %s changed while publishing (%d bytes, was %d)", f.Path, n, f.Size)
	}
	if err := checkDigest(whole, *f); err != nil {
		return err
	}
	f.Chunks = chunks
	return nil
}
