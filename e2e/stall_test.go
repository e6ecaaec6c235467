package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// stallingOrigin is a hand-written origin that serves a repository's
// documents but sends only the first `after` bytes of any blob, with the
// whole blob's Content-Length, then goes silent with the connection open
// (a frozen upstream, a middlebox that drops the flow).
type stallingOrigin struct {
	URL   string
	blobs atomic.Int64 // blob requests
	sent  atomic.Int64 // blob bytes sent
}

func startStallingOrigin(t *testing.T, repo string, after int64) *stallingOrigin {
	t.Helper()
	o := &stallingOrigin{}
	files := http.FileServer(http.Dir(repo))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/blobs/") {
			files.ServeHTTP(w, r)
			return
		}
		o.blobs.Add(1)
		b, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		n := min(after, int64(len(b)))
		w.Write(b[:n])
		o.sent.Add(n)
		w.(http.Flusher).Flush()
		<-r.Context().Done() // silent until the client gives up
	}))
	// Close hangs while a handler waits: cut the clients first.
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	o.URL = srv.URL + "/"
	return o
}

// TestE2E_UpdateStalledSource: the first source sends headers and 64 KiB of
// a blob, then nothing. `update --stall-timeout 1s` leaves it after a
// second of silence and resumes from the second source (nginx) at the
// offset reached: the update completes, and nginx sends only the rest.
func TestE2E_UpdateStalledSource(t *testing.T) {
	t.Parallel()
	work, k, files, stall, good := stallSetup(t)

	ep := filepath.Join(work, "endpoint")
	got := update(t, stall.URL+","+good.URL, ep, k.pub, "--stall-timeout", "1s")
	if got.Status != "updated" || got.Source != good.URL {
		t.Fatalf("update = %+v, want updated, finished by %s", got, good.URL)
	}
	checkTree(t, current(ep), files)
	checkResumedAtStall(t, good, files["databases/av-base.dat"])
	if stall.blobs.Load() != 1 {
		t.Errorf("the stalled source was asked %d times, want once: a silent source is not asked again", stall.blobs.Load())
	}
}

// TestE2E_NodeStalledUpstream: a DP's first upstream sends headers and
// 64 KiB of the blob, then nothing. With `--stall-timeout 1s` the DP
// leaves it and resumes from its second upstream (nginx) at the offset
// reached, so the endpoint asking the DP gets the version; nginx sends
// only the rest. The DP then prefers nginx: the silent upstream is in
// backoff.
func TestE2E_NodeStalledUpstream(t *testing.T) {
	t.Parallel()
	work, k, files, stall, good := stallSetup(t)
	dp := startNode(t, stall.URL+","+good.URL, k.pub, "--stall-timeout", "1s")

	ep := filepath.Join(work, "endpoint")
	got := update(t, dp.URL(), ep, k.pub, "--stall-timeout", "1m")
	if got.Status != "updated" {
		t.Fatalf("update through the DP = %+v, want updated", got)
	}
	checkTree(t, current(ep), files)
	checkResumedAtStall(t, good, files["databases/av-base.dat"])
	if n := stall.blobs.Load(); n != 1 {
		t.Errorf("the silent upstream was asked for the blob %d times, want once", n)
	}
}

// stallSetup publishes a 1 MiB database and serves it from a stalling
// origin (64 KiB, then silence) and from nginx.
func stallSetup(t *testing.T) (work string, k keyPair, files tree, stall *stallingOrigin, good *testenv.Nginx) {
	t.Helper()
	work = t.TempDir()
	k = vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files = writeFiles(t, src, map[string]int{"databases/av-base.dat": 1 << 20})
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	return work, k, files, startStallingOrigin(t, repo, 64<<10), testenv.StartNginx(t, repo, testenv.NginxOptions{})
}

// checkResumedAtStall checks that nginx sent the blob once, from where the
// stalling origin went silent to the end.
func checkResumedAtStall(t *testing.T, good *testenv.Nginx, digest string) {
	t.Helper()
	testenv.WaitFor(t, eventually, "nginx to log the blob", func() bool { return len(blobEntries(t, good, digest)) == 1 })
	e := blobEntries(t, good, digest)[0]
	if want := fmt.Sprintf("bytes=%d-", 64<<10); e.Range != want || e.Bytes != 1<<20-64<<10 {
		t.Errorf("nginx got Range %q and sent %d bytes; want %q and the rest (%d)", e.Range, e.Bytes, want, 1<<20-64<<10)
	}
}
