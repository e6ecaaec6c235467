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
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// slowSource serves one blob slowly and counts the transfers it starts.
type slowSource struct {
	data  []byte
	opens atomic.Int32
}

func (s *slowSource) Latest(context.Context, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}
func (s *slowSource) Manifest(context.Context, string, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}
func (s *slowSource) Blob(_ context.Context, _ string, off int64) (io.ReadCloser, error) {
	s.opens.Add(1)
	return io.NopCloser(&slowReader{r: bytes.NewReader(s.data[off:])}), nil
}
func (s *slowSource) String() string { return "fake://slow" }
func (s *slowSource) Close() error   { return nil }

type slowReader struct{ r io.Reader }

func (r *slowReader) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	return r.r.Read(p[:min(len(p), 64<<10)])
}

type fixedSizes map[string]int64

func (s fixedSizes) BlobSize(d string) (int64, bool) { v, ok := s[d]; return v, ok }

type oneRoute struct{ src source.Source }

func (r oneRoute) Candidates(string, bool) []Candidate {
	return []Candidate{{Src: r.src, Kind: FromUpstream}}
}

type noPins struct{}

func (noPins) StartReading(context.Context, string) (func(), error) { return func() {}, nil }

type noMetrics struct{}

func (noMetrics) CacheRequest(bool)                         {}
func (noMetrics) UpstreamBytes(source.Source) *atomic.Int64 { return nil }

// sink collects a ReadBlob stream.
type sink struct{ buf bytes.Buffer }

func (s *sink) SendMsg(m any) error {
	c := m.(*pb.BlobChunk)
	if c.Data != nil {
		s.buf.Write(c.Data.ReadOnlyData())
		c.Data.Free()
	}
	return nil
}

// Readers that ask for a blob at once share one fetch, each gets the whole
// blob, and a blob no manifest names is NotFound.
func TestFetcher_ConcurrentReadersShareOneFetch(t *testing.T) {
	data := bytes.Repeat([]byte("dpcache "), 256<<10) // 2 MiB
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	cc := cache.DefaultConfig()
	cc.Path = filepath.Join(t.TempDir(), "cache.db")
	store, err := cache.Open(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	src := &slowSource{data: data}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fr := New(ctx, Config{ServeChunk: 64 << 10, ServeMemory: 1 << 20, Logger: slog.New(slog.DiscardHandler)},
		store, fixedSizes{digest: int64(len(data))}, oneRoute{src}, noPins{}, noMetrics{}, nil)
	defer fr.Stop()

	var wg sync.WaitGroup
	got := make([][]byte, 4)
	errs := make([]error, 4)
	for i := range got {
		wg.Go(func() {
			var s sink
			errs[i] = fr.ReadBlob(ctx, digest, 0, false, &s)
			got[i] = s.buf.Bytes()
		})
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || !bytes.Equal(got[i], data) {
			t.Fatalf("reader %d: %d bytes, %v; want the whole blob", i, len(got[i]), errs[i])
		}
	}
	if n := src.opens.Load(); n != 1 {
		t.Fatalf("%d transfers from the source, want 1", n)
	}
	if tr := fr.Traffic(); tr.Upstream != int64(len(data)) || tr.Served != 4*int64(len(data)) {
		t.Fatalf("traffic %+v, want %d upstream and 4 times that served", tr, len(data))
	}
	if err := fr.EnsureBlob(ctx, digest); err != nil {
		t.Fatalf("EnsureBlob of a whole blob: %v", err)
	}
	other := hex.EncodeToString(make([]byte, 32))
	if err := fr.EnsureBlob(ctx, other); !errors.Is(err, nodeerr.ErrNotFound) {
		t.Fatalf("EnsureBlob of a blob no manifest names: %v, want ErrNotFound", err)
	}
}

// viaSource serves any blob from data and records the chain of DPs each
// transfer's context carries.
type viaSource struct {
	data []byte
	mu   sync.Mutex
	via  [][]string
}

func (s *viaSource) Latest(context.Context, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}
func (s *viaSource) Manifest(context.Context, string, string) (source.Signed, error) {
	return source.Signed{}, source.ErrNotFound
}
func (s *viaSource) Blob(ctx context.Context, _ string, off int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.via = append(s.via, source.Via(ctx))
	s.mu.Unlock()
	return io.NopCloser(bytes.NewReader(s.data[off:])), nil
}
func (s *viaSource) String() string { return "fake://via" }
func (s *viaSource) Close() error   { return nil }

// A fetch asks its sources with the chain of DPs of the request that
// started it (the Fetcher's own without one), and outlives that request.
func TestFetcher_FetchCarriesVia(t *testing.T) {
	blobs := map[string][]byte{}
	sizes := fixedSizes{}
	for _, s := range []string{"a", "b"} {
		data := bytes.Repeat([]byte(s), 100<<10)
		sum := sha256.Sum256(data)
		d := hex.EncodeToString(sum[:])
		blobs[s], sizes[d] = data, int64(len(data))
	}
	cc := cache.DefaultConfig()
	cc.Path = filepath.Join(t.TempDir(), "cache.db")
	store, err := cache.Open(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	self, other := source.NewInstanceID(), source.NewInstanceID()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		blob string
		req  context.Context
		want []string
	}{
		{"request from another DP", "a", source.WithVia(ctx, []string{other, self}), []string{other, self}},
		{"request without a chain", "b", ctx, []string{self}},
	} {
		src := &viaSource{data: blobs[tc.blob]}
		fr := New(source.WithVia(ctx, []string{self}), Config{ServeChunk: 64 << 10, ServeMemory: 1 << 20, Logger: slog.New(slog.DiscardHandler)},
			store, sizes, oneRoute{src}, noPins{}, noMetrics{}, nil)
		sum := sha256.Sum256(blobs[tc.blob])
		if err := fr.EnsureBlob(tc.req, hex.EncodeToString(sum[:])); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		fr.Stop()
		if len(src.via) != 1 || !slices.Equal(src.via[0], tc.want) {
			t.Errorf("%s: the source saw chains %q, want one %q", tc.name, src.via, tc.want)
		}
	}
}
