package agent

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

func mirrorConfig(t testing.TB, r *repo, to string, srcs ...source.Source) MirrorConfig {
	return MirrorConfig{Sources: srcs, Product: product, To: to, Trust: r.trust}
}

// Mirror from a real nginx into a folder; the folder then serves an agent as
// a file:// source and through nginx; a second run copies nothing.
func TestMirror_FromNginxThenServesAsSource(t *testing.T) {
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "alpha", "modules/m.bin": "module", "databases/b.dat": "alpha"})
	ngx := testenv.StartNginx(t, r.dir, testenv.NginxOptions{Prefix: "/updates/"})
	src, err := source.Parse(ngx.URL, source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	to := filepath.Join(t.TempDir(), "share")
	res, err := Mirror(testCtx(t), mirrorConfig(t, r, to, src))
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsCopied != 2 || res.BlobsKept != 0 || !res.LatestUpdated || res.Version != "1" {
		t.Fatalf("first mirror: %+v", res)
	}
	// Incremental: nothing copied again, nginx asked for no blob.
	before := ngx.CountRequests(t, "") // every request so far
	res, err = Mirror(testCtx(t), mirrorConfig(t, r, to, src))
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsCopied != 0 || res.BlobsKept != 2 || res.BytesDownloaded != 0 {
		t.Fatalf("second mirror copied again: %+v", res)
	}
	for _, e := range ngx.Requests(t)[before:] {
		if filepath.Dir(e.URI) == "/updates/blobs/sha256" {
			t.Fatalf("second mirror fetched %s", e.URI)
		}
	}
	// The folder is a repository: file:// and nginx serve it to the agent.
	ngx2 := testenv.StartNginx(t, to, testenv.NginxOptions{})
	for _, u := range []string{"file://" + to, ngx2.URL} {
		s, err := source.Parse(u, source.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t, r.trust, s)
		mustUpdate(t, cfg)
		assertTree(t, current(t, cfg), map[string]string{"databases/a.dat": "alpha", "modules/m.bin": "module", "databases/b.dat": "alpha"})
		s.Close()
	}
}

func TestMirror_RefusesLowerSerialAndRepairsCorruptBlob(t *testing.T) {
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "one"})
	old := r.sameKeyRepo(t) // a stale copy holding only version 1
	old.publish(t, "1", 1, map[string]string{"databases/a.dat": "one"})
	r.publish(t, "2", 0, map[string]string{"databases/a.dat": "two"})
	to := t.TempDir()
	if _, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir))); err != nil {
		t.Fatal(err)
	}
	// A stale source cannot move the folder back to serial 1...
	_, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(old.dir)))
	if !errors.Is(err, ErrLowerSerial) {
		t.Fatalf("mirror of a lower serial: %v, want ErrLowerSerial", err)
	}
	// ...but an explicit older version is added without touching latest.
	cfg := mirrorConfig(t, r, to, source.NewFile(r.dir))
	cfg.Version = "1"
	res, err := Mirror(testCtx(t), cfg)
	if err != nil || res.LatestUpdated || res.Version != "1" {
		t.Fatalf("explicit version 1: %+v, %v", res, err)
	}
	l, err := manifest.ParseLatest(mustRead(t, filepath.Join(to, product, "latest.json")))
	if err != nil || l.Version != "2" {
		t.Fatalf("latest after mirroring version 1: %+v, %v", l, err)
	}
	// A corrupt blob in the folder is replaced, not kept.
	blob := filepath.Join(to, filepath.FromSlash(manifest.BlobPath(sha("two"))))
	if err := os.WriteFile(blob, []byte("tw0"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err = Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir)))
	if err != nil || res.BlobsCopied != 1 {
		t.Fatalf("repairing mirror: %+v, %v", res, err)
	}
	if got := string(mustRead(t, blob)); got != "two" {
		t.Fatalf("blob after repair: %q", got)
	}
}

