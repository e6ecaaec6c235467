package agent

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
}
