package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	"github.com/dpcache/dpcache/source"
)

// blobsSource serves blobs from memory and counts the transfers of each.
type blobsSource struct {
	blobs map[string][]byte
	mu    sync.Mutex
	opens map[string]int
}

func (s *blobsSource) Latest(context.Context, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}
func (s *blobsSource) Manifest(context.Context, string, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}
func (s *blobsSource) Blob(_ context.Context, digest string, off int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.opens[digest]++
	s.mu.Unlock()
	b, ok := s.blobs[digest]
	if !ok {
		return nil, source.ErrNotFound
	}
	return io.NopCloser(bytes.NewReader(b[off:])), nil
}
func (s *blobsSource) String() string { return "fake://blobs" }
func (s *blobsSource) Close() error   { return nil }

// countPins counts the pins held.
type countPins struct{ held atomic.Int64 }

func (p *countPins) StartReading(context.Context, string) (func(), error) {
	p.held.Add(1)
	var once sync.Once
	return func() { once.Do(func() { p.held.Add(-1) }) }, nil
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// chunkedFixture cuts data into chunks with manifest.Cut and returns a
// Fetcher whose only source holds the chunks, and the file.
func chunkedFixture(t *testing.T, data []byte) (*Fetcher, *blobsSource, *countPins, File) {
	t.Helper()
	cc := cache.DefaultConfig()
	cc.Path = filepath.Join(t.TempDir(), "cache.db")
	store, err := cache.Open(cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	src := &blobsSource{blobs: map[string][]byte{}, opens: map[string]int{}}
	sizes := fixedSizes{}
	f := File{SHA256: hexSum(data), Size: int64(len(data))}
	if err := manifest.Cut(bytes.NewReader(data), func(b []byte) error {
		d := hexSum(b)
		src.blobs[d] = bytes.Clone(b)
		sizes[d] = int64(len(b))
		f.Chunks = append(f.Chunks, manifest.Chunk{SHA256: d, Size: int64(len(b))})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(f.Chunks) < 2*fileAhead {
		t.Fatalf("%d chunks: too few to test the read-ahead", len(f.Chunks))
	}
	ctx, cancel := context.WithCancel(context.Background())
	pins := &countPins{}
	fr := New(ctx, Config{ServeChunk: 64 << 10, ServeMemory: 1 << 20, Logger: slog.New(slog.DiscardHandler)},
		store, sizes, oneRoute{src}, pins, noMetrics{}, nil)
	t.Cleanup(func() { cancel(); fr.Stop() })
	return fr, src, pins, f
}

func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// A chunked file is served whole and from an offset, each chunk fetched
// once, and no pin outlives the read.
func TestFetcher_ReadFile(t *testing.T) {
	data := randomBytes(3<<20+17, 1)
	fr, src, pins, f := chunkedFixture(t, data)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, off := range []int64{0, 1, f.Chunks[0].Size, f.Size/2 + 3, f.Size - 1, f.Size} {
		var s sink
		if err := fr.ReadFile(ctx, f, off, false, &s); err != nil {
			t.Fatalf("from %d: %v", off, err)
		}
		if !bytes.Equal(s.buf.Bytes(), data[off:]) {
			t.Fatalf("from %d: %d bytes, not the file's", off, s.buf.Len())
		}
	}
	for d, n := range src.opens {
		if n != 1 {
			t.Errorf("chunk %s fetched %d times, want 1", d[:12], n)
		}
	}
	if len(src.opens) != len(src.blobs) {
		t.Errorf("%d chunks fetched, want %d", len(src.opens), len(src.blobs))
	}
	if _, err := fr.store.Stat(f.SHA256); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("the assembled file is stored: %v", err)
	}
	if n := pins.held.Load(); n != 0 {
		t.Errorf("%d pins held after the reads", n)
	}
	var s sink
	if err := fr.ReadFile(ctx, f, f.Size+1, false, &s); !errors.Is(err, nodeerr.ErrInvalid) {
		t.Errorf("past the end: %v, want ErrInvalid", err)
	}
}

// FileReader seeks like a file (http.ServeContent's ranges), and a reader
// closed halfway releases its pins and stops its read-ahead.
func TestFetcher_FileReader_SeekAndClose(t *testing.T) {
	data := randomBytes(2<<20, 2)
	fr, _, pins, f := chunkedFixture(t, data)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := fr.OpenFile(ctx, f, false)
	if end, err := r.Seek(0, io.SeekEnd); err != nil || end != f.Size {
		t.Fatalf("seek to end: %d, %v", end, err)
	}
	for _, rng := range [][2]int64{{100, 300 << 10}, {5, 6}, {f.Size - 1000, f.Size}, {0, 70 << 10}} {
		if _, err := r.Seek(rng[0], io.SeekStart); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, rng[1]-rng[0])
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("range %v: %v", rng, err)
		}
		if !bytes.Equal(got, data[rng[0]:rng[1]]) {
			t.Fatalf("range %v: wrong bytes", rng)
		}
	}
	r.Close()
	r.Close()
	if n := pins.held.Load(); n != 0 {
		t.Errorf("%d pins held after Close", n)
	}
}

// Chunks that each verify but do not assemble to the file's digest (a
// publisher's lie): a read from 0 fails with DataLoss and never delivers
// the whole file.
func TestFetcher_ReadFile_WholeDigestMismatch(t *testing.T) {
	data := randomBytes(2<<20, 3)
	fr, _, _, f := chunkedFixture(t, data)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.Chunks[0], f.Chunks[1] = f.Chunks[1], f.Chunks[0]
	var s sink
	err := fr.ReadFile(ctx, f, 0, false, &s)
	if !errors.Is(err, nodeerr.ErrDataLoss) {
		t.Fatalf("assembling to another digest: %v, want DataLoss", err)
	}
	if int64(s.buf.Len()) >= f.Size {
		t.Fatalf("%d bytes delivered: the whole wrong file", s.buf.Len())
	}
	// The same through FileReader, as HTTP reads it.
	r := fr.OpenFile(ctx, f, false)
	defer r.Close()
	n, err := io.Copy(io.Discard, r)
	if !errors.Is(err, nodeerr.ErrDataLoss) || n >= f.Size || !errors.Is(r.Err(), nodeerr.ErrDataLoss) {
		t.Fatalf("FileReader: %d bytes, %v", n, err)
	}
}

// A chunk that no source serves whole fails the read at that chunk.
func TestFetcher_ReadFile_CorruptChunk(t *testing.T) {
	data := randomBytes(2<<20, 4)
	fr, src, pins, f := chunkedFixture(t, data)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bad := f.Chunks[len(f.Chunks)/2]
	src.blobs[bad.SHA256][10] ^= 0xff
	var s sink
	err := fr.ReadFile(ctx, f, 0, false, &s)
	if err == nil || int64(s.buf.Len()) >= f.Size {
		t.Fatalf("a corrupt chunk: %d bytes, %v; want an error before the end", s.buf.Len(), err)
	}
	if n := pins.held.Load(); n != 0 {
		t.Errorf("%d pins held after a failed read", n)
	}
}