func TestMirror_BadSignatureWritesNothing(t *testing.T) {
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "one"})
	other := newRepo(t) // a different key
	to := t.TempDir()
	cfg := mirrorConfig(t, other, to, source.NewFile(r.dir))
	if _, err := Mirror(testCtx(t), cfg); !errors.Is(err, manifest.ErrUntrustedKey) {
		t.Fatalf("mirror with an untrusted key: %v", err)
	}
	if entries, _ := os.ReadDir(to); len(entries) != 0 {
		t.Fatalf("a refused mirror wrote %d entries", len(entries))
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An interrupted mirror keeps its partial download outside the repository
// tree (a web server on the folder never serves half a blob) and the next
// run resumes it.
func TestMirror_InterruptedKeepsPartialOutsideTree(t *testing.T) {
	r := newRepo(t)
	content := strings.Repeat("0123456789", 100_000) // 1 MB
	r.publish(t, "1", 0, map[string]string{"databases/big.dat": content})
	cut := serveRepo(t, r.dir, func(int, *http.Request) fault { return fault{cutAfter: 100_000} })
	to := t.TempDir()
	if _, err := Mirror(testCtx(t), mirrorConfig(t, r, to, cut.src)); err == nil {
		t.Fatal("mirror from a source that always cuts the blob succeeded")
	}
	entries, err := os.ReadDir(filepath.Join(to, filepath.FromSlash(manifest.BlobDir)))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("an interrupted mirror left %s in the served blob folder", entries[0].Name())
	}
	part := filepath.Join(to, mirrorPartDir, sha(content)+partSuffix)
	if fi, err := os.Stat(part); err != nil || fi.Size() == 0 {
		t.Fatalf("partial download %s: %v", part, err)
	}
	// Only the partial download is left there, in a folder that a web
	// server running under another account cannot read.
	if fi, err := os.Stat(filepath.Dir(part)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("partial folder: %v, %v; want mode 0700", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(part)); len(entries) != 1 {
		t.Fatalf("partial folder holds %d entries, want the partial download alone", len(entries))
	}
	res, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir)))
	if err != nil || res.BlobsCopied != 1 || res.BytesDownloaded >= int64(len(content)) {
		t.Fatalf("resumed mirror: %+v, %v (want fewer than %d bytes downloaded)", res, err, len(content))
	}
	if got := string(mustRead(t, r.blobFile(content))); got != content {
		t.Fatal("source changed")
	}
	if got := string(mustRead(t, filepath.Join(to, filepath.FromSlash(manifest.BlobPath(sha(content)))))); got != content {
		t.Fatalf("mirrored blob differs")
	}
	assertNoPartialDir(t, to)
}

// servedDocs are the signed documents of version v in a mirror folder,
// latest.json's included.
func servedDocs(to, v string) []string {
	latest := filepath.Join(to, filepath.FromSlash(manifest.LatestPath(product)))
	man := filepath.Join(to, filepath.FromSlash(manifest.ManifestPath(product, v)))
	return []string{latest, manifest.SigPath(latest), man, manifest.SigPath(man)}
}

func assertNoPartialDir(t testing.TB, to string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(to, mirrorPartDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left after a run (err %v)", mirrorPartDir, err)
	}
}

// A rerun that finds nothing new rewrites no served file (their mtimes, an
// HTTP server's ETag and Last-Modified, stay) and says up-to-date; no
// staging folder is left in the served root.
func TestMirror_RerunChangesNothing(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "alpha"})
	to := t.TempDir()
	res, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir)))
	if err != nil || res.Status != StatusUpdated || !res.LatestUpdated {
		t.Fatalf("first mirror: %+v, %v; want updated", res, err)
	}
	assertNoPartialDir(t, to)
	// Back-date every served file, so that a rewrite shows whatever the
	// file system's clock granularity.
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	files := append(servedDocs(to, "1"), filepath.Join(to, filepath.FromSlash(manifest.BlobPath(sha("alpha")))))
	for _, p := range files {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	res, err = Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != StatusUpToDate || res.LatestUpdated || res.BlobsCopied != 0 || res.BlobsKept != 1 {
		t.Fatalf("rerun: %+v; want up-to-date, latest not rewritten, nothing copied", res)
	}
	for _, p := range files {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(old) {
			t.Errorf("rerun rewrote %s (mtime %v)", p, fi.ModTime())
		}
	}
	assertNoPartialDir(t, to)
}

