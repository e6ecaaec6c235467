package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// Readers joining fetches at any moment, at any offset, get exactly the
// blob's bytes, wherever those are when they ask: stored chunks, the cache
// writer's write-behind queue or batch in memory, or the whole blob once
// committed. A small cache configuration (4 KiB chunks, 16 KiB batches, at
// most 32 KiB queued) makes the writer hand bytes from memory to bbolt all
// the time, and the fetch from in flight to whole while readers stream.
func TestFetcher_ReadersAcrossWriteBehind(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(manifest.BlobDir)), 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(12, 4))
	blobs := map[string][]byte{}
	sizes := fixedSizes{}
	for i := range 3 {
		data := make([]byte, 2<<20+r.IntN(1<<20)+i)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		sum := sha256.Sum256(data)
		d := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(root, filepath.FromSlash(manifest.BlobPath(d))), data, 0o644); err != nil {
			t.Fatal(err)
		}
		blobs[d], sizes[d] = data, int64(len(data))
	}
	cc := cache.DefaultConfig()
	cc.Path = filepath.Join(t.TempDir(), "cache.db")
	cc.ChunkSize, cc.FlushSize, cc.WriteBehind, cc.NoSync = 4<<10, 16<<10, 32<<10, true
	cc.Logger = slog.New(slog.DiscardHandler)
	store, err := cache.Open(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fr := New(ctx, Config{ServeChunk: 16 << 10, ServeMemory: 4 << 20, Logger: slog.New(slog.DiscardHandler)},
		store, sizes, oneRoute{source.NewFile(root)}, noPins{}, noMetrics{}, nil)
	defer fr.Stop()

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	var total int64
	for d, data := range blobs {
		total += int64(len(data))
		for i := range 8 {
			off := int64(0)
			if i > 0 {
				off = r.Int64N(int64(len(data)) + 1)
			}
			delay := time.Duration(r.IntN(40)) * time.Millisecond
			wg.Go(func() {
				time.Sleep(delay) // join at some point of the fetch, or after it
				var s sink
				if err := fr.ReadBlob(ctx, d, off, false, &s); err != nil {
					errs <- fmt.Errorf("blob %.8s from %d: %w", d, off, err)
				} else if !bytes.Equal(s.buf.Bytes(), data[off:]) {
					errs <- fmt.Errorf("blob %.8s from %d: %d bytes, want %d, or they differ", d, off, s.buf.Len(), int64(len(data))-off)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if tr := fr.Traffic(); tr.Upstream != total {
		t.Errorf("%d bytes from upstream for %d bytes of blobs, want each blob fetched once", tr.Upstream, total)
	}
}
