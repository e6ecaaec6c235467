package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// fastGossip shortens memberlist's timers for in-process clusters: fast
// spreading, but probes patient enough that a machine loaded by parallel
// race-detector tests does not declare live members dead (which would make
// DPs disagree about owners and fetch a blob twice).
func fastGossip(gc *gossip.Config) {
	c := memberlist.DefaultLANConfig()
	c.TCPTimeout = 2 * time.Second
	c.ProbeInterval = 300 * time.Millisecond
	c.ProbeTimeout = 600 * time.Millisecond
	c.SuspicionMult = 4
	c.SuspicionMaxTimeoutMult = 2
	c.GossipInterval = 20 * time.Millisecond
	c.PushPullInterval = 500 * time.Millisecond
	gc.Memberlist = c
	gc.RejoinInterval = 100 * time.Millisecond
	gc.LeaveTimeout = time.Second
}

// clusterNode is a DP of an in-process cluster that a test can stop.
type clusterNode struct {
	*Node
	stop func()
}

// startCluster starts one DP per site name given, all joined, with the
// same upstream, and waits until every DP sees all of them.
func startCluster(t *testing.T, v *vendor, upstream string, sites ...string) []*clusterNode {
	t.Helper()
	return startClusterWith(t, v, upstream, nil, sites...)
}

// startClusterWith is startCluster with mod applied to each DP's Config.
func startClusterWith(t *testing.T, v *vendor, upstream string, mod func(*Config), sites ...string) []*clusterNode {
	t.Helper()
	var nodes []*clusterNode
	var join []string
	for i, site := range sites {
		cfg := DefaultConfig()
		cfg.Name, cfg.Site = fmt.Sprintf("dp-%d", i+1), site
		cfg.DataDir = t.TempDir()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		cfg.Join = join
		cfg.Upstream, cfg.Trust = []string{upstream}, v.trust
		cfg.Refresh = 200 * time.Millisecond
		cfg.Logger = slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelInfo})).With("dp", cfg.Name)
		if mod != nil {
			mod(&cfg)
		}
		n, err := newNode(cfg, testHooks{tuneGossip: fastGossip})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(ctx) }()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("%s: Run: %v", cfg.Name, err)
				}
			})
		}
		t.Cleanup(stop)
		nodes = append(nodes, &clusterNode{n, stop})
		join = append(join, n.gossip.LocalAddr())
	}
	testenv.WaitFor(t, 20*time.Second, "every DP sees the whole cluster", func() bool {
		for _, n := range nodes {
			if len(n.gossip.Live("")) != len(nodes) {
				return false
			}
		}
		return true
	})
	return nodes
}

// updateAll runs one agent per source at once and returns their results.
func updateAll(t *testing.T, v *vendor, product string, srcs []source.Source) []*agent.Result {
	t.Helper()
	results := make([]*agent.Result, len(srcs))
	errs := make([]error, len(srcs))
	var wg sync.WaitGroup
	for i, s := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := agent.DefaultConfig()
			cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir = []source.Source{s}, v.trust, product, t.TempDir()
			cfg.EndpointID = fmt.Sprintf("ep-%d", i)
			results[i], errs[i] = agent.Update(testCtx(t), cfg)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("agent %d via %s: %v", i, srcs[i], err)
		}
	}
	return results
}

func grpcSources(t *testing.T, nodes []*clusterNode, count int) []source.Source {
	var out []source.Source
	for i := range count {
		s, err := source.NewGRPC(nodes[i%len(nodes)].GRPCAddr(), source.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	return out
}

// Three DPs of one site and many agents asking at once: the origin serves
// each blob once. With a second site: once per site.
func TestCluster_OneUpstreamFetchPerSite(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, map[string]int{
		"databases/a.dat": 3 << 20, "databases/b.dat": 2 << 20, "databases/c.dat": 1 << 20, "modules/m.bin": 2 << 20,
	})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "16m"})
	nodes := startCluster(t, v, ngx.URL, "paris", "paris", "paris", "lyon")
	updateAll(t, v, "av", grpcSources(t, nodes, 24))
	for _, f := range pub.Manifest.Blobs() {
		testenv.WaitFor(t, 10*time.Second, "origin log", func() bool {
			return ngx.CountRequests(t, manifest.BlobPath(f.SHA256)) >= 2
		})
		// Once for paris, once for lyon; a second look after the others
		// hold the version whole must not find more.
	}
	for _, n := range nodes {
		testenv.WaitFor(t, 20*time.Second, n.cfg.Name+" holds v1 whole", func() bool {
			hv, err := n.cache.LatestVersion("av")
			return err == nil && hv.Serial == 1
		})
	}
	for _, f := range pub.Manifest.Blobs() {
		if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 2 {
			t.Errorf("origin served %s %d times to a cluster of two sites, want 2 (once per site)", f.Path, got)
		}
	}
	var up, peer int64
	for _, n := range nodes {
		up += n.Traffic().UpstreamBytes
		peer += n.Traffic().PeerBytes
	}
	if up != 2*pub.Manifest.Size() {
		t.Errorf("upstream bytes over the cluster %d, want %d (the version once per site)", up, 2*pub.Manifest.Size())
	}
	if peer == 0 {
		t.Errorf("no bytes moved between peers")
	}
}