// KeepVersions keeps the N newest versions (by serial) and the blobs they
// use, including one shared with a removed version or used by another
// product in the folder; documents go before blobs.
func TestMirror_KeepVersionsPrunesOldVersions(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	to := t.TempDir()
	// Another product in the same folder uses the blob of "one".
	if _, err := manifest.Publish(manifest.PublishOptions{Repo: to, Product: "other", Version: "9", Key: r.key},
		writeTree(t, map[string]string{"databases/o.dat": "one"})); err != nil {
		t.Fatal(err)
	}
	contents := []string{"one", "two", "three", "four"}
	for i, c := range contents {
		v := strconv.Itoa(i + 1)
		r.publish(t, v, 0, map[string]string{"databases/shared.dat": "shared", "databases/own.dat": c})
		cfg := mirrorConfig(t, r, to, source.NewFile(r.dir))
		cfg.KeepVersions = 2
		res, err := Mirror(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if wantRemoved := i >= 2; (len(res.VersionsRemoved) == 1) != wantRemoved {
			t.Fatalf("mirror of %s removed %v", v, res.VersionsRemoved)
		}
	}
	assertVersions := func(want ...string) {
		t.Helper()
		var got []string
		entries, err := os.ReadDir(filepath.Join(to, product))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IsDir() {
				got = append(got, e.Name())
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("version folders %v, want %v", got, want)
		}
	}
	assertBlobs := func(want map[string]bool) {
		t.Helper()
		for c, kept := range want {
			_, err := os.Stat(filepath.Join(to, filepath.FromSlash(manifest.BlobPath(sha(c)))))
			if kept != (err == nil) {
				t.Errorf("blob of %q: kept %v, want %v (%v)", c, err == nil, kept, err)
			}
		}
	}
	assertVersions("3", "4")
	assertBlobs(map[string]bool{"shared": true, "one": true, "two": false, "three": true, "four": true})

	// An explicit older version is added and kept by the run that copied
	// it; the next run removes it again, and its blobs.
	cfg := mirrorConfig(t, r, to, source.NewFile(r.dir))
	cfg.KeepVersions, cfg.Version = 2, "2"
	if res, err := Mirror(testCtx(t), cfg); err != nil || len(res.VersionsRemoved) != 0 {
		t.Fatalf("mirror of version 2: %+v, %v", res, err)
	}
	assertVersions("2", "3", "4")
	cfg.Version = ""
	res, err := Mirror(testCtx(t), cfg)
	if err != nil || res.Status != StatusUpToDate || !slices.Equal(res.VersionsRemoved, []string{"2"}) || res.BlobsRemoved != 1 {
		t.Fatalf("next mirror: %+v, %v; want up-to-date, version 2 and its own blob removed", res, err)
	}
	assertVersions("3", "4")
	assertBlobs(map[string]bool{"shared": true, "one": true, "two": false})

	// The pruned folder still serves the latest version whole.
	ucfg := testConfig(t, r.trust, source.NewFile(to))
	mustUpdate(t, ucfg)
	assertTree(t, current(t, ucfg), map[string]string{"databases/shared.dat": "shared", "databases/own.dat": "four"})
}

// Pruning keeps the version latest.json names and the one the run copied,
// whatever KeepVersions says.
func TestMirror_KeepVersionsKeepsLatest(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "one"})
	r.publish(t, "2", 0, map[string]string{"databases/a.dat": "two"})
	to := t.TempDir()
	cfg := mirrorConfig(t, r, to, source.NewFile(r.dir))
	if _, err := Mirror(testCtx(t), cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Version, cfg.KeepVersions = "1", 1
	res, err := Mirror(testCtx(t), cfg)
	if err != nil || len(res.VersionsRemoved) != 0 {
		t.Fatalf("mirror of version 1, keep 1: %+v, %v; want nothing removed (2 is latest, 1 was just copied)", res, err)
	}
	cfg.Version = ""
	if res, err = Mirror(testCtx(t), cfg); err != nil || !slices.Equal(res.VersionsRemoved, []string{"1"}) {
		t.Fatalf("mirror, keep 1: %+v, %v; want version 1 removed", res, err)
	}
	if _, err := os.Stat(filepath.Join(to, filepath.FromSlash(manifest.ManifestPath(product, "2")))); err != nil {
		t.Fatalf("latest version removed: %v", err)
	}
}

