package e2e

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// Two DPs each other's upstream (grpc://), each in its own cluster and
// site: the chain of DPs each request carries makes the one it comes back
// to refuse it at once, so the other upstreams are tried. The DPs, and the
// endpoints, run with a stall timeout far above the test's own timeouts: a
// request waiting on itself would show as a command that never ends (and
// fails at cmdTimeout), not as a failover after a stall.

// loopDPs starts DPs a and b, named alike (names repeat across branch
// offices: loops are found by instance, not by name), each in its own
// cluster and site, each with the other as its first upstream; a has
// aUpstream after it when it is not "".
func loopDPs(t *testing.T, trust, aUpstream string) (a, b *clusterDP) {
	t.Helper()
	a = newLoopDP(t, "site-a")
	b = newLoopDP(t, "site-b")
	aUp := b.URL()
	if aUpstream != "" {
		aUp += "," + aUpstream
	}
	a.args = loopArgs(a, aUp, trust)
	b.args = loopArgs(b, a.URL(), trust)
	for _, dp := range []*clusterDP{a, b} {
		if err := dp.start(t); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// newLoopDP returns a DP named dp-1 in site with free ports, not started.
func newLoopDP(t *testing.T, site string) *clusterDP {
	t.Helper()
	return &clusterDP{
		dpNode: &dpNode{GRPC: testenv.FreeAddr(t, "127.0.0.1"), HTTP: testenv.FreeAddr(t, "127.0.0.1"), Data: t.TempDir()},
		Name:   "dp-1", Site: site, Gossip: testenv.FreeAddr(t, "127.0.0.1"),
	}
}

func loopArgs(dp *clusterDP, upstream, trust string) []string {
	return []string{"node", "--name", dp.Name, "--site", dp.Site, "--data", dp.Data,
		"--grpc", dp.GRPC, "--http", dp.HTTP, "--gossip", dp.Gossip,
		"--upstream", upstream, "--trust", trust, "--refresh", "200ms", "--stall-timeout", "1h"}
}

// startServe runs `dpcache serve` of repo on a free port until the test
// ends and returns its URL once it serves the product's latest.json.
func startServe(t *testing.T, repo string) string {
	t.Helper()
	addr := testenv.FreeAddr(t, "127.0.0.1")
	p := startDpcache(t, "serve", "--repo", repo, "--listen", addr)
	url := "http://" + addr + "/"
	testenv.WaitFor(t, readyTimeout, "dpcache serve on "+addr, func() bool {
		return p.Exited() || httpStatus(url+product+"/latest.json") == http.StatusOK
	})
	if p.Exited() {
		t.Fatalf("dpcache serve exited at start (exit %d): %s", p.ExitCode(), p.Stderr())
	}
	return url
}

// TestE2E_UpstreamLoop_FailsOver: a's upstreams are b then the origin, b's
// is a. An endpoint's update through a, then through b, installs the
// version: the requests that come back to a DP are refused at once and a
// takes the origin.
func TestE2E_UpstreamLoop_FailsOver(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{
		"databases/base-a.dat": 3 << 20,
		"databases/index.idx":  64 << 10,
		"modules/engine.bin":   1<<20 + 17,
	})
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	origin := startServe(t, repo)
	a, b := loopDPs(t, k.pub, origin)

	for _, dp := range []*clusterDP{a, b} {
		dir := filepath.Join(work, "endpoint-"+dp.Site)
		got := update(t, dp.URL(), dir, k.pub, "--stall-timeout", "1h")
		if got.Status != "updated" || got.Version != "1.0" || got.Source != dp.URL() {
			t.Errorf("update through %s (%s): %+v, want version 1.0 updated from it", dp.Site, dp.URL(), got)
		}
		checkTree(t, current(dir), files)
	}
	for _, dp := range []*clusterDP{a, b} {
		if !strings.Contains(dp.proc.Stderr(), "upstream loop") {
			t.Errorf("%s logged no refused loop:\n%s", dp.Site, dp.proc.Stderr())
		}
	}
}

// TestE2E_UpstreamLoop_NoOrigin: a and b are each other's only upstream.
// An endpoint's update through a fails, and its one error line names the
// loop and what to check.
func TestE2E_UpstreamLoop_NoOrigin(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	a, _ := loopDPs(t, k.pub, "")
	r := dpcache(t, "update", "--source", a.URL(), "--product", product, "--dir", filepath.Join(work, "endpoint"),
		"--trust", k.pub, "--stall-timeout", "1h")
	if r.code != 1 {
		t.Fatalf("want exit 1, got %s", r)
	}
	line := errorLine(t, r)
	mustContain(t, line, a.URL(), "upstream loop", "check the --upstream lists")
	checkNotInstalled(t, filepath.Join(work, "endpoint"))
}
