package cache

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// markOpen sets the session flags the way a crashed NoSync session leaves
// them.
func markOpen(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketState).Put(keyOpen, []byte{flagNoSync})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpen_AfterCrash_Checks(t *testing.T) {
	t.Parallel()
	cfg := testConfig(filepath.Join(t.TempDir(), "cache.db"))
	cfg.NoSync = true
	data, d := blob(70, 40*4096)
	c := mustOpen(t, cfg)
	ingest(t, c, d, data, 4096)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	markOpen(t, cfg.Path)

	var logs syncBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	c = mustOpen(t, cfg)
	if !strings.Contains(logs.String(), "consistency check passed") {
		t.Fatalf("no consistency check after an unclean NoSync session; logs:\n%s", logs.String())
	}
	if got := readAll(t, c, d, 1<<20); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

func TestOpen_AfterCrash_Corrupt(t *testing.T) {
	t.Parallel()
	cfg := testConfig(filepath.Join(t.TempDir(), "cache.db"))
	cfg.NoSync = true
	data, d := blob(71, 40*4096)
	c, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ingest(t, c, d, data, 4096)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	markOpen(t, cfg.Path)

	// Find a leaf page holding chunks and break its header, as a power loss
	// may leave a page that a NoSync commit had not written out.
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var victim, pageSize int
	err = db.View(func(tx *bolt.Tx) error {
		pageSize = db.Info().PageSize
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil || info == nil {
				return err
			}
			if info.Type == "leaf" && info.OverflowCount > 0 {
				victim = id
			}
		}
	})
	_ = db.Close()
	if err != nil || victim == 0 {
		t.Fatalf("no chunk leaf page found: %v", err)
	}
	f, err := os.OpenFile(cfg.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 16), int64(victim*pageSize)); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	if _, err := Open(cfg); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a damaged file after an unclean NoSync session = %v, want ErrCorrupt", err)
	}
	t.Logf("page %d broken: Open refused the file", victim)
}
