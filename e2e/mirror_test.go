package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// mirrorResult is `mirror --json`'s object.
type mirrorResult struct {
	Product         string   `json:"product"`
	Version         string   `json:"version"`
	Serial          uint64   `json:"serial"`
	Status          string   `json:"status"`
	BlobsCopied     int      `json:"blobs_copied"`
	LatestUpdated   bool     `json:"latest_updated"`
	VersionsRemoved []string `json:"versions_removed"`
	BlobsRemoved    int      `json:"blobs_removed"`
}

func parseMirror(t *testing.T, r cmdResult) mirrorResult {
	t.Helper()
	var res mirrorResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("mirror --json stdout is not one JSON object: %v\n%s", err, r)
	}
	return res
}

// TestE2E_MirrorKeepVersionsServedByNginx: `mirror --keep-versions 2` after
// each of three versions keeps the two newest and the blob they share with
// the removed one; a rerun rewrites nothing (latest.json keeps its mtime);
// no staging folder is left in the served root; nginx then serves the
// pruned folder to `update`.
func TestE2E_MirrorKeepVersionsServedByNginx(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	repo := filepath.Join(work, "repo")
	share := filepath.Join(work, "share")
	shared := writeFiles(t, src, map[string]int{"databases/shared.dat": 32 << 10})
	mirrorArgs := []string{"mirror", "--json", "--source", repo, "--product", product, "--to", share, "--trust", k.pub, "--keep-versions", "2"}
	var own []tree
	for i, v := range []string{"1.0", "1.1", "1.2"} {
		own = append(own, writeFiles(t, src, map[string]int{"databases/own.dat": 16 << 10}))
		publish(t, repo, k, v, src)
		res := parseMirror(t, mustRun(t, mirrorArgs...))
		if res.Version != v || res.Status != "updated" || !res.LatestUpdated {
			t.Fatalf("mirror of %s: %+v; want updated, latest.json written", v, res)
		}
		if want := []string{}; i == 2 {
			want = []string{"1.0"}
			if !slices.Equal(res.VersionsRemoved, want) || res.BlobsRemoved != 1 {
				t.Fatalf("mirror of %s removed %v and %d blobs; want %v and 1 blob (1.0's own file; the shared one stays)", v, res.VersionsRemoved, res.BlobsRemoved, want)
			}
		}
	}
	blob := func(tr tree, rel string) string { return filepath.Join(share, "blobs", "sha256", tr[rel]) }
	if _, err := os.Stat(blob(own[0], "databases/own.dat")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("1.0's own blob is still in the mirror (%v)", err)
	}
	for _, p := range []string{blob(shared, "databases/shared.dat"), blob(own[1], "databases/own.dat"), filepath.Join(share, product, "1.1", "manifest.json")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("kept file: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(share, product, "1.0")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("1.0's folder is still in the mirror (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(share, ".dpcache-partial")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the mirror left its staging folder in the served root (%v)", err)
	}

	// A rerun finds nothing new and rewrites nothing.
	latest := filepath.Join(share, product, "latest.json")
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(latest, old, old); err != nil {
		t.Fatal(err)
	}
	if res := parseMirror(t, mustRun(t, mirrorArgs...)); res.Status != "up-to-date" || res.LatestUpdated || res.BlobsCopied != 0 {
		t.Errorf("rerun: %+v; want up-to-date, nothing written", res)
	}
	if fi, err := os.Stat(latest); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("rerun rewrote latest.json: %v", err)
	}

	ngx := testenv.StartNginx(t, share, testenv.NginxOptions{Prefix: "/updates/"})
	ep := filepath.Join(work, "endpoint")
	if res := update(t, ngx.URL, ep, k.pub); res.Status != "updated" || res.Version != "1.2" {
		t.Fatalf("update from the pruned mirror through nginx: %+v", res)
	}
	want := tree{"databases/shared.dat": shared["databases/shared.dat"], "databases/own.dat": own[2]["databases/own.dat"]}
	checkTree(t, current(ep), want)
}

// TestE2E_MirrorStaleSource: a mirror of a source whose latest.json has
// expired copies it (nothing newer is offered) but says so as update does:
// status "stale", exit 3, one stderr line.
func TestE2E_MirrorStaleSource(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/av-base.dat": 16 << 10})
	repo := filepath.Join(work, "repo")
	mustRun(t, "publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "1.0", "--expires", "1s", src)
	var doc struct{ Expires time.Time }
	if err := json.Unmarshal(readFileT(t, filepath.Join(repo, product, "latest.json")), &doc); err != nil || doc.Expires.IsZero() {
		t.Fatalf("latest.json has no expires: %v", err)
	}
	testenv.WaitFor(t, 10*time.Second, "latest.json to expire", func() bool { return time.Now().After(doc.Expires) })

	share := filepath.Join(work, "share")
	r := dpcache(t, "mirror", "--json", "--source", repo, "--product", product, "--to", share, "--trust", k.pub)
	if r.code != 3 {
		t.Fatalf("mirror from a stale source: want exit 3, got %s", r)
	}
	if res := parseMirror(t, r); res.Status != "stale" || res.Version != "1.0" || !res.LatestUpdated {
		t.Errorf("mirror --json = %+v, want stale, 1.0 copied", res)
	}
	if line := errorLine(t, r); !strings.Contains(line, "expired") {
		t.Errorf("stderr line %q does not say the sources are expired", line)
	}
	// The mirror is whole, and as stale as its source: update installs
	// from it and says stale too.
	ep := filepath.Join(work, "endpoint")
	if r := dpcache(t, updateArgs(share, ep, k.pub)...); r.code != 3 {
		t.Fatalf("update from the stale mirror: want exit 3, got %s", r)
	}
	checkTree(t, current(ep), files)
}

func readFileT(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
