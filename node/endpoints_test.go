package node

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// Ten endpoints at versions published 10 days, 4 days, 36 hours and 1
// hour ago report to the three DPs of their site; every DP of the site
// lists all of them, once each, in the right buckets. The DP of another
// site lists none.
func TestEndpoints_SiteListsAgeBuckets(t *testing.T) {
	v := newVendor(t)
	now := time.Now()
	published := []time.Time{now.Add(-10 * 24 * time.Hour), now.Add(-4 * 24 * time.Hour), now.Add(-36 * time.Hour), now.Add(-time.Hour)}
	wantAge := []string{Age7d, Age3d, Age24h, AgeCurrent}
	perVersion := []int{1, 2, 3, 4}
	files := func(k int) map[string][]byte {
		return map[string][]byte{"databases/base.dat": fill(fmt.Sprint("base", k), 64<<10), "modules/m.so": fill("module", 16<<10)}
	}
	v.publishFiles(t, "av", "1", files(1), published[0])
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	nodes := startClusterWith(t, v, ngx.URL, func(c *Config) {
		c.Products = []string{"av"}
		c.PrefetchInterval = 200 * time.Millisecond
	}, "paris", "paris", "paris", "lyon")
	paris := nodes[:3]
	srcs := grpcSources(t, paris, len(paris))

	type endpoint struct {
		id, dir string
		version int
	}
	var eps []endpoint
	update := func(id, dir string, via int) *agent.Result {
		t.Helper()
		cfg := agent.DefaultConfig()
		cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir = []source.Source{srcs[via%len(srcs)]}, v.trust, "av", dir
		cfg.EndpointID, cfg.Hostname, cfg.Site = id, "host-"+id, "paris"
		res, err := agent.Update(testCtx(t), cfg)
		if err != nil {
			t.Fatalf("agent %s: %v", id, err)
		}
		return res
	}
	moving := filepath.Join(t.TempDir(), "moving")
	for k := range 4 {
		if k > 0 {
			v.publishFiles(t, "av", fmt.Sprint(k+1), files(k+1), published[k])
		}
		testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("the site holds v%d", k+1), func() bool {
			for _, n := range paris {
				if hv, err := n.cache.LatestVersion("av"); err != nil || hv.Serial != uint64(k+1) {
					return false
				}
			}
			return true
		})
		for i := range perVersion[k] {
			id := fmt.Sprintf("ep-v%d-%d", k+1, i)
			if k == 3 && i == 0 {
				id = "ep-moving" // at v3 through dp-1 first (below), now v4 through dp-2
			}
			dir, via := filepath.Join(t.TempDir(), id), len(eps)
			if id == "ep-moving" {
				dir, via = moving, 1
			}
			if res := update(id, dir, via); res.Serial != uint64(k+1) {
				t.Fatalf("agent %s installed serial %d, want %d", id, res.Serial, k+1)
			}
			eps = append(eps, endpoint{id, dir, k})
		}
		if k == 2 {
			update("ep-moving", moving, 0) // reports v3 to dp-1; it moves to v4 below
		}
	}
	if len(eps) != 10 {
		t.Fatalf("%d endpoints, want 10", len(eps))
	}
	for _, n := range paris {
		c := dialAdmin(t, n.Node)
		resp, err := c.ListEndpoints(testCtx(t), &pb.ListEndpointsRequest{})
		if err != nil {
			t.Fatalf("%s: ListEndpoints: %v", n.cfg.Name, err)
		}
		got := map[string]*pb.EndpointInfo{}
		for _, e := range resp.GetEndpoints() {
			if _, dup := got[e.GetStatus().GetId()]; dup {
				t.Errorf("%s lists %s twice", n.cfg.Name, e.GetStatus().GetId())
			}
			got[e.GetStatus().GetId()] = e
		}
		if len(got) != len(eps) {
			t.Errorf("%s lists %d endpoints, want %d", n.cfg.Name, len(got), len(eps))
		}
		for _, ep := range eps {
			e := got[ep.id]
			if e == nil {
				t.Errorf("%s does not list %s", n.cfg.Name, ep.id)
				continue
			}
			st := e.GetStatus()
			if e.GetAge() != wantAge[ep.version] || st.GetSerial() != uint64(ep.version+1) || st.GetHostname() != "host-"+ep.id || st.GetSite() != "paris" || st.GetResult() == "" || st.GetReported() == nil {
				t.Errorf("%s lists %s as %v age %q, want serial %d age %q", n.cfg.Name, ep.id, st, e.GetAge(), ep.version+1, wantAge[ep.version])
			}
		}
		out, err := c.ListEndpoints(testCtx(t), &pb.ListEndpointsRequest{OutdatedOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.GetEndpoints()) != 6 {
			t.Errorf("%s lists %d outdated endpoints, want 6", n.cfg.Name, len(out.GetEndpoints()))
		}
		for _, e := range out.GetEndpoints() {
			if e.GetAge() == AgeCurrent {
				t.Errorf("outdated list has a current endpoint: %v", e)
			}
		}
		ages := n.countEndpoints().Ages
		if ages[AgeCurrent] != 4 || ages[Age24h] != 3 || ages[Age3d] != 2 || ages[Age7d] != 1 {
			t.Errorf("%s counts ages %v, want current 4, 24h 3, 3d 2, 7d 1", n.cfg.Name, ages)
		}
	}
	lyon, err := dialAdmin(t, nodes[3].Node).ListEndpoints(testCtx(t), &pb.ListEndpointsRequest{})
	if err != nil || len(lyon.GetEndpoints()) != 0 {
		t.Errorf("the lyon DP lists %v (%v): no endpoint of its site reported", lyon.GetEndpoints(), err)
	}
}

