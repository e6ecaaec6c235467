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

// In-flight replication (issue 12): three DPs of a site, a slow origin
// (8 MB/s) and a 48 MiB version. The blob's owner is killed (SIGKILL) once
// it has fetched a third of it; the next-ranked DP, which has been copying
// the owner's fetch as the bytes arrived, becomes the owner and resumes
// upstream at its own offset. The origin sends at most 1.05 times the
// version, whether every endpoint lists the owner first (as administrators
// configure them) or the endpoints spread over the DPs, and when the
// killed owner is restarted at once, while the site still fetches the
// blob. The killed DP, restarted, completes its copy from its peers
// without asking the origin.
//
// Not parallel: the figure counts what the killed owner had taken from the
// origin but not passed on, which grows when other tests' processes take
// the CPU the DPs need to keep up.
func TestE2E_Cluster_OwnerKilledReplicated(t *testing.T) {
	const (
		size      = 48 << 20
		endpoints = 4
		killAt    = 16 << 20 // the owner's upstream bytes when it is killed
	)
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/big.dat": size})
	digest := files["databases/big.dat"]
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "6.0", src)

	for _, tc := range []struct {
		name string
		// spread: endpoints list the DPs in turn, else the owner first.
		spread bool
		// restartAtOnce: the killed owner comes back while the site
		// is still fetching the blob, instead of after the update.
		restartAtOnce bool
	}{
		{name: "owner listed first by every endpoint"},
		{name: "endpoints spread over the DPs", spread: true},
		{name: "owner restarted mid-fetch", restartAtOnce: true},
	} {
		spread := tc.spread
		t.Run(tc.name, func(t *testing.T) {
			origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "8m"})
			dps := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-x", "branch"}, {"dp-y", "branch"}, {"dp-z", "branch"}})
			names := make([]string, len(dps))
			for i, dp := range dps {
				names[i] = dp.Name
			}
			// Owner first, then the others: the order administrators give.
			ranked := slices.Clone(dps)
			owner := slices.IndexFunc(ranked, func(dp *clusterDP) bool { return dp.Name == rendezvousOwner(digest, names) })
			ranked[0], ranked[owner] = ranked[owner], ranked[0]
			victim := ranked[0]

			var procs []*testenv.Proc
			var args [][]string
			var dirs []string
			for i := range endpoints {
				order := slices.Clone(ranked)
				if spread {
					order = append(order[i%len(order):], order[:i%len(order)]...)
				}
				urls := make([]string, len(order))
				for j, dp := range order {
					urls[j] = dp.URL()
				}
				dir := filepath.Join(t.TempDir(), fmt.Sprintf("endpoint-%d", i))
				a := updateArgs(strings.Join(urls, ","), dir, k.pub, "--id", fmt.Sprintf("ep-%d", i))
				dirs, args, procs = append(dirs, dir), append(args, a), append(procs, startDpcache(t, a...))
			}

			// Kill the owner once it has fetched a third of the blob:
			// progress, not time, sets the moment.
			waitDetail(t, 2*time.Minute, fmt.Sprintf("the owner %s to fetch %d MiB from the origin", victim.Name, killAt>>20), func() (bool, string) {
				for _, p := range procs {
					if p.Exited() {
						t.Fatalf("an endpoint finished before the owner could be killed mid-fetch: %s", p.Output())
					}
				}
				tr, err := localTraffic(t, victim.GRPC)
				if err != nil {
					return false, err.Error()
				}
				return tr.GetUpstreamBytes() >= killAt, fmt.Sprintf("%s: %v", victim.Name, tr)
			})
			victim.proc.Kill()
			for _, dp := range ranked[1:] {
				if tr, err := localTraffic(t, dp.GRPC); err == nil {
					t.Logf("killed the owner %s; %s had upstream %d peer %d bytes", victim.Name, dp.Name, tr.GetUpstreamBytes(), tr.GetPeerBytes())
				}
			}
			// The killed DP, restarted with its configuration (its
			// --join names the survivors, as an administrator's would:
			// the first DP of a test cluster was started with none, and
			// the survivors' own retries of a dead member are slower).
			victim.args = append(victim.args, "--join", ranked[1].Gossip+","+ranked[2].Gossip)
			if tc.restartAtOnce {
				// Back while the next owner is still fetching: it is
				// the blob's owner again, and must complete its copy
				// from the site rather than fetch again upstream.
				victim.restart(t)
			}

			for i, p := range procs {
				res := parseUpdate(t, waitProc(t, p, args[i]))
				if res.Status != "updated" || res.Version != "6.0" || res.BytesDownloaded < size {
					t.Errorf("endpoint %d: %+v, want 6.0 updated", i, res)
				}
				checkTree(t, current(dirs[i]), files)
			}
			holdWhole := func(observer *clusterDP, want []*clusterDP) func() (bool, string) {
				return func() (bool, string) {
					st, err := statusOf(t, observer.GRPC)
					if err != nil {
						return false, err.Error()
					}
					for _, dp := range want {
						if m, ok := st.member(dp.Name); !ok || m.State != "alive" || !m.holds(1) {
							return false, fmt.Sprintf("%+v", st.Members)
						}
					}
					return true, ""
				}
			}
			waitDetail(t, eventually, "the surviving DPs to hold the version", holdWhole(ranked[1], ranked[1:]))
			// nginx logs a transfer when it ends: the one cut by the kill
			// among them.
			waitDetail(t, eventually, "nginx to log the transfer the kill cut", func() (bool, string) {
				entries := blobEntries(t, origin, digest)
				return slices.ContainsFunc(entries, func(e testenv.AccessEntry) bool { return !e.Complete }), fmt.Sprintf("%+v", entries)
			})
			t.Logf("origin transfers of the blob: %+v", blobEntries(t, origin, digest))
			served := origin.BytesServed(t, "/blobs/")
			t.Logf("origin sent %d blob bytes for a %d-byte version (%.3f×)", served, size, float64(served)/size)
			if limit := int64(size + size/20); served > limit {
				t.Errorf("origin sent %d blob bytes for a %d-byte version (%.3f×), want at most 1.05×: the site fetched again what the owner alone held",
					served, size, float64(served)/size)
			}

			// The killed DP comes back (unless it is back already): it
			// completes its interrupted copy from the site, not from the
			// origin.
			if !tc.restartAtOnce {
				victim.restart(t)
			}
			waitDetail(t, eventually, victim.Name+" to see its peers holding the version", holdWhole(victim, ranked[1:]))
			dir := filepath.Join(t.TempDir(), "after-restart")
			res := update(t, victim.URL(), dir, k.pub)
			if res.Status != "updated" || res.Version != "6.0" {
				t.Errorf("update through the restarted %s: %+v, want 6.0 updated", victim.Name, res)
			}
			checkTree(t, current(dir), files)
			if after := origin.BytesServed(t, "/blobs/"); after != served {
				t.Errorf("the restarted %s made the origin send %d more blob bytes, want 0 (its site holds the version)", victim.Name, after-served)
			}
		})
	}
}
