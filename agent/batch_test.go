//go:build unix

package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// A chunked install from a DP interrupted while its batched reads run
// leaves the file's .part with the chunks written so far; the next run
// keeps those that verify and downloads only the others; a corrupted
// chunk in the part is fetched again.
func TestUpdate_Batched_ResumesFromPart(t *testing.T) {
	r := newRepo(t)
	big := pseudoRandom(24 << 20)
	files := map[string]string{"db/big.db": big}
	pub := r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, files)
	if n := len(pub.Manifest.Files[0].Chunks); n < 100 {
		t.Fatalf("cut into %d chunks", n)
	}
	dp := startDP(t, r)
	g, err := source.NewGRPC(dp.GRPCAddr(), source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	cfg := testConfig(t, r.trust, g)
	cfg.Concurrency = 1
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	cfg.Progress = func(done, total int64) {
		if done > total/2 {
			cancel()
		}
	}
	if _, err := Update(ctx, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted update: %v, want context.Canceled", err)
	}
	blobs := filepath.Join(cfg.Dir, product, ".dpcache", "blobs")
	part := filepath.Join(blobs, pub.Manifest.Files[0].SHA256+partSuffix)
	// Corrupt a byte of the first chunk, fetched first (one read at a time,
	// in file order).
	pf, err := os.OpenFile(part, os.O_RDWR, 0)
	if err != nil {
		entries, _ := os.ReadDir(blobs)
		t.Fatalf("no part left in %s (%d entries): %v", blobs, len(entries), err)
	}
	b := make([]byte, 1)
	if _, err := pf.ReadAt(b, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := pf.WriteAt([]byte{^b[0]}, 100); err != nil {
		t.Fatal(err)
	}
	pf.Close()

	cfg.Progress = nil
	res := mustUpdate(t, cfg)
	if res.BytesDownloaded <= 0 || res.BytesDownloaded >= int64(len(big))*3/4 {
		t.Fatalf("resumed run downloaded %d bytes of %d", res.BytesDownloaded, len(big))
	}
	if c := pub.Manifest.Files[0].Chunks[0]; res.BytesDownloaded < c.Size {
		t.Fatalf("resumed run downloaded %d bytes: not the corrupted first chunk (%d bytes)", res.BytesDownloaded, c.Size)
	}
	assertTree(t, current(t, cfg), files)
	entries, err := os.ReadDir(blobs)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), partSuffix) {
			t.Errorf("part left after the install: %s", e.Name())
		}
	}
}
