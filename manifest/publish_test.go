package manifest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// writeTree creates files (slash path -> content) under a new folder.
func writeTree(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		fp := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(fp), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fp, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// readRepo reads a signed document and its signature from a repository.
func readRepo(t testing.TB, repo, p string) (data, sig []byte) {
	t.Helper()
	var err error
	if data, err = os.ReadFile(filepath.Join(repo, filepath.FromSlash(p))); err != nil {
		t.Fatal(err)
	}
	if sig, err = os.ReadFile(filepath.Join(repo, filepath.FromSlash(SigPath(p)))); err != nil {
		t.Fatal(err)
	}
	return data, sig
}

// checkRepo verifies what a client would: latest, its manifest, every blob.
func checkRepo(t testing.TB, tr *Trust, repo, product string) *Manifest {
	t.Helper()
	ld, ls := readRepo(t, repo, LatestPath(product))
	l, err := tr.VerifyLatest(ld, ls)
	if err != nil {
		t.Fatal(err)
	}
	md, ms := readRepo(t, repo, ManifestPath(product, l.Version))
	m, err := tr.VerifyManifest(md, ms, l)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m.Files {
		var whole []byte
		for _, p := range f.Parts() {
			b, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(BlobPath(p.SHA256))))
			if err != nil {
				t.Fatalf("blob of %s: %v", f.Path, err)
			}
			if int64(len(b)) != p.Size || SHA256Hex(b) != p.SHA256 {
				t.Fatalf("blob of %s: wrong content", f.Path)
			}
			whole = append(whole, b...)
		}
		if int64(len(whole)) != f.Size || SHA256Hex(whole) != f.SHA256 {
			t.Fatalf("%s: its blobs do not make the file", f.Path)
		}
	}
	// No temporary files left behind.
	_ = filepath.WalkDir(repo, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
	return m
}

func fixedClock() func() time.Time {
	var n atomic.Int64
	return func() time.Time {
		return time.Date(2026, 3, 1, 12, 0, int(n.Add(1)), 123456789, time.FixedZone("X", 3600))
	}
}

