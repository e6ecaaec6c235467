package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
)

// readManifest parses the published manifest of version.
func readManifest(t *testing.T, repo, version string) *manifest.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(manifest.ManifestPath(product, version))))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.ParseManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A 32 MiB database published (chunked by default), then again with 1 MiB
// rewritten and 100 KiB inserted: through a real DP in front of nginx, the
// origin sends only the new chunks, once, and each endpoint downloads only
// them; the second endpoint gets them from the DP's cache.
func TestE2E_ChunkedUpdateThroughDP(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	sizes := map[string]int{"databases/base.db": 32 << 20, "databases/index.idx": 40 << 10}
	files := writeFiles(t, src, sizes)
	repo := filepath.Join(work, "repo")
	mustRun(t, "publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "1", src)
	m1 := readManifest(t, repo, "1")
	if len(m1.Files[0].Chunks) == 0 {
		t.Fatal("publish did not chunk the 32 MiB file by default")
	}
	if _, err := os.Stat(filepath.Join(repo, filepath.FromSlash(manifest.BlobPath(m1.Files[0].SHA256)))); err == nil {
		t.Fatal("the repository stores the whole chunked file too")
	}
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dp := startNode(t, origin.URL, k.pub)
	a, b := filepath.Join(work, "endpoint-a"), filepath.Join(work, "endpoint-b")
	for _, dir := range []string{a, b} {
		res := update(t, dp.URL(), dir, k.pub)
		if res.Status != "updated" || res.BytesDownloaded != int64(sizes["databases/base.db"]+sizes["databases/index.idx"]) {
			t.Fatalf("v1 to %s: %+v", dir, res)
		}
		checkTree(t, current(dir), files)
	}

	// v2: 1 MiB rewritten at 8 MiB, 100 KiB inserted at 20 MiB.
	db := filepath.Join(src, "databases", "base.db")
	old, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	region, insert := make([]byte, 1<<20), make([]byte, 100<<10)
	_, _ = rand.Read(region)
	_, _ = rand.Read(insert)
	nw := append(append(append([]byte{}, old[:8<<20]...), region...), old[9<<20:20<<20]...)
	nw = append(append(nw, insert...), old[20<<20:]...)
	if err := os.WriteFile(db, nw, 0o644); err != nil {
		t.Fatal(err)
	}
	if files["databases/base.db"], err = fileSHA256(db); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "2", src)
	m2 := readManifest(t, repo, "2")
	had := map[string]bool{}
	for _, f := range m1.Blobs() {
		had[f.SHA256] = true
	}
	var fresh []manifest.File
	var freshBytes int64
	for _, f := range m2.Blobs() {
		if !had[f.SHA256] {
			fresh = append(fresh, f)
			freshBytes += f.Size
		}
	}
	changed := int64(len(region) + len(insert))
	t.Logf("v2: %d new chunks, %d bytes, for %d bytes changed in a %d-byte file", len(fresh), freshBytes, changed, len(nw))

	// The DP offers v2 once it holds it whole: it completes the version by
	// fetching the new chunks like any blob.
	var res updateResult
	testenv.WaitFor(t, eventually, "the DP to offer 2", func() bool {
		res = update(t, dp.URL(), a, k.pub)
		return res.Status == "updated"
	})
	for i, dir := range []string{a, b} {
		if i > 0 {
			res = update(t, dp.URL(), dir, k.pub)
		}
		if res.Status != "updated" || res.Version != "2" || res.BytesDownloaded != freshBytes {
			t.Errorf("v2 to %s: %+v, want %d bytes downloaded (the new chunks)", dir, res, freshBytes)
		}
		checkTree(t, current(dir), files)
	}
	if freshBytes > 2*changed {
		t.Errorf("the new chunks hold %d bytes, more than twice the %d changed", freshBytes, changed)
	}
	// nginx logs a request after its last byte: wait for every new chunk.
	testenv.WaitFor(t, eventually, "every new chunk in nginx's access log", func() bool {
		for _, f := range fresh {
			if origin.CountRequests(t, blobURI(f.SHA256)) == 0 {
				return false
			}
		}
		return true
	})
	for _, f := range fresh {
		if n := origin.CountRequests(t, blobURI(f.SHA256)); n != 1 {
			t.Errorf("origin served chunk %s %d times to two endpoints, want once", f.SHA256, n)
		}
	}
	// The new chunks' transfers only: the DP may start fetching them (its
	// refresh) before this test looks, so no "before" figure is taken.
	isFresh := map[string]bool{}
	for _, f := range fresh {
		isFresh[blobURI(f.SHA256)] = true
	}
	var got int64
	for _, e := range origin.Requests(t) {
		if isFresh[e.URI] {
			got += e.Bytes
		}
	}
	if got != freshBytes {
		t.Errorf("origin sent %d bytes of v2's new chunks, want %d (each new chunk once)", got, freshBytes)
	}
}

// Plain HTTP updaters pointed at a DP keep working with chunked versions:
// `update --source http://DP/repo/` (the agent as a plain HTTP client: it
// reads the chunked manifest and fetches chunks), and a raw GET of the
// whole file's digest, which the DP assembles from its chunks; the origin
// is never asked for the whole file.
func TestE2E_ChunkedFileWholeFromDP(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/base.db": 8 << 20, "modules/engine.bin": 64 << 10})
	repo := filepath.Join(work, "repo")
	mustRun(t, "publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "1", src)
	m := readManifest(t, repo, "1")
	var big manifest.File
	for _, f := range m.Files {
		if len(f.Chunks) > 0 {
			big = f
		}
	}
	if big.Path != "databases/base.db" {
		t.Fatal("publish did not chunk the 8 MiB file by default")
	}
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dp := startNode(t, origin.URL, k.pub)
	ep := filepath.Join(work, "endpoint")
	res := update(t, "http://"+dp.HTTP+"/repo/", ep, k.pub)
	if res.Status != "updated" || res.Version != "1" {
		t.Fatalf("update from the DP's /repo/: %+v", res)
	}
	checkTree(t, current(ep), files)

	resp, err := http.Get("http://" + dp.HTTP + "/repo/" + manifest.BlobPath(big.SHA256))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || n != big.Size || hex.EncodeToString(h.Sum(nil)) != big.SHA256 {
		t.Fatalf("GET the whole file from the DP: %s, %d bytes, %v; want %d bytes of sha256 %s", resp.Status, n, err, big.Size, big.SHA256)
	}
	if got := origin.CountRequests(t, blobURI(big.SHA256)); got != 0 {
		t.Errorf("the origin was asked for the whole chunked file %d times", got)
	}
}
