package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// Three DPs in one site and one in another, cold, and 50 endpoints asking
// at once, each through a DP of its site with --discover: every endpoint
// installs the verified version, and the origin serves each blob exactly
// once per site. `dpcache status` shows the four members alive in their
// sites, each eventually holding the version, and upstream traffic of
// exactly two copies of it.
func TestE2E_Cluster_OnePerSite(t *testing.T) {
	t.Parallel()
	const agents = 50
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	sizes := map[string]int{
		"databases/base-1.dat": 8 << 20,
		"databases/base-2.dat": 7 << 20,
		"databases/base-3.dat": 5<<20 + 123,
		"databases/daily.idx":  512 << 10,
		"modules/engine.bin":   6 << 20,
		"modules/gui.bin":      3<<20 + 17,
	}
	files := writeFiles(t, src, sizes)
	size := sumSizes(sizes, files)
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "5.0", src)
	// Slow enough that the DPs' fetches overlap the endpoints' requests.
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "32m"})
	dps := startCluster(t, origin.URL, k.pub, []dpSpec{
		{"a1", "branch-a"}, {"a2", "branch-a"}, {"a3", "branch-a"}, {"b1", "branch-b"},
	})
	siteURLs := map[string][]string{}
	for _, dp := range dps {
		siteURLs[dp.Site] = append(siteURLs[dp.Site], dp.URL())
	}

	procs := make([]*testenv.Proc, agents)
	args := make([][]string, agents)
	via := make([]*clusterDP, agents)
	for i := range procs {
		id := fmt.Sprintf("endpoint-%02d", i)
		via[i] = dps[i%len(dps)]
		args[i] = updateArgs(via[i].URL(), filepath.Join(work, id), k.pub, "--id", id, "--discover", "--site", via[i].Site)
		procs[i] = startDpcache(t, args[i]...)
	}
	for i, p := range procs {
		res := parseUpdate(t, waitProc(t, p, args[i]))
		want := updateResult{Product: product, Version: "5.0", Serial: 1, Status: "updated", Source: res.Source,
			BytesDownloaded: size, FilesChanged: len(files)}
		if res != want {
			t.Errorf("agent %d (via %s): %+v, want %+v", i, via[i].Name, res, want)
		}
		if !slices.Contains(siteURLs[via[i].Site], res.Source) {
			t.Errorf("agent %d of site %s updated from %s, want a DP of its site %v", i, via[i].Site, res.Source, siteURLs[via[i].Site])
		}
	}
	for i := range procs {
		checkTree(t, current(filepath.Join(work, fmt.Sprintf("endpoint-%02d", i))), files)
	}

	// Every DP ends up holding the version whole, and says so.
	waitDetail(t, eventually, "every DP to hold serial 1 and the status to show it", func() (bool, string) {
		st, err := statusOf(t, dps[0].GRPC)
		if err != nil {
			return false, err.Error()
		}
		for _, dp := range dps {
			m, ok := st.member(dp.Name)
			if !ok || m.State != "alive" || m.Site != dp.Site || m.GRPC != dp.GRPC || !m.holds(1) {
				return false, fmt.Sprintf("%+v", st.Members)
			}
		}
		return len(st.Members) == len(dps), fmt.Sprintf("%+v", st.Members)
	})

	// The origin: each blob once per site.
	waitDetail(t, eventually, "every blob twice in nginx's access log", func() (bool, string) {
		for path, digest := range files {
			if n := origin.CountRequests(t, blobURI(digest)); n < 2 {
				return false, fmt.Sprintf("%s: %d", path, n)
			}
		}
		return true, ""
	})
	for path, digest := range files {
		if n := origin.CountRequests(t, blobURI(digest)); n != 2 {
			t.Errorf("origin served %s (blob %s) %d times to 2 sites and %d agents, want twice (once per site): %+v",
				path, digest, n, agents, blobEntries(t, origin, digest))
		}
	}
	if got := origin.BytesServed(t, "/blobs/"); got != 2*size {
		t.Errorf("origin sent %d blob bytes, want %d (the version once per site)", got, 2*size)
	}

	// Every DP's view: the same members, and upstream traffic of two copies.
	for _, dp := range dps {
		st, err := statusOf(t, dp.GRPC)
		if err != nil {
			t.Fatalf("status of %s: %v", dp.Name, err)
		}
		for _, want := range dps {
			if m, ok := st.member(want.Name); !ok || m.State != "alive" || m.Site != want.Site {
				t.Errorf("status --node %s: member %s = %+v (listed %v), want alive in %s", dp.Name, want.Name, m, ok, want.Site)
			}
		}
		if len(st.Members) != len(dps) {
			t.Errorf("status --node %s lists %d members, want %d: %+v", dp.Name, len(st.Members), len(dps), st.Members)
		}
		if st.Traffic.UpstreamBytes != 2*size {
			t.Errorf("status --node %s: upstream_bytes %d, want %d (the version once per site)", dp.Name, st.Traffic.UpstreamBytes, 2*size)
		}
		if st.Traffic.ServedBytes < int64(agents)*size {
			t.Errorf("status --node %s: served_bytes %d, want at least %d (%d agents × the version)", dp.Name, st.Traffic.ServedBytes, int64(agents)*size, agents)
		}
	}
}

