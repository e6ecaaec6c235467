package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	bolt "go.etcd.io/bbolt"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig is a config with small chunks, so tests cross chunk and batch
// boundaries with little data.
func testConfig(path string) Config {
	cfg := DefaultConfig()
	cfg.Path = path
	cfg.ChunkSize = 4 << 10
	cfg.FlushSize = 8 << 10
	cfg.InitialMmapSize = 0
	cfg.AllocSize = 0
	cfg.Logger = nil
	cfg.OpenTimeout = 10 * time.Second
	return cfg
}

// mustOpen opens a cache at path. On cleanup it closes the cache (a no-op if
// the test did) and runs bbolt's consistency check on the file, like bbolt's
// internal/btesting.
func mustOpen(t testing.TB, cfg Config) *Cache {
	t.Helper()
	c, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg.Path, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		mustCheck(t, cfg.Path)
	})
	return c
}

// newTestCache opens a cache in t.TempDir() with testConfig, changed by mods.
func newTestCache(t testing.TB, mods ...func(*Config)) *Cache {
	t.Helper()
	cfg := testConfig(filepath.Join(t.TempDir(), "cache.db"))
	for _, m := range mods {
		m(&cfg)
	}
	return mustOpen(t, cfg)
}

// mustCheck runs tx.Check on a closed bbolt file.
func mustCheck(t testing.TB, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Errorf("consistency check: open %s: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for e := range tx.Check() {
			errs = append(errs, e)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("consistency check of %s: %v", path, err)
	}
}

// blob returns n deterministic pseudo-random bytes and their digest.
func blob(seed uint64, n int) ([]byte, string) {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 1})
	_, _ = r.Read(b)
	return b, digestOf(b)
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ingest writes data as blob digest in pieces of step bytes and commits.
func ingest(t testing.TB, c *Cache, digest string, data []byte, step int) {
	t.Helper()
	w, err := c.NewWriter(digest, int64(len(data)))
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	defer w.Abort()
	writeAll(t, w, data[w.Offset():], step)
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func writeAll(t testing.TB, w *Writer, data []byte, step int) {
	t.Helper()
	for len(data) > 0 {
		n := min(step, len(data))
		m, err := w.Write(data[:n])
		if err != nil || m != n {
			t.Fatalf("Write(%d bytes) = %d, %v", n, m, err)
		}
		data = data[n:]
	}
}

// readAll reads a whole blob with ReadAt in pieces of step bytes.
func readAll(t testing.TB, c *Cache, digest string, step int) []byte {
	t.Helper()
	size, err := c.Stat(digest)
	if err != nil {
		t.Fatalf("Stat(%s): %v", digest, err)
	}
	var out bytes.Buffer
	p := make([]byte, step)
	for off := int64(0); ; {
		n, err := c.ReadAt(digest, p, off)
		out.Write(p[:n])
		off += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("ReadAt(off %d): %v", off, err)
		}
		if off > size {
			t.Fatalf("read past size %d", size)
		}
	}
	return out.Bytes()
}

// chunkCount counts the stored chunks of a digest.
func chunkCount(t testing.TB, c *Cache, digest string) int {
	t.Helper()
	k, err := parseDigest(digest)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = c.view(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketChunks).Cursor()
		for ck, _ := cur.Seek(k[:]); ck != nil && bytes.HasPrefix(ck, k[:]); ck, _ = cur.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
