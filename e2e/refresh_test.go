package e2e

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// refreshGuard bounds the wait for a DP's refresh to act: generous, the
// machine is shared; the refreshes themselves run every second.
const refreshGuard = 60 * time.Second

// nodeName is the --name startNodeArgs gives a node.
func nodeName(n *dpNode) string { return "dp-" + filepath.Base(n.Data) }

// heldSerials returns the serials of p that n holds whole, as `status
// --json` shows them, and the status seen (for failure messages).
func heldSerials(t *testing.T, n *dpNode, p string) ([]uint64, string) {
	t.Helper()
	st, err := statusOf(t, n.GRPC)
	if err != nil {
		return nil, err.Error()
	}
	m, ok := st.member(nodeName(n))
	if !ok {
		return nil, fmt.Sprintf("%s not listed: %+v", nodeName(n), st.Members)
	}
	return m.Versions[p], fmt.Sprintf("%+v", m.Versions)
}

// waitHolds waits until n holds serial of p whole.
func waitHolds(t *testing.T, n *dpNode, p string, serial uint64, why string) {
	t.Helper()
	waitDetail(t, refreshGuard, fmt.Sprintf("DP to hold %s serial %d whole (%s)", p, serial, why), func() (bool, string) {
		if n.proc.Exited() {
			t.Fatalf("the node exited: %s", n.proc.Stderr())
		}
		serials, detail := heldSerials(t, n, p)
		return slices.Contains(serials, serial), detail
	})
}

// The README's walkthrough: a DP started with --product avbases --refresh
// DUR fetches a newly published version whole within a refresh or so, with
// no endpoint asking (--product products used to wait for
// --prefetch-interval, an hour by default).
func TestE2E_NodeRefresh_ProductKeptCurrent(t *testing.T) {
	t.Parallel()
	_, k, src, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 512 << 10, "modules/engine.bin": 128 << 10})
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	n := startNodeArgs(t, origin.URL, k.pub, "--product", product, "--refresh", "1s")
	waitHolds(t, n, product, 1, "the download task at start")

	writeFiles(t, src, map[string]int{"databases/daily.dat": 256 << 10})
	publish(t, repo, k, "1.1", src)
	waitHolds(t, n, product, 2, "a refresh found 1.1; no endpoint asked")
	if strings.Contains(n.proc.Stderr(), "deprecated") {
		t.Errorf("a node without --prefetch-interval warned of a deprecation:\n%s", n.proc.Stderr())
	}
}

// With --upstream-window closed now, a refresh that finds a newer version
// of a --product product fetches nothing (it waits for the window), while a
// product endpoints asked for is fetched whole at once.
func TestE2E_NodeRefresh_WindowLimitsOnlyProducts(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	const asked = "apps"
	publishP := func(p, version, src string) {
		t.Helper()
		mustRun(t, "publish", "--repo", filepath.Join(work, "repo"), "--key", k.key, "--product", p, "--version", version, src)
	}
	srcAV, srcApps := filepath.Join(work, "src-av"), filepath.Join(work, "src-apps")
	writeFiles(t, srcAV, map[string]int{"databases/base.dat": 256 << 10})
	writeFiles(t, srcApps, map[string]int{"modules/app.bin": 256 << 10})
	publishP(product, "1.0", srcAV)
	publishP(asked, "1.0", srcApps)
	origin := testenv.StartNginx(t, filepath.Join(work, "repo"), testenv.NginxOptions{})

	h, m, _ := time.Now().Clock()
	from := (h*60 + m + 120) % (24 * 60)
	window := fmt.Sprintf("%02d:%02d-%02d:%02d", from/60, from%60, (from+60)%(24*60)/60, (from+60)%60)
	n := startNodeArgs(t, origin.URL, k.pub, "--product", product, "--refresh", "1s", "--upstream-window", window)

	ep := filepath.Join(work, "endpoint")
	res := update(t, n.URL(), ep, k.pub, "--product", asked)
	if res.Status != "updated" || res.Version != "1.0" {
		t.Fatalf("endpoint update of %s: %+v, want updated to 1.0", asked, res)
	}
	waitHolds(t, n, asked, 1, "completed after the endpoint's cold request")

	writeFiles(t, srcApps, map[string]int{"modules/app.bin": 300 << 10})
	publishP(asked, "1.1", srcApps)
	waitHolds(t, n, asked, 2, "a refresh of a product an endpoint asked for ignores the window")

	waitDetail(t, refreshGuard, "the download task to log that it waits for the window", func() (bool, string) {
		return strings.Contains(n.proc.Stderr(), "outside the upstream window"), n.proc.Stderr()
	})
	if serials, detail := heldSerials(t, n, product); len(serials) != 0 {
		t.Errorf("outside --upstream-window %s the DP fetched %s %v, want nothing: %s", window, product, serials, detail)
	}
	if got := origin.CountRequests(t, "/"+product+"/1.0/manifest.json"); got != 0 {
		t.Errorf("outside --upstream-window the DP started fetching %s 1.0 (%d manifest requests)", product, got)
	}
}

// --prefetch-interval alone still refreshes the --product products at its
// interval, with a deprecation warning.
func TestE2E_NodeRefresh_PrefetchIntervalDeprecated(t *testing.T) {
	t.Parallel()
	_, k, src, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 256 << 10})
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	n := startNodeArgs(t, origin.URL, k.pub, "--product", product, "--prefetch-interval", "1s")
	waitHolds(t, n, product, 1, "the download task at start")
	if !strings.Contains(n.proc.Stderr(), "--prefetch-interval is deprecated") {
		t.Errorf("--prefetch-interval gave no deprecation warning:\n%s", n.proc.Stderr())
	}

	writeFiles(t, src, map[string]int{"databases/daily.dat": 128 << 10})
	publish(t, repo, k, "1.1", src)
	waitHolds(t, n, product, 2, "--prefetch-interval 1s refreshes the --product products")
}
