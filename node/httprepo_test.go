package node

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

func httpGet(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, b
}

// A DP is an HTTP source too: plain requests against /repo/ (as wget
// --mirror would make) give a repository that the stock minisign verifies,
// and the agent installs from it over HTTP.
func TestNode_HTTPRepo_PlainClientsAndAgent(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	base := "http://" + n.HTTPAddr() + "/repo/"

	// Mirror with plain GETs, then verify with the stock minisign.
	mirror := t.TempDir()
	get := func(rel string) []byte {
		resp, b := httpGet(t, base+rel)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", rel, resp.Status, b)
		}
		p := filepath.Join(mirror, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, rel := range []string{"av/latest.json", "av/latest.json.minisig", "av/1/manifest.json", "av/1/manifest.json.minisig"} {
		get(rel)
	}
	for _, f := range pub.Manifest.Blobs() {
		if b := get(manifest.BlobPath(f.SHA256)); sha(b) != f.SHA256 {
			t.Fatalf("blob %s: wrong bytes over HTTP", f.Path)
		}
	}
	minisign := testenv.RequireBinary(t, "minisign")
	pubFile := filepath.Join(t.TempDir(), "vendor.pub")
	if err := os.WriteFile(pubFile, v.key.PublicKeyFile(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, doc := range []string{"av/latest.json", "av/1/manifest.json"} {
		out, err := exec.Command(minisign, "-Vm", filepath.Join(mirror, doc), "-p", pubFile).CombinedOutput()
		if err != nil {
			t.Fatalf("minisign rejects %s relayed by the DP: %v\n%s", doc, err, out)
		}
	}
	// The mirrored folder is a valid repository: the agent installs from it,
	// and from the DP's /repo/ over HTTP.
	for _, src := range []string{mirror, base} {
		s, err := source.Parse(src, source.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cfg := agent.DefaultConfig()
		cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir = []source.Source{s}, v.trust, "av", t.TempDir()
		res, err := agent.Update(testCtx(t), cfg)
		if err != nil {
			t.Fatalf("update from %s: %v", src, err)
		}
		if res.Serial != 1 || res.FilesChanged != len(pub.Manifest.Files) {
			t.Fatalf("update from %s: %+v", src, res)
		}
	}
}

func TestNode_HTTPRepo_RangeETagAndErrors(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, map[string]int{"databases/big.dat": 6 << 20, "databases/small.dat": 5000})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "2m"})
	n := startNode(t, v, ngx.URL, nil)
	base := "http://" + n.HTTPAddr() + "/repo/"
	if resp, b := httpGet(t, base+"av/1/manifest.json"); resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest: %s %s", resp.Status, b)
	}
	var big manifest.File
	for _, f := range pub.Manifest.Files {
		if f.Size > big.Size {
			big = f
		}
	}
	want, err := os.ReadFile(filepath.Join(v.repo, filepath.FromSlash(manifest.BlobPath(big.SHA256))))
	if err != nil {
		t.Fatal(err)
	}
	url := base + manifest.BlobPath(big.SHA256)
	// While the blob is still arriving from the slow origin.
	resp, b := httpGet(t, url, "Range", "bytes=1000-1999")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, want[1000:2000]) {
		t.Fatalf("range of an in-flight blob: %s, %d bytes", resp.Status, len(b))
	}
	// Whole: Range, ETag, conditional requests.
	testenv.WaitFor(t, 30*time.Second, "blob whole", func() bool { _, err := n.cache.Stat(big.SHA256); return err == nil })
	resp, b = httpGet(t, url, "Range", fmt.Sprintf("bytes=%d-", len(want)-10))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, want[len(want)-10:]) {
		t.Fatalf("range of a whole blob: %s, %d bytes", resp.Status, len(b))
	}
	if resp.Header.Get("ETag") != `"`+big.SHA256+`"` {
		t.Fatalf("ETag %q", resp.Header.Get("ETag"))
	}
	if resp, _ := httpGet(t, url, "If-None-Match", `"`+big.SHA256+`"`); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %s, want 304", resp.Status)
	}
	for path, code := range map[string]int{
		"blobs/sha256/xyz":         http.StatusBadRequest,
		"blobs/sha256/" + sha(nil): http.StatusNotFound,
		"nope/latest.json":         http.StatusNotFound,
		"av/9/manifest.json":       http.StatusNotFound,
		"av/1/other.json":          http.StatusNotFound,
		"..%2f..%2fetc/passwd":     http.StatusNotFound,
		"av/latest.json/../../x":   http.StatusNotFound,
	} {
		if resp, b := httpGet(t, base+path); resp.StatusCode != code {
			t.Errorf("GET /repo/%s: %s (%s), want %d", path, resp.Status, bytes.TrimSpace(b), code)
		}
	}
}

