package agent

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// rewrite returns s with n bytes at off replaced by other pseudo-random
// bytes.
func rewrite(s string, off, n int) string {
	return s[:off] + pseudoRandom(n + 1)[:n] + s[off+n:]
}

// A 32 MiB chunked database with 1 MiB rewritten moves about the changed
// chunks, not the file; a new file made of an old one's bytes moves
// almost nothing; rollback works across chunked versions.
func TestUpdate_Chunked_OnlyChangedChunks(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(32 << 20)
	v1 := map[string]string{"db/big.db": big, "db/small.txt": "small"}
	pub1 := r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, v1)
	if len(pub1.Manifest.Files[0].Chunks) < 100 {
		t.Fatalf("v1 cut into %d chunks", len(pub1.Manifest.Files[0].Chunks))
	}
	h := serveRepo(t, r.dir, nil)
	cfg := testConfig(t, r.trust, h.src)
	if res := mustUpdate(t, cfg); res.BytesDownloaded != int64(len(big)+5) {
		t.Fatalf("v1 downloaded %d bytes, want %d", res.BytesDownloaded, len(big)+5)
	}
	assertTree(t, current(t, cfg), v1)

	v2 := map[string]string{
		"db/big.db":    rewrite(big, 10<<20, 1<<20),
		"db/small.txt": "small",
		"db/moved.db":  big[20<<20 : 24<<20], // bytes of another file, at another offset
	}
	r.publishWith(t, manifest.PublishOptions{Version: "2", Chunk: true}, v2)
	before := h.sent.Load()
	res := mustUpdate(t, cfg)
	limit := int64(1<<20 + 4*manifest.ChunkMaxSize)
	if res.BytesDownloaded > limit || h.sent.Load()-before != res.BytesDownloaded {
		t.Fatalf("v2 downloaded %d bytes (server sent %d), want at most %d", res.BytesDownloaded, h.sent.Load()-before, limit)
	}
	t.Logf("v2: %d bytes downloaded for 1 MiB rewritten in %d MiB and a 4 MiB file made of old bytes", res.BytesDownloaded, len(big)>>20)
	assertTree(t, current(t, cfg), v2)

	if _, err := Rollback(cfg.Dir, product); err != nil {
		t.Fatal(err)
	}
	assertTree(t, current(t, cfg), v1)
}

// The first chunked version after unchunked ones reuses the installed
// file's bytes: the agent cuts it as the publisher did.
func TestUpdate_Chunked_FromUnchunked(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(8 << 20)
	r.publish(t, "1", 0, map[string]string{"db/big.db": big})
	src := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, src)
	mustUpdate(t, cfg)
	v2 := map[string]string{"db/big.db": rewrite(big, 3<<20, 256<<10)}
	r.publishWith(t, manifest.PublishOptions{Version: "2", Chunk: true}, v2)
	res := mustUpdate(t, cfg)
	if limit := int64(256<<10 + 4*manifest.ChunkMaxSize); res.BytesDownloaded > limit {
		t.Fatalf("downloaded %d bytes, want at most %d", res.BytesDownloaded, limit)
	}
	assertTree(t, current(t, cfg), v2)
}

// An interrupted chunked install resumes: the chunks fetched stay, a
// partial chunk continues at its offset, and the second run fetches only
// the rest.
func TestUpdate_Chunked_InterruptedResumes(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(8 << 20)
	r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, map[string]string{"db/big.db": big})
	src := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, src)
	ctx, cancel := context.WithCancel(testCtx(t))
	interrupted := cfg
	interrupted.Progress = func(done, total int64) {
		if done >= 3<<20 {
			cancel()
		}
	}
	if _, err := Update(ctx, interrupted); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	got := src.bytes.Load()
	if got < 3<<20 || got >= int64(len(big)) {
		t.Fatalf("the first run got %d bytes", got)
	}
	res := mustUpdate(t, cfg)
	if res.BytesDownloaded != int64(len(big))-got {
		t.Errorf("second run downloaded %d bytes, want %d (first run got %d)", res.BytesDownloaded, int64(len(big))-got, got)
	}
	assertTree(t, current(t, cfg), map[string]string{"db/big.db": big})
	// Neither chunks nor the assembled file are left behind.
	if ents, _ := os.ReadDir(filepath.Join(cfg.Dir, product, stateDirName, blobsDirName)); len(ents) != 0 {
		t.Errorf("%d downloads left after the install", len(ents))
	}
}

// A corrupt chunk from one source is refused and fetched from the next.
func TestUpdate_Chunked_CorruptChunkFailsOver(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(4 << 20)
	r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, map[string]string{"db/big.db": big})
	bad := serveRepo(t, r.dir, func(req int, _ *http.Request) fault { return fault{corrupt: req == 2} })
	good := counting(source.NewFile(r.dir))
	cfg := testConfig(t, r.trust, bad.src, good)
	cfg.Concurrency = 1
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), map[string]string{"db/big.db": big})
	if good.blobRequests() == 0 || res.BytesDownloaded <= int64(len(big)) {
		t.Errorf("the corrupt chunk was not fetched again elsewhere: %d requests to the good source, %d bytes", good.blobRequests(), res.BytesDownloaded)
	}
}

// An installed chunk that no longer verifies (the file was changed in
// place) is not used: the chunk is fetched while the file is built.
func TestUpdate_Chunked_DamagedLocalChunk(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	big := pseudoRandom(4 << 20)
	r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, map[string]string{"db/big.db": big})
	cfg := testConfig(t, r.trust, source.NewFile(r.dir))
	mustUpdate(t, cfg)
	f, err := os.OpenFile(filepath.Join(cfg.Dir, product, currentName, "db", "big.db"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("x", 100)), 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v2 := map[string]string{"db/big.db": rewrite(big, 1<<20, 64<<10)}
	r.publishWith(t, manifest.PublishOptions{Version: "2", Chunk: true}, v2)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), v2)
	if res.BytesDownloaded > 64<<10+6*manifest.ChunkMaxSize {
		t.Errorf("downloaded %d bytes", res.BytesDownloaded)
	}
}