// Two install roots on one host are two endpoints (each its own id, kept
// in its root) with the same host name; a held endpoint shows held with
// the version held and that version's age; a failed first run, with
// nothing installed, shows failed and 7d, not current. A host name that
// is not printable is refused.
func TestEndpoints_InstallRootsHeldFailed(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	n := startNode(t, v, v.repo, func(c *Config) { c.Products = []string{"av"} })
	src, err := source.NewGRPC(n.GRPCAddr(), source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	root := t.TempDir()
	a, b, c := filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "c")
	update := func(dir string, trust *manifest.Trust) (*agent.Result, error) {
		cfg := agent.DefaultConfig()
		cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir, cfg.Hostname = []source.Source{src}, trust, "av", dir, "pc-1"
		return agent.Update(testCtx(t), cfg)
	}
	waitSerial := func(serial uint64) {
		testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("the DP holds serial %d", serial), func() bool {
			hv, err := n.cache.LatestVersion("av")
			return err == nil && hv.Serial == serial
		})
	}
	waitSerial(1)
	if _, err := update(a, v.trust); err != nil {
		t.Fatal(err)
	}
	v.publish(t, "av", "2", 2, smallProduct)
	waitSerial(2)
	for _, dir := range []string{a, b} {
		if res, err := update(dir, v.trust); err != nil || res.Serial != 2 {
			t.Fatalf("update %s: %v, %v", dir, res, err)
		}
	}
	if _, err := agent.Rollback(a, "av"); err != nil {
		t.Fatal(err)
	}
	if res, err := update(a, v.trust); err != nil || res.Status != agent.StatusHeld {
		t.Fatalf("update after rollback: %v, %v; want held", res, err)
	}
	other := newVendor(t) // a key the DP's documents are not signed with
	if _, err := update(c, other.trust); err == nil {
		t.Fatal("update with the wrong key succeeded")
	}

	resp, err := dialAdmin(t, n).ListEndpoints(testCtx(t), &pb.ListEndpointsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*pb.EndpointInfo{}
	for _, e := range resp.GetEndpoints() {
		got[e.GetStatus().GetId()] = e
	}
	byDir := map[string]*pb.EndpointInfo{}
	for _, dir := range []string{a, b, c} {
		id, err := agent.EndpointID(dir)
		if err != nil {
			t.Fatal(err)
		}
		if byDir[dir] = got[id]; byDir[dir] == nil {
			t.Fatalf("no endpoint %s (%s) in %v", id, dir, resp.GetEndpoints())
		}
		if h := byDir[dir].GetStatus().GetHostname(); h != "pc-1" {
			t.Errorf("%s: hostname %q, want pc-1", dir, h)
		}
	}
	if len(got) != 3 {
		t.Errorf("%d endpoints listed, want 3: %v", len(got), resp.GetEndpoints())
	}
	check := func(dir, result, version, age string) {
		t.Helper()
		e := byDir[dir]
		if st := e.GetStatus(); st.GetResult() != result || st.GetVersion() != version || e.GetAge() != age {
			t.Errorf("%s listed as %s %q age %s, want %s %q age %s", dir, st.GetResult(), st.GetVersion(), e.GetAge(), result, version, age)
		}
	}
	check(a, agent.StatusHeld, "1", AgeCurrent) // published moments before 2
	check(b, agent.StatusUpdated, "2", AgeCurrent)
	check(c, agent.StatusFailed, "", Age7d)

	err = src.ReportStatus(testCtx(t), source.Status{ID: "x", Hostname: "pc\x1b[2J", Product: "av", Result: "updated"})
	if !errors.Is(err, source.ErrInvalid) {
		t.Errorf("report with a terminal escape in the host name: %v, want InvalidArgument", err)
	}
}
