package node

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dpcache/dpcache/node/internal/catalog"
	"github.com/dpcache/dpcache/node/internal/ops"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// Age buckets, in order (see catalog.AgeBucket).
const (
	AgeCurrent = catalog.AgeCurrent
	Age24h     = catalog.Age24h
	Age3d      = catalog.Age3d
	Age7d      = catalog.Age7d
)

// AgeBucket returns the age bucket of an installed version lag behind the
// newest one (by publication time).
func AgeBucket(lag time.Duration) string { return catalog.AgeBucket(lag) }

// Endpoint reporting: agents report what they installed (ReportStatus,
// kept in the "endpoints" record bucket); AdminService.ListEndpoints lists
// the reports of the DP's whole site with how far each endpoint is behind.
//
// Age buckets (EndpointInfo.age, `dpcache endpoints`), by lag: how much
// older the installed version's publication time is than the newest
// version's that this DP knows for the product (held, fetched, or
// upstream's latest):
//
//	current  the newest version, or less than 24 hours behind it
//	24h      24 hours or more behind (less than 3 days)
//	3d       3 days or more behind (less than 7 days): "bases out of date"
//	7d       7 days or more behind: "bases obsolete"
//
// An installed serial the DP never saw a manifest of is dated by the
// oldest version it knows after it (so the lag shown is a lower bound); a
// serial at or above the newest the DP knows is current.
//
// The age is always that of the installed version, whatever the run's
// result: a failed run reports what stays installed, a held one the
// version held. An endpoint with nothing installed (a first run that
// failed: no version, serial 0) is 7d: it has no bases at all.

// localEndpoints returns the reports this DP keeps.
func (n *Node) localEndpoints() ([]*pb.EndpointStatus, error) {
	var out []*pb.EndpointStatus
	err := n.cache.EndpointReports(func(key string, value []byte) error {
		st := &pb.EndpointStatus{}
		if err := proto.Unmarshal(value, st); err != nil {
			n.log.Warn("ignoring an unreadable endpoint report", "key", key, "err", err)
			return nil
		}
		out = append(out, st)
		return nil
	})
	return out, err
}

// countEndpoints counts the site's endpoints (as ListEndpoints lists
// them: asking the site's other DPs, each for at most peerStatusTimeout)
// by age bucket and by the result of their last update; every bucket and
// result is present. It is Node.endpointCounts, for /metrics and the
// status page: every DP of a site reports the same figures, so aggregate
// them with max by site, not sum.
func (n *Node) countEndpoints() *ops.EndpointCounts {
	out := &ops.EndpointCounts{Ages: map[string]int{AgeCurrent: 0, Age24h: 0, Age3d: 0, Age7d: 0}, Results: map[string]int{}}
	for _, r := range ops.EndpointResults {
		out.Results[r] = 0
	}
	ctx, cancel := context.WithTimeout(n.bg, peerStatusTimeout)
	defer cancel()
	eps, err := n.listEndpoints(ctx, false, false)
	if err != nil {
		return out
	}
	for _, e := range eps {
		out.Ages[e.GetAge()]++
		if r := e.GetStatus().GetResult(); slices.Contains(ops.EndpointResults, r) {
			out.Results[r]++
		}
	}
	return out
}

// listEndpoints returns the endpoints of the DP's site (only those that
// reported to this DP with localOnly): one entry per endpoint and product,
// its newest report, with its age bucket as this DP sees it, sorted by
// product then endpoint id. With outdatedOnly, only those not current.
// DPs of the site that do not answer are left out (logged).
func (n *Node) listEndpoints(ctx context.Context, outdatedOnly, localOnly bool) ([]*pb.EndpointInfo, error) {
	all, err := n.localEndpoints()
	if err != nil {
		return nil, err
	}
	if !localOnly && n.gossip != nil {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, m := range n.gossip.Live(n.cfg.Site) {
			if m.Local || m.GRPCAddr == "" {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sts, err := n.askEndpoints(ctx, m.GRPCAddr)
				if err != nil {
					n.log.Warn("a DP of the site did not list its endpoints; they are left out", "peer", m.Name, "err", err)
					return
				}
				mu.Lock()
				all = append(all, sts...)
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	newest := map[string]*pb.EndpointStatus{}
	for _, st := range all {
		k := st.GetId() + "\x00" + st.GetProduct()
		if cur, ok := newest[k]; !ok || st.GetReported().AsTime().After(cur.GetReported().AsTime()) {
			newest[k] = st
		}
	}
	refs := n.catalog.AgeRefs()
	out := make([]*pb.EndpointInfo, 0, len(newest))
	for _, st := range newest {
		age := refs.Age(st.GetProduct(), st.GetSerial())
		if st.GetVersion() == "" && st.GetSerial() == 0 {
			age = Age7d // nothing installed
		}
		if outdatedOnly && age == AgeCurrent {
			continue
		}
		out = append(out, &pb.EndpointInfo{Status: st, Age: age})
	}
	slices.SortFunc(out, func(a, b *pb.EndpointInfo) int {
		return cmp.Or(cmp.Compare(a.GetStatus().GetProduct(), b.GetStatus().GetProduct()), cmp.Compare(a.GetStatus().GetId(), b.GetStatus().GetId()))
	})
	return out, nil
}

// askEndpoints asks a peer for the reports it keeps.
func (n *Node) askEndpoints(ctx context.Context, addr string) ([]*pb.EndpointStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, peerStatusTimeout)
	defer cancel()
	peer, err := n.peers.admin(addr)
	if err != nil {
		return nil, err
	}
	resp, err := peer.Endpoints(ctx, false, true)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.EndpointStatus, 0, len(resp.GetEndpoints()))
	for _, e := range resp.GetEndpoints() {
		if st := e.GetStatus(); st != nil {
			out = append(out, st)
		}
	}
	return out, nil
}

// ListEndpoints lists what the site's endpoints reported (see
// listEndpoints).
func (s *adminServer) ListEndpoints(ctx context.Context, req *pb.ListEndpointsRequest) (*pb.ListEndpointsResponse, error) {
	eps, err := s.n.listEndpoints(ctx, req.GetOutdatedOnly(), req.GetLocalOnly())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ListEndpointsResponse{Endpoints: eps}, nil
}
