package retain

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dpcache/dpcache/cache"
)

// fakeStore is a Store in memory: versions by product, whole blobs by
// digest.
type fakeStore struct {
	mu       sync.Mutex
	versions map[string][]cache.Version
	blobs    map[string]int64
}

func (s *fakeStore) Products() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for p := range s.versions {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

func (s *fakeStore) Versions(product string) ([]cache.Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.versions[product]), nil
}

// Unreferenced returns the whole blobs no version names.
func (s *fakeStore) Unreferenced() ([]cache.BlobInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	used := map[string]bool{}
	for _, vs := range s.versions {
		for _, v := range vs {
			for _, d := range v.Blobs {
				used[d] = true
			}
		}
	}
	var out []cache.BlobInfo
	for d, size := range s.blobs {
		if !used[d] {
			out = append(out, cache.BlobInfo{Digest: d, Whole: true, Size: size, Stored: size})
		}
	}
	slices.SortFunc(out, func(a, b cache.BlobInfo) int { return compare(a.Digest, b.Digest) })
	return out, nil
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *fakeStore) PendingBlobs() ([]cache.BlobInfo, error) { return nil, nil }

func (s *fakeStore) Stats() (cache.Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st cache.Stats
	for _, size := range s.blobs {
		st.Blobs++
		st.Bytes += size
	}
	return st, nil
}

func (s *fakeStore) Blob(digest string) (cache.BlobInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size, ok := s.blobs[digest]
	if !ok {
		return cache.BlobInfo{}, cache.ErrNotFound
	}
	return cache.BlobInfo{Digest: digest, Whole: true, Size: size, Stored: size}, nil
}

func (s *fakeStore) DeleteVersion(product, version string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.versions[product] = slices.DeleteFunc(s.versions[product], func(v cache.Version) bool { return v.Version == version })
	return nil
}

func (s *fakeStore) DeleteBlobs(digests []string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range digests {
		delete(s.blobs, d)
	}
	return digests, nil
}

// fakeDP records what a pass tells the DP.
type fakeDP struct {
	protected string // a digest a newer version names
	mu        sync.Mutex
	kept      []uint64
	changed   []string
	evicted   int
	forgot    int
}

func (d *fakeDP) Fetching(string) bool { return false }
func (d *fakeDP) Protected(digest string, _ map[string]uint64) bool {
	return digest == d.protected
}
func (d *fakeDP) ReservedBytes() int64 { return 0 }
func (d *fakeDP) KeepPublished(_ string, serial uint64) {
	d.mu.Lock()
	d.kept = append(d.kept, serial)
	d.mu.Unlock()
}
func (d *fakeDP) VersionsChanged(product string) {
	d.mu.Lock()
	d.changed = append(d.changed, product)
	d.mu.Unlock()
}
func (d *fakeDP) ForgetOldDocuments([]string) {
	d.mu.Lock()
	d.forgot++
	d.mu.Unlock()
}
func (d *fakeDP) Evicted(blobs int, _ int64) {
	d.mu.Lock()
	d.evicted += blobs
	d.mu.Unlock()
}

// A pass keeps the newest KeepVersions versions, deletes the blobs only
// the dropped ones named, and spares blobs being read and blobs a newer
// version names, against a store in memory.
func TestRetainer_Pass_KeepVersions(t *testing.T) {
	t.Parallel()
	v := func(serial uint64, blobs ...string) cache.Version {
		return cache.Version{Product: "av", Version: string(rune('0' + serial)), Serial: serial, Blobs: blobs, Added: time.Unix(int64(serial), 0)}
	}
	store := &fakeStore{
		versions: map[string][]cache.Version{"av": {v(1, "a", "s"), v(2, "b", "s"), v(3, "c", "s"), v(4, "d", "s")}},
		blobs:    map[string]int64{"a": 1, "b": 2, "c": 3, "d": 4, "s": 5, "p": 6},
	}
	dp := &fakeDP{protected: "p"}
	r := New(Config{KeepVersions: 2, DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}, store, dp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	release, err := r.Pins().StartReading(ctx, "b") // read while the pass runs
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	var serials []uint64
	vs, _ := store.Versions("av")
	for _, v := range vs {
		serials = append(serials, v.Serial)
	}
	if !slices.Equal(serials, []uint64{3, 4}) || !slices.Equal(dp.kept, []uint64{1, 2}) || !slices.Equal(dp.changed, []string{"av"}) {
		t.Fatalf("versions %v, publication kept for %v, changed %v; want [3 4], [1 2], [av]", serials, dp.kept, dp.changed)
	}
	if _, err := store.Blob("a"); err == nil {
		t.Error("blob a of a dropped version is still there")
	}
	for _, d := range []string{"b", "p", "c", "d", "s"} { // read, protected, kept
		if _, err := store.Blob(d); err != nil {
			t.Errorf("blob %s: %v, want kept", d, err)
		}
	}
	if !r.Pins().Waiting("b") || dp.evicted != 1 || dp.forgot != 1 {
		t.Fatalf("b waiting %v, evicted %d, forgot %d; want true, 1, 1", r.Pins().Waiting("b"), dp.evicted, dp.forgot)
	}
	release() // the last reader asks for another pass, which deletes b
	select {
	case <-r.kick:
	default:
		t.Fatal("the last reader of a skipped blob did not ask for a pass")
	}
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Blob("b"); err == nil {
		t.Error("blob b still there after its reader left")
	}
}