// The DP that owns a big blob in its site is killed (SIGKILL) while it
// fetches it from a slow origin for the other two: the next owner takes
// over and resumes where the site's bytes end, every endpoint still
// installs the verified version, and the origin sends at most 1.05 times
// the version.
//
// Not parallel: the figure counts what the killed owner had taken from the
// origin but not passed on (its lead and its sockets' buffers), which
// grows when other tests' processes take the CPU the DPs need to keep up.
func TestE2E_Cluster_OwnerKilledMidFetch(t *testing.T) {
	const agentsPerDP = 2
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	sizes := map[string]int{
		"databases/huge.dat": 160 << 20,
		"modules/engine.bin": 1 << 20,
	}
	files := writeFiles(t, src, sizes)
	size := sumSizes(sizes, files)
	huge := files["databases/huge.dat"]
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "9.0", src)
	// About 7 s for the big blob: time to kill its owner in the middle.
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "24m"})
	dps := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-x", "branch"}, {"dp-y", "branch"}, {"dp-z", "branch"}})

	names := make([]string, len(dps))
	byName := map[string]*clusterDP{}
	for i, dp := range dps {
		names[i], byName[dp.Name] = dp.Name, dp
	}
	owner := byName[rendezvousOwner(huge, names)]
	var others []*clusterDP
	for _, dp := range dps {
		if dp != owner {
			others = append(others, dp)
		}
	}
	t.Logf("owner of the big blob: %s; endpoints use %s and %s", owner.Name, others[0].Name, others[1].Name)

	var procs []*testenv.Proc
	var args [][]string
	var dirs []string
	for _, dp := range others {
		for j := range agentsPerDP {
			dir := filepath.Join(work, fmt.Sprintf("endpoint-%s-%d", dp.Name, j))
			a := updateArgs(dp.URL(), dir, k.pub)
			dirs, args, procs = append(dirs, dir), append(args, a), append(procs, startDpcache(t, a...))
		}
	}

	// The owner fetches the big blob for the site; the others get it from
	// the owner. Kill the owner a quarter of the way.
	waitDetail(t, 60*time.Second, "the owner to fetch 40 MiB of the big blob from the origin", func() (bool, string) {
		var detail []string
		done := false
		for _, dp := range dps {
			tr, err := localTraffic(t, dp.GRPC)
			if err != nil {
				detail = append(detail, dp.Name+": "+err.Error())
				continue
			}
			detail = append(detail, fmt.Sprintf("%s: upstream %d peer %d served %d", dp.Name, tr.GetUpstreamBytes(), tr.GetPeerBytes(), tr.GetServedBytes()))
			if dp != owner && tr.GetUpstreamBytes() > uint64(sizes["modules/engine.bin"]) {
				t.Fatalf("%s, not the owner %s, fetched %d bytes from the origin: %v", dp.Name, owner.Name, tr.GetUpstreamBytes(), detail)
			}
			if dp == owner && tr.GetUpstreamBytes() >= 40<<20 {
				done = true
			}
		}
		for _, p := range procs {
			if p.Exited() {
				t.Fatalf("an endpoint finished before the owner could be killed mid-fetch: %s", p.Stderr())
			}
		}
		return done, strings.Join(detail, "; ")
	})
	owner.proc.Kill()
	t.Logf("killed the owner %s", owner.Name)

	for i, p := range procs {
		res := parseUpdate(t, waitProc(t, p, args[i]))
		if res.Status != "updated" || res.Version != "9.0" || res.BytesDownloaded != size {
			t.Errorf("endpoint %s: %+v, want 9.0 updated with %d bytes downloaded", dirs[i], res, size)
		}
		checkTree(t, current(dirs[i]), files)
	}
	// Both survivors hold the version whole (no fetch still running).
	waitDetail(t, eventually, "the surviving DPs to hold the version", func() (bool, string) {
		st, err := statusOf(t, others[0].GRPC)
		if err != nil {
			return false, err.Error()
		}
		for _, dp := range others {
			if m, ok := st.member(dp.Name); !ok || !m.holds(1) {
				return false, fmt.Sprintf("%+v", st.Members)
			}
		}
		return true, ""
	})
	// nginx logs a transfer when it ends: the one cut by the kill, and the
	// one that completed the blob.
	waitDetail(t, eventually, "nginx to log the cut and the completing transfers of the big blob", func() (bool, string) {
		entries := blobEntries(t, origin, huge)
		complete := func(e testenv.AccessEntry) bool { return e.Complete }
		cut := func(e testenv.AccessEntry) bool { return !e.Complete }
		return slices.ContainsFunc(entries, complete) && slices.ContainsFunc(entries, cut), fmt.Sprintf("%+v", entries)
	})
	entries := blobEntries(t, origin, huge)
	t.Logf("origin transfers of the big blob: %+v", entries)
	served := origin.BytesServed(t, "/blobs/")
	if limit := size + size/20; served > limit {
		t.Errorf("origin sent %d blob bytes for a %d-byte version (%.3f×), want at most 1.05× (%d): the site fetched again what it had",
			served, size, float64(served)/float64(size), limit)
	}
}

