package cache

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestCache_DeleteBlobs_OneTransaction(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	a, da := blob(1, 10_000)
	b, db := blob(2, 20_000)
	_, dc := blob(3, 30_000) // never stored
	d, dd := blob(4, 5_000)
	ingest(t, c, da, a, 4096)
	ingest(t, c, db, b, 4096)
	ingest(t, c, dd, d, 4096)
	if err := c.PutVersion(Version{Product: "p", Version: "1", Serial: 1, Blobs: []string{da, dd}, Size: 15_000, Added: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// A writer on dd makes it busy: it is skipped, not deleted.
	w, err := c.NewWriter(digestOf([]byte("busy")), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	busy := digestOf([]byte("busy"))
	deleted, err := c.DeleteBlobs([]string{da, db, dc, busy})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deleted)
	want := []string{da, db}
	slices.Sort(want)
	if !slices.Equal(deleted, want) {
		t.Fatalf("deleted %v, want %v", deleted, want)
	}
	for _, dg := range want {
		if _, err := c.Stat(dg); !errors.Is(err, ErrNotFound) {
			t.Fatalf("blob %s still there: %v", dg, err)
		}
	}
	if _, err := c.Stat(dd); err != nil {
		t.Fatalf("blob not asked for was deleted: %v", err)
	}
	// The version referencing a deleted blob is gone with it.
	if vs, err := c.Versions("p"); err != nil || len(vs) != 0 {
		t.Fatalf("versions after deleting one of their blobs: %v, %v", vs, err)
	}
	if _, err := c.DeleteBlobs([]string{"not hex"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad digest: %v, want ErrInvalid", err)
	}
}
