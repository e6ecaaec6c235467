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
// leaves packs; the next run takes the chunks they hold (verified) and
// downloads only the others; a corrupted pack chunk is fetched again.
func TestUpdate_Batched_ResumesFromPacks(t *testing.T) {
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
	entries, err := os.ReadDir(blobs)
	if err != nil {
		t.Fatal(err)
	}
	var packs []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), packSuffix) {
			packs = append(packs, filepath.Join(blobs, e.Name()))
		}
	}
	if len(packs) == 0 {
		t.Fatalf("no pack left in %s (%d entries)", blobs, len(entries))
	}
	// Corrupt a byte of the first chunk of the first pack.
	pf, err := os.OpenFile(packs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := pf.ReadAt(b, packHeader); err != nil {
		t.Fatal(err)
	}
	if _, err := pf.WriteAt([]byte{^b[0]}, packHeader); err != nil {
		t.Fatal(err)
	}
	pf.Close()

	cfg.Progress = nil
	res := mustUpdate(t, cfg)
	if res.BytesDownloaded <= 0 || res.BytesDownloaded >= int64(len(big))*3/4 {
		t.Fatalf("resumed run downloaded %d bytes of %d", res.BytesDownloaded, len(big))
	}
	assertTree(t, current(t, cfg), files)
	if left, _ := filepath.Glob(filepath.Join(blobs, "*"+packSuffix)); len(left) != 0 {
		t.Errorf("packs left after the install: %v", left)
	}
}
