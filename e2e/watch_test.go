package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/e2e/testenv"
)

// watchGuard bounds the wait for a watcher to move to another DP and
// install what it announces: generous, the machine is shared and the
// surviving DP first has to see its peer dead.
const watchGuard = 120 * time.Second

// watchInstalled returns a condition for waitDetail: the watcher w (run
// with args) has installed serial into ep; it fails the test if w exited.
func watchInstalled(t *testing.T, w *testenv.Proc, args []string, ep string) func(serial uint64) func() (bool, string) {
	return func(serial uint64) func() (bool, string) {
		return func() (bool, string) {
			if w.Exited() {
				t.Fatalf("update --watch exited: %s", waitProc(t, w, args))
			}
			m, err := agent.Installed(ep, product)
			if err != nil {
				return false, fmt.Sprintf("%v; stderr: %s", err, w.Stderr())
			}
			return m.Serial == serial, fmt.Sprintf("serial %d installed; stderr: %s", m.Serial, w.Stderr())
		}
	}
}

// `update --watch --discover` on DP-1 of a site: when DP-1 is killed, the
// watcher moves to DP-2 (which --discover listed) and installs the newer
// version DP-2 gets, while DP-1 stays down.
func TestE2E_WatchFailsOverToNextDP(t *testing.T) {
	t.Parallel()
	work, k, src, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 512 << 10, "modules/engine.bin": 128 << 10})
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dps := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-1", "branch"}, {"dp-2", "branch"}}, "--product", product)
	ep := filepath.Join(work, "endpoint")
	args := append(updateArgs(dps[0].URL(), ep, k.pub), "--discover", "--site", "branch", "--watch")
	w := startDpcache(t, args...)

	installed := watchInstalled(t, w, args, ep)
	waitDetail(t, eventually, "the watcher to install 1.0", installed(1))

	dps[0].proc.Kill()
	writeFiles(t, src, map[string]int{"databases/daily.dat": 256 << 10})
	publish(t, repo, k, "2.0", src)
	waitDetail(t, watchGuard, "the watcher to install 2.0 from DP-2 while DP-1 is down", installed(2))
	if !strings.Contains(w.Stderr(), dps[1].GRPC) {
		t.Errorf("the watcher's log does not name DP-2 (%s), which it moved to:\n%s", dps[1].GRPC, w.Stderr())
	}
	if err := w.Stop(); err != nil {
		t.Errorf("update --watch stopped with SIGTERM: %v, want exit 0\nstderr: %s", err, w.Stderr())
	}
}

// `update --watch --discover` asks the site's DPs again at every poll: a
// DP that joins the site after the watcher started is found, and when the
// DP the watcher was started on goes down for good, the watcher moves to
// the new one and installs the newer version through it.
func TestE2E_WatchRediscoversSiteDPs(t *testing.T) {
	t.Parallel()
	work, k, src, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 256 << 10})
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dp1 := startClusterDP(t, "dp-1", "branch", origin.URL, k.pub, nil, "--product", product)
	ep := filepath.Join(work, "endpoint")
	args := append(updateArgs(dp1.URL(), ep, k.pub), "--discover", "--site", "branch", "--watch", "--poll", "1s")
	w := startDpcache(t, args...)
	installed := watchInstalled(t, w, args, ep)
	waitDetail(t, eventually, "the watcher to install 1.0", installed(1))

	dp2 := startClusterDP(t, "dp-2", "branch", origin.URL, k.pub, []string{dp1.Gossip}, "--product", product)
	waitMembers(t, []*clusterDP{dp1, dp2}, []*clusterDP{dp1, dp2})
	waitDetail(t, eventually, "the watcher to find DP-2 at a poll", func() (bool, string) {
		return strings.Contains(w.Stderr(), "the site's DPs changed") && strings.Contains(w.Stderr(), dp2.GRPC), w.Stderr()
	})

	dp1.proc.Kill()
	writeFiles(t, src, map[string]int{"databases/daily.dat": 64 << 10})
	publish(t, repo, k, "2.0", src)
	waitDetail(t, watchGuard, "the watcher to install 2.0 through DP-2, which joined after it started", installed(2))
	if err := w.Stop(); err != nil {
		t.Errorf("update --watch stopped with SIGTERM: %v, want exit 0\nstderr: %s", err, w.Stderr())
	}
}