// The owner of a blob stops mid-fetch: the DPs waiting on it take over
// from the next owner, which copies what they already have instead of
// fetching it again: the origin serves little more than the blob once.
func TestCluster_OwnerLostMidFetch(t *testing.T) {
	v := newVendor(t)
	const size = 320 << 20
	pub := v.publish(t, "av", "1", 1, map[string]int{"databases/big.dat": size})
	// Slow enough that the owner is lost mid-fetch. What the origin had
	// sent into the lost owner's socket buffers is lost with it: up to
	// 10 MiB on loopback (the owner's receive and nginx's send buffers),
	// plus the owner's lead (at most 4 MiB), and under the race detector
	// on two shared cores a resumed transfer may break once more: 10-17 MiB
	// in all, 1.06-1.10x of 160 MiB in a fifth of the runs. Hence a version
	// of 320 MiB and a bound of 1.08x here; the process-level test without
	// the race detector (e2e TestE2E_Cluster_OwnerKilledReplicated) holds
	// the goal of 1.05x. The bound
	// holds while the followers keep up with the internet link, as a LAN
	// does: the origin's rate and the number of endpoints are kept low
	// enough that DPs under the race detector on two shared cores still do
	// (six endpoints reading 160 MiB each starved the followers, whose
	// owner then stopped waiting for them: 1.23x once in ten runs).
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "16m"})
	nodes := startCluster(t, v, ngx.URL, "paris", "paris", "paris")
	digest := pub.Manifest.Files[0].SHA256
	owner := nodes[0].gossip.Owners("paris", digest)[0].Name
	var others []*clusterNode
	var victim *clusterNode
	for _, n := range nodes {
		if n.cfg.Name == owner {
			victim = n
		} else {
			others = append(others, n)
		}
	}
	srcs := grpcSources(t, others, 2)
	results := make(chan error, len(srcs))
	for i, s := range srcs {
		go func() {
			cfg := agent.DefaultConfig()
			cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir = []source.Source{s}, v.trust, "av", filepath.Join(t.TempDir(), fmt.Sprint(i))
			_, err := agent.Update(testCtx(t), cfg)
			results <- err
		}()
	}
	// Stop the owner once it has fetched a good part of the blob.
	testenv.WaitFor(t, 30*time.Second, "owner mid-fetch", func() bool {
		info, err := victim.cache.Blob(digest)
		return err == nil && info.Stored >= size/3
	})
	victim.stop()
	for range srcs {
		if err := <-results; err != nil {
			t.Fatalf("agent after the owner was lost: %v", err)
		}
	}
	served := ngx.BytesServed(t, "/"+manifest.BlobPath(digest))
	t.Logf("origin served %d bytes for a %d-byte blob (%.2fx)", served, size, float64(served)/size)
	for _, e := range ngx.Requests(t) {
		if e.URI == "/"+manifest.BlobPath(digest) {
			t.Logf("origin request: range %q, %d bytes sent, complete %v", e.Range, e.Bytes, e.Complete)
		}
	}
	if served > size*108/100 {
		t.Errorf("origin served %.3fx the blob after losing the owner, want at most 1.08x", float64(served)/size)
	}
}

// With the internet link down, a DP that lacks the newest version learns it
// from a peer of its site that holds it whole, completes it from that peer,
// and serves it: the site's newest whole version reaches every endpoint.
func TestCluster_OriginDownPeerHasNewerVersion(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	nodes := startCluster(t, v, ngx.URL, "paris", "paris")
	viaFirst := grpcSources(t, nodes[:1], 1)
	updateAll(t, v, "av", viaFirst)
	pub2 := v.publish(t, "av", "2", 2, map[string]int{"databases/a.dat": 1 << 20, "modules/m.bin": 300 << 10})
	testenv.WaitFor(t, 30*time.Second, "dp-1 holds v2 whole", func() bool {
		hv, err := nodes[0].cache.LatestVersion("av")
		return err == nil && hv.Serial == 2
	})
	ngx.Stop(t) // the internet link goes down
	res := updateAll(t, v, "av", grpcSources(t, nodes[1:2], 1))
	if res[0].Serial != pub2.Latest.Serial {
		t.Fatalf("through dp-2 with the origin down: %+v, want serial 2 (held whole by its peer)", res[0])
	}
	testenv.WaitFor(t, 30*time.Second, "dp-2 holds v2 whole", func() bool {
		hv, err := nodes[1].cache.LatestVersion("av")
		return err == nil && hv.Serial == 2
	})
}