// An endpoint with --discover downloads a big blob through one DP of its
// site; that DP is killed (SIGKILL) mid-stream. The endpoint continues at
// its offset from the other DP of the site and installs the verified
// version. Run once with the blob's owner killed and once with the other
// DP killed.
func TestE2E_Cluster_DPKilledWhileStreaming(t *testing.T) {
	t.Parallel()
	const size = 48 << 20
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/big.dat": size})
	digest := files["databases/big.dat"]
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "4.0", src)

	for _, killOwner := range []bool{true, false} {
		name := "non-owner killed"
		if killOwner {
			name = "owner killed"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// About 6 s for the blob: time to kill the DP in the middle.
			origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "8m"})
			// The endpoint is pointed at the second DP by name, so --discover
			// lists the first one before it (nearest first among equals, and
			// the asked DP is never moved ahead of the list): the endpoint
			// streams from the first. Names are chosen so that the first is
			// the blob's owner, or not, as the case wants.
			first, second := pairWithOwner(digest, killOwner)
			dps := startCluster(t, origin.URL, k.pub, []dpSpec{{first, "branch"}, {second, "branch"}})
			victim, named := dps[0], dps[1]
			ep := filepath.Join(t.TempDir(), "endpoint")
			args := updateArgs(named.URL(), ep, k.pub, "--discover", "--site", "branch")
			p := startDpcache(t, args...)

			var received int64
			waitDetail(t, 60*time.Second, "the endpoint to receive 8 MiB through "+victim.Name+", the first DP --discover lists", func() (bool, string) {
				if p.Exited() {
					t.Fatalf("the update ended before a DP could be killed mid-stream: %s", waitProc(t, p, args))
				}
				received = fileSize(partPath(ep, digest))
				tr, err := localTraffic(t, victim.GRPC)
				if err != nil {
					return false, err.Error()
				}
				// The owner fetches upstream; the other DP gets the blob
				// from the owner.
				fetching := tr.GetPeerBytes() > 0
				if killOwner {
					fetching = tr.GetUpstreamBytes() > 0
				}
				return received >= 8<<20 && int64(tr.GetServedBytes()) >= received && fetching,
					fmt.Sprintf("endpoint has %d bytes; %s: %v", received, victim.Name, tr)
			})
			victim.proc.Kill()
			t.Logf("killed %s (owner: %v) once the endpoint had %d of %d bytes", victim.Name, killOwner, received, size)

			res := parseUpdate(t, waitProc(t, p, args))
			if res.Status != "updated" || res.Version != "4.0" || res.Source != named.URL() {
				t.Errorf("update = %+v, want 4.0 updated from %s", res, named.URL())
			}
			if res.BytesDownloaded < size || res.BytesDownloaded > size+1<<20 {
				t.Errorf("update downloaded %d bytes of a %d-byte blob, want the blob once (it resumes at its offset)", res.BytesDownloaded, size)
			}
			checkTree(t, current(ep), files)
		})
	}
}