func TestPublish_Incremental(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	repo := filepath.Join(t.TempDir(), "repo") // created by Publish
	src1 := writeTree(t, map[string]string{
		"bases/av-001.bin":  "database one",
		"bases/av-002.bin":  "database two",
		"bases/copy.bin":    "database one", // same content: one blob
		"modules/engine.so": "engine v1",
		"modulesx/a":        "not a module",
	})
	opts := PublishOptions{Repo: repo, Product: "kes", Version: "1.0", Key: k, Now: fixedClock()}
	r1, err := Publish(opts, src1)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Manifest.Serial != 1 || r1.Latest.Serial != 1 {
		t.Errorf("first serial = %d, want 1", r1.Manifest.Serial)
	}
	if r1.BlobsWritten != 4 || r1.BlobsReused != 0 {
		t.Errorf("first publish: written %d reused %d, want 4, 0", r1.BlobsWritten, r1.BlobsReused)
	}
	if want := int64(len("database one") + len("database two") + len("engine v1") + len("not a module")); r1.BytesWritten != want {
		t.Errorf("BytesWritten = %d, want %d", r1.BytesWritten, want)
	}
	m1 := checkRepo(t, tr, repo, "kes")
	wantPaths := []string{"bases/av-001.bin", "bases/av-002.bin", "bases/copy.bin", "modules/engine.so", "modulesx/a"}
	var gotPaths []string
	for _, f := range m1.Files {
		gotPaths = append(gotPaths, f.Path)
		wantComp := ComponentDatabases
		if strings.HasPrefix(f.Path, "modules/") {
			wantComp = ComponentModules
		}
		if f.Component != wantComp {
			t.Errorf("%s: component %q, want %q", f.Path, f.Component, wantComp)
		}
	}
	if strings.Join(gotPaths, ",") != strings.Join(wantPaths, ",") {
		t.Errorf("paths %v, want %v", gotPaths, wantPaths)
	}
	if p := m1.Published; p.Location() != time.UTC || p.Nanosecond() != 0 {
		t.Errorf("published %v: want whole seconds in UTC", p)
	}

	// Second version: one database changed, one added, one removed.
	src2 := writeTree(t, map[string]string{
		"bases/av-001.bin":  "database one",
		"bases/av-002.bin":  "database two, updated",
		"bases/av-003.bin":  "database three",
		"modules/engine.so": "engine v1",
	})
	blob1 := filepath.Join(repo, filepath.FromSlash(BlobPath(SHA256Hex([]byte("database one")))))
	before, err := os.Stat(blob1)
	if err != nil {
		t.Fatal(err)
	}
	opts.Version = "1.1"
	r2, err := Publish(opts, src2)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Manifest.Serial != 2 {
		t.Errorf("second serial = %d, want 2", r2.Manifest.Serial)
	}
	if r2.BlobsWritten != 2 || r2.BlobsReused != 2 {
		t.Errorf("second publish: written %d reused %d, want 2, 2", r2.BlobsWritten, r2.BlobsReused)
	}
	after, err := os.Stat(blob1)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("a present blob was rewritten")
	}
	if m2 := checkRepo(t, tr, repo, "kes"); m2.Version != "1.1" {
		t.Errorf("latest version %s, want 1.1", m2.Version)
	}
	// The old version stays readable.
	md, ms := readRepo(t, repo, ManifestPath("kes", "1.0"))
	if _, err := tr.VerifyManifest(md, ms, nil); err != nil {
		t.Errorf("old manifest: %v", err)
	}

	// Same version again: refused, nothing changes.
	ld, _ := readRepo(t, repo, LatestPath("kes"))
	if _, err := Publish(opts, src2); !errors.Is(err, ErrVersionExists) {
		t.Errorf("republish: %v, want ErrVersionExists", err)
	}
	// Lower or equal serial: refused.
	for _, s := range []uint64{1, 2} {
		o := opts
		o.Version, o.Serial = "1.2", s
		if _, err := Publish(o, src2); !errors.Is(err, ErrLowerSerial) {
			t.Errorf("serial %d: %v, want ErrLowerSerial", s, err)
		}
	}
	if ld2, _ := readRepo(t, repo, LatestPath("kes")); string(ld) != string(ld2) {
		t.Error("a refused publish changed latest.json")
	}
	// An explicit higher serial is used as given; the next default follows it.
	o := opts
	o.Version, o.Serial = "2.0", 100
	if r, err := Publish(o, src2); err != nil || r.Latest.Serial != 100 || r.BlobsWritten != 0 {
		t.Fatalf("serial 100: %+v, %v", r, err)
	}
	o.Version, o.Serial = "2.1", 0
	if r, err := Publish(o, src1); err != nil || r.Latest.Serial != 101 {
		t.Fatalf("after serial 100: %+v, %v", r, err)
	}
	checkRepo(t, tr, repo, "kes")
}

