package retain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
)

// sharedVersions publishes two chunked versions of one 8 MiB database into
// a repository, v2 with 10% of the file rewritten in one region, and
// records both in a real bbolt cache as a DP would: each chunk a blob,
// each version naming its manifest's blobs. It returns the cache and the
// two manifests.
func sharedVersions(t *testing.T) (*cache.Cache, *manifest.Manifest, *manifest.Manifest) {
	t.Helper()
	key, _, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cache.DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "cache.db")
	cfg.InitialMmapSize = 0
	cfg.Logger = nil
	c, err := cache.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	repo := t.TempDir()
	data := make([]byte, 8<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
	var ms []*manifest.Manifest
	for i, version := range []string{"1", "2"} {
		if i == 1 { // rewrite 10% in the middle
			_, _ = rand.NewChaCha8([32]byte{2}).Read(data[4<<20 : 4<<20+len(data)/10])
		}
		src := t.TempDir()
		if err := os.MkdirAll(filepath.Join(src, "bases"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "bases", "av.db"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := manifest.Publish(manifest.PublishOptions{Repo: repo, Product: "av", Version: version, Key: key, Chunk: true}, src)
		if err != nil {
			t.Fatal(err)
		}
		m := res.Manifest
		var digests []string
		for _, b := range m.Blobs() {
			digests = append(digests, b.SHA256)
			if _, err := c.Stat(b.SHA256); err == nil {
				continue // shared with v1: stored once
			}
			blob, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(manifest.BlobPath(b.SHA256))))
			if err != nil {
				t.Fatal(err)
			}
			w, err := c.NewWriter(b.SHA256, b.Size)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(blob); err != nil {
				t.Fatal(err)
			}
			if err := w.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		if len(m.Files) != 1 || len(m.Files[0].Chunks) < 50 {
			t.Fatalf("v%s: %d files, want one cut in at least 50 chunks", version, len(m.Files))
		}
		if err := c.PutVersion(cache.Version{Product: "av", Version: version, Serial: m.Serial, Blobs: digests, Size: m.Size(), Added: time.Unix(int64(i+1), 0)}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	return c, ms[0], ms[1]
}

// readFile reads f back from the cache, chunk by chunk, and checks the
// whole file's digest.
func readFile(t *testing.T, c *cache.Cache, f manifest.File) {
	t.Helper()
	h := sha256.New()
	for _, ch := range f.Parts() {
		buf := make([]byte, ch.Size)
		if _, err := c.ReadAt(ch.SHA256, buf, 0); err != nil {
			t.Fatalf("chunk %s of %s: %v", ch.SHA256, f.Path, err)
		}
		if manifest.SHA256Hex(buf) != ch.SHA256 {
			t.Fatalf("chunk %s of %s: wrong bytes", ch.SHA256, f.Path)
		}
		h.Write(buf)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		t.Fatalf("%s read back from its chunks: sha256 %s, want %s", f.Path, got, f.SHA256)
	}
}

func blobSet(m *manifest.Manifest) map[string]int64 {
	out := map[string]int64{}
	for _, b := range m.Blobs() {
		out[b.SHA256] = b.Size
	}
	return out
}

// Two versions sharing 90% of their chunks occupy about 1.1 times one
// version in the cache, and the quota counts them so: a --cache-max of 1.5
// times one version keeps both. Under a quota that only one fits, the pass
// drops the old version and deletes only its own chunks; the new version
// stays whole and reads back byte for byte. Real bbolt cache, real
// chunked manifests.
func TestRetainer_Pass_SharedChunks(t *testing.T) {
	t.Parallel()
	c, m1, m2 := sharedVersions(t)
	size := m2.Size()
	b1, b2 := blobSet(m1), blobSet(m2)
	var unique1, shared int64
	for d, n := range b1 {
		if _, ok := b2[d]; ok {
			shared += n
		} else {
			unique1 += n
		}
	}
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ratio := float64(st.Bytes) / float64(size)
	t.Logf("v1 %d chunks, v2 %d chunks, %d KiB shared; cache holds %d bytes = %.2fx one version", len(b1), len(b2), shared>>10, st.Bytes, ratio)
	if ratio < 1.05 || ratio > 1.25 {
		t.Fatalf("two versions sharing 90%% of their bytes take %.2fx one version in the cache, want about 1.1x", ratio)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(max int64) *fakeDP {
		t.Helper()
		dp := &fakeDP{}
		r := New(Config{KeepVersions: 2, CacheMax: max, DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}, c, dp)
		if err := r.Pass(ctx); err != nil {
			t.Fatal(err)
		}
		return dp
	}

	// 1.5x one version: both fit, since shared chunks count once.
	if dp := run(size * 3 / 2); len(dp.kept) != 0 || dp.evicted != 0 {
		t.Fatalf("quota 1.5x one version: dropped %v, evicted %d blobs; want both versions kept", dp.kept, dp.evicted)
	}
	if vs, _ := c.Versions("av"); len(vs) != 2 {
		t.Fatalf("%d versions held, want 2", len(vs))
	}

	// 1.02x: v1 goes, with only the chunks v2 does not use.
	dp := run(size + size/50)
	if len(dp.kept) != 1 || dp.kept[0] != m1.Serial {
		t.Fatalf("quota 1.02x: dropped %v, want v1 (serial %d)", dp.kept, m1.Serial)
	}
	if want := countUnique(b1, b2); dp.evicted != want {
		t.Fatalf("evicted %d blobs, want the %d only v1 used", dp.evicted, want)
	}
	after, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if freed := st.Bytes - after.Bytes; freed != unique1 {
		t.Fatalf("freed %d bytes, want %d (v1's own chunks)", freed, unique1)
	}
	for d := range b1 {
		_, err := c.Stat(d)
		if _, inV2 := b2[d]; inV2 != (err == nil) {
			t.Fatalf("chunk %s: in v2 %v, still cached %v", d, inV2, err == nil)
		}
	}
	if vs, _ := c.Versions("av"); len(vs) != 1 || vs[0].Version != "2" {
		t.Fatalf("versions held %v, want only 2", vs)
	}
	readFile(t, c, m2.Files[0])
}

// countUnique returns how many digests of a are not in b.
func countUnique(a, b map[string]int64) int {
	n := 0
	for d := range a {
		if _, ok := b[d]; !ok {
			n++
		}
	}
	return n
}

// Dropping the older of two versions sharing chunks for KeepVersions
// deletes only its own chunks too (they are what no kept version names).
func TestRetainer_Pass_SharedChunksKeepVersions(t *testing.T) {
	t.Parallel()
	c, m1, m2 := sharedVersions(t)
	b1, b2 := blobSet(m1), blobSet(m2)
	dp := &fakeDP{}
	r := New(Config{KeepVersions: 1, DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}, c, dp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if want := countUnique(b1, b2); dp.evicted != want {
		t.Fatalf("evicted %d blobs, want the %d only v1 used", dp.evicted, want)
	}
	for d := range b2 {
		if _, err := c.Stat(d); err != nil {
			t.Fatalf("chunk %s of the kept version: %v", d, err)
		}
	}
	readFile(t, c, m2.Files[0])
}