// With the origin unreachable, endpoints still update to the newest version
// the site holds whole; the DPs, which know of a newer version they cannot
// fetch, never announce it. When the origin is back the newer version
// arrives, every DP announces it, and endpoints update to it.
func TestE2E_Cluster_OriginUnreachable(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	sizes := map[string]int{"databases/base.dat": 2 << 20, "modules/engine.bin": 1 << 20}
	v1 := writeFiles(t, src, sizes)
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	// While the gate file exists the origin answers 503 for every blob, as
	// an origin failing mid-publication would: the DPs see 2.0's documents
	// but cannot fetch its blobs.
	gate := filepath.Join(work, "blobs-down")
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{ServerConfig: fmt.Sprintf(
		`location /blobs/ { root %q; if (-f %q) { return 503; } }`, repo, gate)})
	dps := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-1", "branch"}, {"dp-2", "branch"}})
	holding := func(serial uint64) func() (bool, string) {
		return func() (bool, string) {
			st, err := statusOf(t, dps[0].GRPC)
			if err != nil {
				return false, err.Error()
			}
			for _, dp := range dps {
				if m, ok := st.member(dp.Name); !ok || m.State != "alive" || !m.holds(serial) {
					return false, fmt.Sprintf("%+v", st.Members)
				}
			}
			return true, ""
		}
	}
	agent := func(id string) string { return filepath.Join(work, id) }
	// An endpoint through each DP: from then on both keep the product
	// current (every --refresh).
	for _, dp := range dps {
		if res := update(t, dp.URL(), agent("warm-"+dp.Name), k.pub); res.Version != "1.0" {
			t.Fatalf("first update through %s = %+v, want 1.0", dp.Name, res)
		}
	}
	waitDetail(t, eventually, "both DPs to hold 1.0", holding(1))
	noneHolds2 := func(when string) {
		t.Helper()
		for _, dp := range dps {
			st, err := statusOf(t, dp.GRPC)
			if err != nil {
				t.Fatalf("status of %s %s: %v", dp.Name, when, err)
			}
			for _, m := range st.Members {
				if m.holds(2) {
					t.Errorf("%s: status --node %s shows %s holding serial 2, which the site cannot have fetched: %+v", when, dp.Name, m.Name, st.Members)
				}
			}
		}
	}
	upd := func(id string) updateResult {
		t.Helper()
		return update(t, dps[1].URL(), agent(id), k.pub, "--discover", "--site", "branch", "--id", id)
	}

	// 2.0 is published while the origin cannot send blobs.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sizes["databases/daily.dat"] = 1 << 20
	v2 := maps.Clone(v1)
	maps.Copy(v2, writeFiles(t, src, map[string]int{"databases/daily.dat": sizes["databases/daily.dat"]}))
	publish(t, repo, k, "2.0", src)
	newBlob := blobURI(v2["databases/daily.dat"])
	waitDetail(t, eventually, "a DP to try 2.0's new blob at the origin", func() (bool, string) {
		for _, e := range origin.Requests(t) {
			if strings.HasSuffix(e.URI, newBlob) && e.Status == 503 {
				return true, ""
			}
		}
		return false, "no request for " + newBlob
	})
	if res := upd("ep-1"); res.Status != "updated" || res.Version != "1.0" {
		t.Errorf("update while 2.0's blobs are unavailable = %+v, want 1.0 updated (the newest the site holds whole)", res)
	}
	checkTree(t, current(agent("ep-1")), v1)
	noneHolds2("while the origin fails blob requests")

	// The origin goes away altogether.
	origin.Stop(t)
	refreshFailures := func(dp *clusterDP) int {
		return strings.Count(dp.proc.Stderr(), "update source skipped")
	}
	before := map[string]int{}
	for _, dp := range dps {
		before[dp.Name] = refreshFailures(dp)
	}
	if res := upd("ep-2"); res.Status != "updated" || res.Version != "1.0" {
		t.Errorf("update with the origin down = %+v, want 1.0 updated", res)
	}
	checkTree(t, current(agent("ep-2")), v1)
	if res := upd("ep-1"); res.Status != "up-to-date" || res.Version != "1.0" {
		t.Errorf("second update with the origin down = %+v, want 1.0 up-to-date", res)
	}
	// Let every DP go through a few refreshes that fail.
	for _, dp := range dps {
		waitDetail(t, eventually, dp.Name+" to retry the unreachable origin", func() (bool, string) {
			n := refreshFailures(dp)
			return n >= before[dp.Name]+3, fmt.Sprintf("%d failed refreshes logged", n)
		})
	}
	noneHolds2("with the origin down")

	// The origin is back, whole: 2.0 arrives, every DP announces it, and
	// endpoints move to it.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	restartNginx(t, origin)
	waitDetail(t, eventually, "both DPs to hold 2.0 once the origin is back", holding(2))
	res := upd("ep-1")
	want := updateResult{Product: product, Version: "2.0", Serial: 2, Status: "updated", Source: res.Source,
		BytesDownloaded: int64(sizes["databases/daily.dat"]), FilesChanged: 1}
	if res != want {
		t.Errorf("update once the origin is back = %+v, want %+v", res, want)
	}
	checkTree(t, current(agent("ep-1")), v2)
}