// Conditional requests, as browsers, caching proxies and curl make them:
// every document has a strong ETag (the SHA-256 of its bytes) and a
// Last-Modified; blobs have their digest as ETag, whole or still arriving.
// latest.json is revalidated every time, and when it changes (here
// re-signed: same version, same "published") neither validator still
// matches.
func TestNode_HTTPRepo_ConditionalRequests(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, map[string]int{"databases/big.dat": 6 << 20})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "2m"})
	n := startNode(t, v, ngx.URL, nil)
	base := "http://" + n.HTTPAddr() + "/repo/"

	published := pub.Manifest.Published.UTC()
	for doc, cacheControl := range map[string]string{
		"av/latest.json":             "no-cache",
		"av/latest.json.minisig":     "no-cache",
		"av/1/manifest.json":         "public, max-age=31536000, immutable",
		"av/1/manifest.json.minisig": "public, max-age=31536000, immutable",
	} {
		resp, body := httpGet(t, base+doc)
		etag := `"` + sha(body) + `"`
		lastModified := resp.Header.Get("Last-Modified")
		lm, err := http.ParseTime(lastModified)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") != etag || err != nil || lm.Before(published) ||
			resp.Header.Get("Cache-Control") != cacheControl {
			t.Fatalf("GET %s: %s, ETag %q Last-Modified %q Cache-Control %q; want 200, %s, not before %s, %s",
				doc, resp.Status, resp.Header.Get("ETag"), lastModified, resp.Header.Get("Cache-Control"), etag, published, cacheControl)
		}
		if strings.Contains(doc, "manifest") && !lm.Equal(published) {
			t.Errorf("GET %s: Last-Modified %s, want its published time %s", doc, lastModified, published)
		}
		for _, h := range [][]string{
			{"If-None-Match", etag},
			{"If-None-Match", `"other", W/` + etag},
			{"If-Modified-Since", lastModified},
		} {
			if resp, b := httpGet(t, base+doc, h...); resp.StatusCode != http.StatusNotModified || len(b) != 0 {
				t.Errorf("GET %s with %s: %s, %d bytes; want 304, none", doc, h, resp.Status, len(b))
			}
		}
		before := lm.Add(-time.Second).Format(http.TimeFormat)
		for _, h := range [][]string{{"If-None-Match", `"other"`}, {"If-Modified-Since", before}} {
			if resp, b := httpGet(t, base+doc, h...); resp.StatusCode != http.StatusOK || !bytes.Equal(b, body) {
				t.Errorf("GET %s with %s: %s, %d bytes; want 200 and the document", doc, h, resp.Status, len(b))
			}
		}
	}

	// A blob still arriving from the slow origin: a client that holds it
	// (its ETag is the digest) gets 304; others get unverified bytes that
	// nothing may keep.
	digest := pub.Manifest.Files[0].SHA256
	url := base + manifest.BlobPath(digest)
	if resp, b := httpGet(t, url, "If-None-Match", `"`+digest+`"`); resp.StatusCode != http.StatusNotModified || len(b) != 0 {
		t.Errorf("in-flight blob with If-None-Match: %s, %d bytes; want 304", resp.Status, len(b))
	}
	if _, err := n.cache.Stat(digest); err == nil {
		t.Fatal("the blob is whole already: the origin is too fast for this test")
	}
	if resp, _ := httpGet(t, url, "Range", "bytes=0-99"); resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("in-flight blob: Cache-Control %q, want no-store", resp.Header.Get("Cache-Control"))
	}
	testenv.WaitFor(t, 30*time.Second, "blob whole", func() bool { _, err := n.cache.Stat(digest); return err == nil })
	for _, inm := range []string{`"` + digest + `"`, `W/"` + digest + `"`, "*"} {
		if resp, _ := httpGet(t, url, "If-None-Match", inm); resp.StatusCode != http.StatusNotModified {
			t.Errorf("whole blob with If-None-Match %s: %s, want 304", inm, resp.Status)
		}
	}
	if resp, b := httpGet(t, url, "If-None-Match", `"`+sha(nil)+`"`); resp.StatusCode != http.StatusOK || int64(len(b)) != pub.Manifest.Files[0].Size ||
		resp.Header.Get("Cache-Control") != "public, max-age=31536000, immutable" {
		t.Errorf("whole blob with another ETag: %s, %d bytes, Cache-Control %q", resp.Status, len(b), resp.Header.Get("Cache-Control"))
	}

	// curl's own conditional requests: --etag-compare, and -z with the time
	// -R gave its copy from Last-Modified.
	curl := testenv.RequireBinary(t, "curl")
	dir := t.TempDir()
	etagFile, saved := filepath.Join(dir, "etag"), filepath.Join(dir, "latest.json")
	// runCurl runs curl with args and the URL last, and returns the status.
	runCurl := func(args ...string) string {
		t.Helper()
		if !slices.Contains(args, "-o") {
			args = append([]string{"-o", filepath.Join(dir, "out")}, args...)
		}
		out, err := exec.CommandContext(testCtx(t), curl, append([]string{"-sS", "-w", "%{http_code}"}, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", args, err)
		}
		return string(out)
	}
	latestURL := base + "av/latest.json"
	if code := runCurl("--etag-save", etagFile, latestURL); code != "200" {
		t.Fatalf("curl --etag-save: %s", code)
	}
	if code := runCurl("-o", saved, "-R", latestURL); code != "200" {
		t.Fatalf("curl -R: %s", code)
	}
	if code := runCurl("--etag-compare", etagFile, latestURL); code != "304" {
		t.Errorf("curl --etag-compare: %s, want 304", code)
	}
	if code := runCurl("-z", saved, latestURL); code != "304" {
		t.Errorf("curl -z: %s, want 304", code)
	}

	// Re-signed upstream: a new latest.json of the same version, with the
	// same "published".
	resp, old := httpGet(t, latestURL)
	if _, err := manifest.Resign(manifest.ResignOptions{Repo: v.repo, Product: "av", Key: v.key, Expires: time.Hour}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the re-signed latest.json", func() bool {
		_, b := httpGet(t, latestURL)
		return !bytes.Equal(b, old)
	})
	for _, h := range [][]string{{"If-None-Match", resp.Header.Get("ETag")}, {"If-Modified-Since", resp.Header.Get("Last-Modified")}} {
		if resp, b := httpGet(t, latestURL, h...); resp.StatusCode != http.StatusOK || bytes.Equal(b, old) {
			t.Errorf("re-signed latest.json with %s: %s; want 200 and the new document", h, resp.Status)
		}
	}
	for _, args := range [][]string{{"--etag-compare", etagFile}, {"-z", saved}} {
		if code := runCurl(append(args, latestURL)...); code != "200" {
			t.Errorf("curl %s after a re-sign: %s, want 200", args[0], code)
		}
	}
}

// A path's Last-Modified stays while its bytes do, and grows with every
// change, even several within one second.
func TestChangeTimes_Since(t *testing.T) {
	t.Parallel()
	var c changeTimes
	a := c.since("/repo/p/latest.json", `"a"`)
	if got := c.since("/repo/p/latest.json", `"a"`); !got.Equal(a) {
		t.Errorf("same bytes: %v, want %v", got, a)
	}
	b := c.since("/repo/p/latest.json", `"b"`)
	a2 := c.since("/repo/p/latest.json", `"a"`)
	if !b.After(a) || !a2.After(b) {
		t.Errorf("changes: %v, %v, %v; want each after the last", a, b, a2)
	}
	if other := c.since("/repo/q/latest.json", `"a"`); other.After(time.Now()) {
		t.Errorf("another path starts in the future: %v", other)
	}
}