func TestPublish_Refuses(t *testing.T) {
	t.Parallel()
	k, _ := newKey(t)
	good := writeTree(t, map[string]string{"a": "x"})

	withSymlink := writeTree(t, map[string]string{"a": "x"})
	if err := os.Symlink("a", filepath.Join(withSymlink, "link")); err != nil {
		t.Fatal(err)
	}
	withFifo := writeTree(t, map[string]string{"a": "x"})
	if err := mkfifo(filepath.Join(withFifo, "fifo")); errors.Is(err, errors.ErrUnsupported) {
		t.Skip("no FIFOs on this system")
	} else if err != nil {
		t.Fatal(err)
	}
	withBackslash := writeTree(t, map[string]string{`a\b`: "x"})
	badLatestRepo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(badLatestRepo, "kes"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badLatestRepo, "kes", LatestName), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		opts PublishOptions
		src  string
		want error
	}{
		{"symlink", PublishOptions{Product: "kes", Version: "1", Key: k}, withSymlink, ErrUnsupportedFile},
		{"fifo", PublishOptions{Product: "kes", Version: "1", Key: k}, withFifo, ErrUnsupportedFile},
		{"backslash name", PublishOptions{Product: "kes", Version: "1", Key: k}, withBackslash, ErrInvalid},
		{"bad product", PublishOptions{Product: "../kes", Version: "1", Key: k}, good, ErrInvalid},
		{"bad version", PublishOptions{Product: "kes", Version: "a/b", Key: k}, good, ErrInvalid},
		{"no key", PublishOptions{Product: "kes", Version: "1"}, good, ErrBadKey},
		{"corrupt latest", PublishOptions{Repo: badLatestRepo, Product: "kes", Version: "1", Key: k}, good, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.opts.Repo == "" {
				tt.opts.Repo = t.TempDir()
			}
			_, err := Publish(tt.opts, tt.src)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Publish = %v, want %v", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(tt.opts.Repo, "kes", "1", ManifestName)); err == nil {
				t.Fatal("a manifest was written")
			}
		})
	}
	t.Run("no repo", func(t *testing.T) {
		t.Parallel()
		if _, err := Publish(PublishOptions{Product: "kes", Version: "1", Key: k}, good); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Publish = %v, want ErrInvalid", err)
		}
	})
	t.Run("missing source", func(t *testing.T) {
		t.Parallel()
		_, err := Publish(PublishOptions{Repo: t.TempDir(), Product: "kes", Version: "1", Key: k}, filepath.Join(t.TempDir(), "nope"))
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Publish = %v, want ErrNotExist", err)
		}
	})
}

func TestPublish_EmptyAndSymlinkedRoot(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	repo := t.TempDir()
	empty := t.TempDir()
	// Refused unless asked for: endpoints would lose their databases.
	if _, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "0", Key: k}, empty); !errors.Is(err, ErrEmpty) || !strings.Contains(err.Error(), "--allow-empty") {
		t.Fatalf("Publish of an empty folder = %v, want ErrEmpty naming --allow-empty", err)
	}
	if _, err := os.Stat(filepath.Join(repo, "p")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused publish wrote the product's folder: %v", err)
	}
	if _, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "0", Key: k, AllowEmpty: true}, empty); err != nil {
		t.Fatal(err)
	}
	if m := checkRepo(t, tr, repo, "p"); len(m.Files) != 0 {
		t.Fatalf("files: %v", m.Files)
	}
	// The source folder itself may be a symlink (only entries inside may not).
	real := writeTree(t, map[string]string{"x/y": "z"})
	link := filepath.Join(t.TempDir(), "src")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "1", Key: k}, link); err != nil {
		t.Fatal(err)
	}
	if m := checkRepo(t, tr, repo, "p"); len(m.Files) != 1 || m.Files[0].Path != "x/y" || m.Serial != 2 {
		t.Fatalf("manifest: %+v", m)
	}
}

func TestPublish_RepairsTruncatedBlob(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	repo := t.TempDir()
	src := writeTree(t, map[string]string{"f": "full content"})
	blob := filepath.Join(repo, filepath.FromSlash(BlobPath(SHA256Hex([]byte("full content")))))
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blob, []byte("full"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "1", Key: k}, src)
	if err != nil {
		t.Fatal(err)
	}
	if r.BlobsWritten != 1 {
		t.Errorf("BlobsWritten = %d, want 1", r.BlobsWritten)
	}
	checkRepo(t, tr, repo, "p")
}