// `dpcache update --watch --jitter 2s --json` keeps running: it installs
// what the DP announces, and when a new version is published it prints an
// "updated" result for it, without a restart.
func TestE2E_Cluster_WatchJitter(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	v1 := writeFiles(t, src, map[string]int{"databases/base.dat": 1 << 20, "modules/engine.bin": 256 << 10})
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dps := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-w", "branch"}})
	ep := filepath.Join(work, "endpoint")
	args := append(updateArgs(dps[0].URL(), ep, k.pub), "--watch", "--jitter", "2s")
	w := startDpcache(t, args...)

	results := func() []updateResult {
		var out []updateResult
		// A line without its newline yet is still being written.
		complete, _ := cutLast(w.Stdout(), "\n")
		for _, line := range nonEmptyLines(complete) {
			var r updateResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("update --watch --json printed a line that is not a JSON object: %q: %v", line, err)
			}
			out = append(out, r)
		}
		return out
	}
	updatedTo := func(version string) func() (bool, string) {
		return func() (bool, string) {
			if w.Exited() {
				t.Fatalf("update --watch exited: %s", waitProc(t, w, args))
			}
			rs := results()
			return slices.ContainsFunc(rs, func(r updateResult) bool { return r.Status == "updated" && r.Version == version }),
				fmt.Sprintf("%+v; stderr: %s", rs, w.Stderr())
		}
	}
	waitDetail(t, eventually, "the watcher to install 1.0", updatedTo("1.0"))
	checkTree(t, current(ep), v1)

	v2 := maps.Clone(v1)
	maps.Copy(v2, writeFiles(t, src, map[string]int{"databases/daily.dat": 300 << 10}))
	publish(t, repo, k, "2.0", src)
	waitDetail(t, eventually, "the watcher to print an updated 2.0 result", updatedTo("2.0"))
	checkTree(t, current(ep), v2)
	for _, r := range results() {
		if r.Product != product || r.Source != dps[0].URL() || (r.Version == "2.0" && (r.Serial != 2 || r.FilesChanged != 1 || r.BytesDownloaded != 300<<10)) {
			t.Errorf("watch result %+v: want %s from %s; 2.0 with serial 2, 1 file changed, %d bytes", r, product, dps[0].URL(), 300<<10)
		}
	}
	if n := len(results()); n != 2 {
		t.Errorf("the watcher printed %d results, want 2 (1.0 then 2.0): %s", n, w.Stdout())
	}
	if err := w.Stop(); err != nil {
		t.Errorf("update --watch stopped with SIGTERM: %v, want exit 0\nstderr: %s", err, w.Stderr())
	}
}

