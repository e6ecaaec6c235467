package manifest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/restic/chunker"
	"golang.org/x/sync/errgroup"
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

// chunkWorkers is how many goroutines hash and store the chunks of a file
// while the chunker finds the next boundaries and another goroutine hashes
// the whole file.
const chunkWorkers = 2

// chunkFile cuts the source file of f into chunks, stores each chunk the
// repository lacks (s), and sets f.SHA256 and f.Chunks. f.Size is the size
// the file had when listed: a file whose bytes add up differently changed
// under us, and is refused.
//
// Three things run at once, so that a second core is used: the chunker
// (this goroutine) scans each block read from the file for boundaries
// while a goroutine adds the same block to the whole file's SHA-256
// (teeHasher), and chunkWorkers goroutines hash each chunk and write it.
func chunkFile(src string, s *blobStore, f *File) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("chunks of %s: %w", f.Path, err)
	}
	defer in.Close()
	tee := newTeeHasher(in)
	defer tee.stop()

	type job struct {
		i    int
		data []byte
	}
	g, ctx := errgroup.WithContext(context.Background())
	jobs := make(chan job, chunkWorkers)
	free := make(chan []byte, 2*chunkWorkers+1)
	for range cap(free) {
		free <- make([]byte, ChunkMaxSize)
	}
	var mu sync.Mutex // protects chunks
	var chunks []Chunk
	for range chunkWorkers {
		g.Go(func() error {
			for j := range jobs {
				if ctx.Err() != nil {
					continue // another goroutine failed: drain
				}
				sum := sha256.Sum256(j.data)
				digest := hex.EncodeToString(sum[:])
				mu.Lock()
				chunks[j.i].SHA256 = digest
				mu.Unlock()
				if s.claim(digest, int64(len(j.data))) {
					if err := s.put(digest, &bytesReader{data: j.data}, nil); err != nil {
						return err
					}
				}
				free <- j.data[:cap(j.data)]
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		c := chunker.NewWithBoundaries(tee, ChunkPolynomial, ChunkMinSize, ChunkMaxSize)
		c.SetAverageBits(ChunkAverageBits)
		for i := 0; ; i++ {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return nil
			}
			ch, err := c.Next(buf)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			mu.Lock()
			chunks = append(chunks, Chunk{Size: int64(len(ch.Data))})
			mu.Unlock()
			select {
			case jobs <- job{i: i, data: ch.Data}:
			case <-ctx.Done():
				return nil
			}
		}
	})
	if err := g.Wait(); err != nil {
		return fmt.Errorf("chunks of %s: %w", f.Path, err)
	}
	sum, n := tee.sum()
	if n != f.Size {
		return fmt.Errorf("source file %s changed while publishing (%d bytes, was %d)", f.Path, n, f.Size)
	}
	f.SHA256 = sum
	f.Chunks = chunks
	return nil
}

// teeHasher reads from r and has a goroutine add each block read to a
// SHA-256 while the caller works on the block. The caller must not change
// a block it read until its next Read (the chunker only reads it): Read
// waits for the hash of the previous block before it reads the next.
type teeHasher struct {
	r      io.Reader
	n      int64
	blocks chan []byte   // to the hashing goroutine
	hashed chan struct{} // one token per block hashed
	busy   bool          // a block is being hashed
	done   chan struct{} // closed when the hashing goroutine returns
	closed bool
	h      hash.Hash
}

func newTeeHasher(r io.Reader) *teeHasher {
	t := &teeHasher{r: r, blocks: make(chan []byte), hashed: make(chan struct{}, 1), done: make(chan struct{}), h: sha256.New()}
	go func() {
		defer close(t.done)
		for b := range t.blocks {
			t.h.Write(b)
			t.hashed <- struct{}{}
		}
	}()
	return t
}

func (t *teeHasher) wait() {
	if t.busy {
		<-t.hashed
		t.busy = false
	}
}

func (t *teeHasher) Read(p []byte) (int, error) {
	t.wait()
	n, err := t.r.Read(p)
	if n > 0 {
		t.n += int64(n)
		t.blocks <- p[:n]
		t.busy = true
	}
	return n, err
}

// stop ends the hashing goroutine; it may be called more than once.
func (t *teeHasher) stop() {
	if t.closed {
		return
	}
	t.wait()
	close(t.blocks)
	t.closed = true
	<-t.done
}

// sum stops the hashing and returns the hex SHA-256 and size of what was
// read.
func (t *teeHasher) sum() (string, int64) {
	t.stop()
	return hex.EncodeToString(t.h.Sum(nil)), t.n
}