// A source offering a lower serial than the folder holds is passed over
// for the next; an expired one too; when every source is stale the newest
// version is copied all the same, and the result says stale.
func TestMirror_StaleAndLowerSerialSources(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "one"})
	old := r.sameKeyRepo(t)
	old.publish(t, "1", 1, map[string]string{"databases/a.dat": "one"})
	r.publish(t, "2", 0, map[string]string{"databases/a.dat": "two"})
	to := t.TempDir()
	if _, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir))); err != nil {
		t.Fatal(err)
	}
	// The lower serial first: passed over, the current source serves.
	res, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(old.dir), source.NewFile(r.dir)))
	if err != nil || res.Status != StatusUpToDate || res.Source != source.NewFile(r.dir).String() {
		t.Fatalf("mirror with a lower-serial source first: %+v, %v; want up-to-date from %s", res, err, r.dir)
	}

	frozen := r.sameKeyRepo(t)
	past := time.Now().Add(-48 * time.Hour)
	frozen.publishWith(t, manifest.PublishOptions{Version: "3", Serial: 3, Expires: 24 * time.Hour, Now: func() time.Time { return past }},
		map[string]string{"databases/a.dat": "three"})
	fresh := r.sameKeyRepo(t)
	fresh.publish(t, "3", 3, map[string]string{"databases/a.dat": "three"})
	res, err = Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(frozen.dir), source.NewFile(fresh.dir)))
	if err != nil || res.Status != StatusUpdated || res.Source != source.NewFile(fresh.dir).String() {
		t.Fatalf("mirror with a stale source first: %+v, %v; want updated from the current source", res, err)
	}

	// Every source stale: the newest is copied, and said stale; a rerun
	// copies nothing and is still stale.
	to2 := t.TempDir()
	for i, want := range []bool{true, false} {
		res, err = Mirror(testCtx(t), mirrorConfig(t, r, to2, source.NewFile(frozen.dir)))
		if err != nil || res.Status != StatusStale || res.Version != "3" || res.LatestUpdated != want {
			t.Fatalf("run %d from a stale source only: %+v, %v; want stale, version 3, latest written %v", i, res, err, want)
		}
	}
}

// writeTree writes files (slash path -> content) into a new folder.
func writeTree(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Two runs never write one folder at once (pruning could remove blobs the
// other copied for a manifest not written yet): the second is refused with
// ErrBusy, and the first's release leaves no staging folder.
func TestMirror_BusyWhileAnotherRuns(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	r.publish(t, "1", 0, map[string]string{"databases/a.dat": "one"})
	to := t.TempDir()
	_, release, err := mirrorLock(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir))); !errors.Is(err, ErrBusy) {
		t.Fatalf("mirror while another runs: %v, want ErrBusy", err)
	}
	if err := release(true); err != nil {
		t.Fatal(err)
	}
	assertNoPartialDir(t, to)
	if _, err := Mirror(testCtx(t), mirrorConfig(t, r, to, source.NewFile(r.dir))); err != nil {
		t.Fatal(err)
	}
}
