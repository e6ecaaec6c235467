package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// publishExpiring publishes src as version 1.0 with a one-second expiry and
// waits until it has expired.
func publishExpiring(t *testing.T, repo string, k keyPair, src string) {
	t.Helper()
	mustRun(t, "publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "1.0", "--expires", "1s", src)
	var doc struct{ Expires time.Time }
	if err := json.Unmarshal(readBytes(t, filepath.Join(repo, product, "latest.json")), &doc); err != nil || doc.Expires.IsZero() {
		t.Fatalf("latest.json has no expires: %v", err)
	}
	testenv.WaitFor(t, 10*time.Second, "latest.json to expire", func() bool { return time.Now().After(doc.Expires) })
}

func readBytes(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestE2E_Resign: an installed version whose latest.json expired is stale
// (exit 3); `dpcache resign` writes a new latest.json alone (serial 2, a new
// expiry, minisign-verifiable; manifest unchanged), after which the same
// endpoint is up-to-date at serial 2 with nothing downloaded (exit 0).
// resign's errors are one line naming the file and what to do.
func TestE2E_Resign(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/av-base.dat": 64 << 10, "modules/engine.bin": 8 << 10})
	repo := filepath.Join(work, "repo")
	publishExpiring(t, repo, k, src)
	mpath := filepath.Join(repo, product, "1.0", "manifest.json")
	manifestBefore := readBytes(t, mpath)

	ep := filepath.Join(work, "endpoint")
	if r := dpcache(t, updateArgs(repo, ep, k.pub)...); r.code != 3 {
		t.Fatalf("update from the expired repository: want exit 3 (stale), got %s", r)
	}

	r := mustRun(t, "resign", "--repo", repo, "--key", k.key, "--product", product)
	mustContain(t, r.stdout, "avbases 1.0", "serial 1 -> 2")
	latest := filepath.Join(repo, product, "latest.json")
	var doc struct {
		Serial  uint64
		Expires time.Time
	}
	if err := json.Unmarshal(readBytes(t, latest), &doc); err != nil || doc.Serial != 2 || time.Until(doc.Expires) < 100*time.Hour {
		t.Errorf("latest.json after resign: serial %d, expires %s (%v); want serial 2, a week from now", doc.Serial, doc.Expires, err)
	}
	if !bytes.Equal(readBytes(t, mpath), manifestBefore) {
		t.Error("resign changed the manifest")
	}
	verifyWithMinisign(t, latest, k.pub)

	res := update(t, repo, ep, k.pub)
	if res.Status != "up-to-date" || res.Version != "1.0" || res.Serial != 2 || res.BytesDownloaded != 0 || res.FilesChanged != 0 {
		t.Errorf("update after resign = %+v, want up-to-date at 1.0 serial 2, nothing moved", res)
	}
	checkTree(t, current(ep), files)

	// Errors: one line, naming what and where, and no package names.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"resign", "--repo", repo}, []string{"--key", "--product"}},
		{[]string{"resign", "--repo", repo, "--key", k.key, "--product", "other"}, []string{"other", "latest.json", "publish"}},
		{[]string{"resign", "--repo", repo, "--key", filepath.Join(work, "missing.key"), "--product", product}, []string{"missing.key"}},
		{[]string{"resign", "--repo", repo, "--key", k.key, "--product", product, "--expires", "soon"}, []string{"--expires"}},
	} {
		line := errorLine(t, dpcache(t, tc.args...))
		mustContain(t, line, tc.want...)
		if strings.Contains(line, "manifest:") {
			t.Errorf("error line %q names a package", line)
		}
	}
	if err := os.WriteFile(mpath, append(manifestBefore, ' '), 0o644); err != nil {
		t.Fatal(err)
	}
	line := errorLine(t, dpcache(t, "resign", "--repo", repo, "--key", k.key, "--product", product))
	mustContain(t, line, mpath, "sha256", "publish a new version")
	if doc2 := readBytes(t, latest); !bytes.Contains(doc2, []byte(`"serial": 2`)) {
		t.Errorf("a refused resign wrote latest.json:\n%s", doc2)
	}
}

// TestE2E_ResignFreshensDP: a DP whose origin offers only an expired
// version holds it and shows itself stale (metric, status page); after
// `dpcache resign` at the origin, the next refresh makes the DP serve the
// new latest.json byte for byte (gRPC and /repo/), hold the version under
// serial 2 and drop the stale marks, with no blob or manifest asked of the
// origin again; an endpoint updating through it goes from stale to
// up-to-date.
func TestE2E_ResignFreshensDP(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/av-base.dat": 256 << 10, "databases/index.idx": 4 << 10, "modules/engine.bin": 32 << 10})
	repo := filepath.Join(work, "repo")
	publishExpiring(t, repo, k, src)
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dp := startNode(t, origin.URL, k.pub, "--product", product, "--prefetch-interval", "200ms")

	get := func(path string) string {
		resp, err := http.Get("http://" + dp.HTTP + path)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	holds := func(serial uint64) bool {
		st, err := statusOf(t, dp.GRPC)
		if err != nil || len(st.Members) == 0 {
			return false
		}
		return st.Members[0].holds(serial)
	}
	testenv.WaitFor(t, eventually, "the DP to hold the expired version and show itself stale", func() bool {
		return holds(1) && strings.Contains(get("/metrics"), `dpcache_upstream_stale{product="avbases"} 1`) &&
			strings.Contains(get("/"), `id="stale"`)
	})
	ep := filepath.Join(work, "endpoint")
	if r := dpcache(t, updateArgs(dp.URL(), ep, k.pub)...); r.code != 3 {
		t.Fatalf("update through the stale DP: want exit 3, got %s", r)
	}
	testenv.WaitFor(t, eventually, "every blob in nginx's access log", func() bool {
		for _, digest := range files {
			if origin.CountRequests(t, blobURI(digest)) == 0 {
				return false
			}
		}
		return true
	})
	blobRequests := func() int {
		n := 0
		for _, e := range origin.Requests(t) {
			if strings.HasPrefix(e.URI, "/blobs/") {
				n++
			}
		}
		return n
	}
	blobsBefore, manifestsBefore := blobRequests(), origin.CountRequests(t, "/manifest.json")

	mustRun(t, "resign", "--repo", repo, "--key", k.key, "--product", product)
	want := readBytes(t, filepath.Join(repo, product, "latest.json"))
	wantSig := readBytes(t, filepath.Join(repo, product, "latest.json.minisig"))
	testenv.WaitFor(t, eventually, "the DP to serve the re-signed latest.json and no longer be stale", func() bool {
		return get("/repo/"+product+"/latest.json") == string(want) && get("/repo/"+product+"/latest.json.minisig") == string(wantSig) &&
			holds(2) && !strings.Contains(get("/metrics"), "dpcache_upstream_stale{") && !strings.Contains(get("/"), `id="stale"`)
	})
	res := update(t, dp.URL(), ep, k.pub)
	if res.Status != "up-to-date" || res.Serial != 2 || res.BytesDownloaded != 0 {
		t.Errorf("update through the DP after resign = %+v, want up-to-date at serial 2, nothing downloaded", res)
	}
	if blobsAfter := blobRequests(); blobsAfter != blobsBefore || origin.CountRequests(t, "/manifest.json") != manifestsBefore {
		t.Errorf("after the resign the origin was asked for %d blobs and %d manifests, want none",
			blobsAfter-blobsBefore, origin.CountRequests(t, "/manifest.json")-manifestsBefore)
	}
}