// TestPublish_Expires: latest.json carries "expires" = published + Expires;
// without Expires it has none (never expires); an expiry before the
// publication is refused by ParseLatest.
func TestPublish_Expires(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	repo := t.TempDir()
	src := writeTree(t, map[string]string{"f": "content"})
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	r, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "1", Key: k, Expires: 168 * time.Hour, Now: func() time.Time { return now }}, src)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(LatestPath("p"))))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"expires": "2026-12-07T12:00:00Z"`) {
		t.Errorf("latest.json = %s, want expires 2026-12-07T12:00:00Z", data)
	}
	l := r.Latest
	if l.Expired(now.Add(167*time.Hour)) || !l.Expired(now.Add(168*time.Hour)) {
		t.Errorf("Expired: want false a hour before, true at the expiry")
	}
	checkRepo(t, tr, repo, "p")

	r, err = Publish(PublishOptions{Repo: repo, Product: "p", Version: "2", Key: k}, src)
	if err != nil || r.Latest.Expires != nil || r.Latest.Expired(now.Add(100*365*24*time.Hour)) {
		t.Errorf("Publish without Expires: %v, expires %v; want none, never expired", err, r.Latest.Expires)
	}

	bad := strings.Replace(string(data), `"expires": "2026-12-07T12:00:00Z"`, `"expires": "2026-11-29T12:00:00Z"`, 1)
	if _, err := ParseLatest([]byte(bad)); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseLatest of an expiry before publication = %v, want ErrInvalid", err)
	}
}

// With Chunk, a large file is stored as its chunks only, and a new version
// that rewrites part of it stores only the chunks that changed.
func TestPublish_Chunked(t *testing.T) {
	t.Parallel()
	key, tr := newKey(t)
	repo := t.TempDir()
	big := make([]byte, 4<<20)
	randFill(1, big)
	src := writeTree(t, map[string]string{"bases/big.db": string(big), "bases/small.txt": "small"})
	opts := PublishOptions{Repo: repo, Product: "kes", Version: "1", Key: key, Now: fixedClock(), Chunk: true}
	res, err := Publish(opts, src)
	if err != nil {
		t.Fatal(err)
	}
	m := checkRepo(t, tr, repo, "kes")
	f := m.Files[0]
	if f.Path != "bases/big.db" || len(f.Chunks) < 4 || len(m.Files[1].Chunks) != 0 {
		t.Fatalf("files: %d chunks of %s, %d of the small file", len(f.Chunks), f.Path, len(m.Files[1].Chunks))
	}
	if _, err := os.Stat(filepath.Join(repo, BlobPath(f.SHA256))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the whole chunked file is stored too: %v", err)
	}
	if res.BytesWritten != int64(len(big))+5 {
		t.Fatalf("v1 wrote %d bytes, want %d", res.BytesWritten, len(big)+5)
	}

	// v2: 256 KiB rewritten in the middle.
	randFill(3, big[2<<20:2<<20+256<<10])
	src = writeTree(t, map[string]string{"bases/big.db": string(big), "bases/small.txt": "small"})
	opts.Version = "2"
	res, err = Publish(opts, src)
	if err != nil {
		t.Fatal(err)
	}
	checkRepo(t, tr, repo, "kes")
	if res.BytesWritten > 256<<10+2*ChunkMaxSize || res.BlobsReused < len(f.Chunks)-4 {
		t.Fatalf("v2 wrote %d bytes in %d blobs, reused %d: more than the changed chunks", res.BytesWritten, res.BlobsWritten, res.BlobsReused)
	}
	t.Logf("v2: %d bytes in %d new chunks, %d reused", res.BytesWritten, res.BlobsWritten, res.BlobsReused)
}

// Cut is deterministic and bounded: the same bytes give the same chunks,
// each between ChunkMinSize and ChunkMaxSize but the last.
func TestCut(t *testing.T) {
	t.Parallel()
	data := make([]byte, 3<<20)
	randFill(5, data)
	cut := func() (sizes []int) {
		if err := Cut(bytes.NewReader(data), func(b []byte) error { sizes = append(sizes, len(b)); return nil }); err != nil {
			t.Fatal(err)
		}
		return sizes
	}
	a, b := cut(), cut()
	if !slices.Equal(a, b) {
		t.Fatal("two cuts of the same bytes differ")
	}
	sum := 0
	for i, n := range a {
		sum += n
		if n > ChunkMaxSize || (n < ChunkMinSize && i != len(a)-1) {
			t.Fatalf("chunk %d of %d bytes", i, n)
		}
	}
	if sum != len(data) {
		t.Fatalf("chunks of %d bytes, want %d", sum, len(data))
	}
}

// randFill fills b with pseudo-random bytes from seed.
func randFill(seed byte, b []byte) {
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
}