// pairWithOwner returns two DP names, first < second, such that first owns
// digest by rendezvous hashing (owner true) or second does (owner false).
func pairWithOwner(digest string, owner bool) (first, second string) {
	for i := 0; ; i++ {
		first, second = fmt.Sprintf("dp-a%d", i), fmt.Sprintf("dp-b%d", i)
		if (rendezvousOwner(digest, []string{first, second}) == first) == owner {
			return first, second
		}
	}
}

// cutLast splits s around the last sep; ok is false (and before "") if
// there is none.
func cutLast(s, sep string) (before string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return "", false
	}
	return s[:i], true
}

// DPs with the same --gossip-key form a cluster; a DP with another key
// that tries to join them is not a member, on either side.
func TestE2E_Cluster_GossipKey(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	key := func() string {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	shared, other := key(), key()
	// No product is asked for: the upstream is never contacted.
	const upstream = "http://127.0.0.1:9/"
	dp1 := startClusterDP(t, "dp-1", "branch", upstream, k.pub, nil, "--gossip-key", shared)
	dp2 := startClusterDP(t, "dp-2", "branch", upstream, k.pub, []string{dp1.Gossip}, "--gossip-key", shared)
	waitMembers(t, []*clusterDP{dp1, dp2}, []*clusterDP{dp1, dp2})

	dp3 := startClusterDP(t, "dp-3", "branch", upstream, k.pub, []string{dp1.Gossip, dp2.Gossip}, "--gossip-key", other)
	testenv.WaitFor(t, eventually, "dp-3 to report that it cannot join", func() bool {
		return strings.Contains(dp3.proc.Stderr(), "cannot reach the cluster")
	})
	// The keyed cluster is unchanged, and dp-3 is alone.
	for _, dp := range []*clusterDP{dp1, dp2} {
		st, err := statusOf(t, dp.GRPC)
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := st.member("dp-3"); ok {
			t.Errorf("status --node %s lists dp-3 (another gossip key) as a member: %+v", dp.Name, m)
		}
		if len(st.Members) != 2 {
			t.Errorf("status --node %s: %+v, want dp-1 and dp-2 only", dp.Name, st.Members)
		}
	}
	waitMembers(t, []*clusterDP{dp1, dp2}, []*clusterDP{dp1, dp2})
	st, err := statusOf(t, dp3.GRPC)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 1 || st.Members[0].Name != "dp-3" {
		t.Errorf("status --node dp-3 (another key): %+v, want only itself", st.Members)
	}
}