// TestCluster_StalePeerShown: a DP whose upstreams are all stale, or all
// failing, shows on the status page of every DP of the cluster, not only on
// its own (an operator watches one page). Each DP is alone in its site: a
// site peer with a current upstream would give the stale DP a current
// latest.json (documents fall back to the site), so it would not stay
// stale.
func TestCluster_StalePeerShown(t *testing.T) {
	v := newVendor(t)
	frozen := publishFrozen(t, v)
	down := "http://" + testenv.FreeAddr(t, "127.0.0.1") + "/"
	nodes := startClusterWith(t, v, v.repo, func(c *Config) {
		switch c.Name {
		case "dp-2":
			c.Upstream = []string{frozen}
		case "dp-3":
			c.Upstream = []string{down}
		}
	}, "a", "b", "c")
	ctx := testCtx(t)
	if _, err := dial(t, nodes[1].Node).GetLatest(ctx, &pb.GetLatestRequest{Product: "av", Forwarded: true}); err != nil {
		t.Fatalf("latest through the stale DP: %v", err)
	}
	if _, err := dial(t, nodes[2].Node).GetLatest(ctx, &pb.GetLatestRequest{Product: "av", Forwarded: true}); status.Code(err) != codes.Unavailable {
		t.Fatalf("latest through the DP whose upstream is down: %v, want Unavailable", err)
	}
	// The page asks every member as it renders, each within a deadline: on
	// a loaded machine a member may miss it once, so the page is asked
	// again until it shows both or the wait ends.
	wants := []string{`id="stale-peers"`, "dp-2 serves an expired av", `id="upstream-down"`, "dp-3 since"}
	var page string
	var lacks []string
	testenv.WaitFor(t, 30*time.Second, "dp-1's status page to show dp-2 stale and dp-3's upstream down", func() bool {
		r, err := http.Get("http://" + nodes[0].HTTPAddr() + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		page, lacks = string(b), nil
		for _, want := range wants {
			if !strings.Contains(page, want) {
				lacks = append(lacks, want)
			}
		}
		if len(lacks) > 0 {
			t.Logf("dp-1's status page lacks %q", lacks)
		}
		return len(lacks) == 0
	})
	if strings.Contains(page, `id="stale"`) {
		t.Error("dp-1's status page shows dp-1 itself stale")
	}
}

// TestCluster_SiteLatestFollowsPeer (issue: a site's latest was per DP):
// when one DP of a site comes to hold a newer version whole (here through
// the download task run now, as `dpcache prefetch --node dp-2` does), the
// other DPs of the site take it from that DP over the LAN and announce it,
// without a refresh of their own and without asking the origin again.
func TestCluster_SiteLatestFollowsPeer(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	nodes := startClusterWith(t, v, ngx.URL, func(c *Config) { c.Refresh = time.Hour }, "a", "a")
	ctx := testCtx(t)
	for _, n := range nodes { // each keeps av: an endpoint asked it
		if _, err := dial(t, n.Node).GetLatest(ctx, &pb.GetLatestRequest{Product: "av"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		testenv.WaitFor(t, 20*time.Second, n.cfg.Name+" holds v1 whole", func() bool {
			hv, err := n.cache.LatestVersion("av")
			return err == nil && hv.Serial == 1
		})
	}

	pub2 := v.publish(t, "av", "2", 2, map[string]int{"databases/a.dat": 2 << 20, "databases/c.dat": 1 << 20})
	j, _, err := nodes[1].catalog.PrefetchNow(ctx, "av")
	if err != nil || j == nil {
		t.Fatalf("prefetch on dp-2: job %v, %v", j, err)
	}
	<-j.Done()
	if j.Err() != nil {
		t.Fatal(j.Err())
	}
	testenv.WaitFor(t, 20*time.Second, "dp-1 holds v2 whole, as dp-2 of its site does", func() bool {
		hv, err := nodes[0].cache.LatestVersion("av")
		return err == nil && hv.Serial == 2
	})
	resp, err := dial(t, nodes[0].Node).GetLatest(ctx, &pb.GetLatestRequest{Product: "av"})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := v.trust.VerifyLatest(resp.GetLatest().GetData(), resp.GetLatest().GetSignature()); err != nil || l.Serial != 2 {
		t.Errorf("dp-1's latest = %+v, %v; want serial 2", l, err)
	}
	for _, f := range pub2.Manifest.Blobs() {
		if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 1 {
			t.Errorf("the origin served %s %d times, want once for the site", f.Path, got)
		}
	}
}
