package node

import (
	"context"
	"time"

	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/node/internal/ops"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source/failover"
)

// opsView is the DP as package ops reads it (ops.State for the metrics,
// ops.Cluster for the status page).
type opsView struct{ n *Node }

func (v opsView) Traffic() (upstream, peer, served int64) {
	t := v.n.Traffic()
	return t.UpstreamBytes, t.PeerBytes, t.ServedBytes
}

func (v opsView) FetchesInFlight() int { return len(v.n.fetcher.InFlight()) }

func (v opsView) Stale() map[string]time.Time { return v.n.catalog.Stale() }

func (v opsView) SourceStatus(name string) failover.SourceStatus { return v.n.sources.Status(name) }

func (v opsView) GossipDropped() uint64 {
	if v.n.gossip == nil {
		return 0
	}
	return v.n.gossip.Dropped()
}

func (v opsView) Members() []gossip.Member {
	if v.n.gossip == nil {
		return nil
	}
	return v.n.gossip.Members()
}

// EndpointCounts returns the site's endpoints by age bucket and result
// from Node.endpointCounts, or nil when endpoint reporting provides none.
func (v opsView) EndpointCounts() *ops.EndpointCounts {
	if v.n.endpointCounts == nil {
		return nil
	}
	return v.n.endpointCounts()
}

func (v opsView) Status(ctx context.Context) (*pb.GetStatusResponse, error) {
	return (&adminServer{n: v.n}).GetStatus(ctx, &pb.GetStatusRequest{})
}

func (v opsView) OutdatedEndpoints(ctx context.Context) ([]*pb.EndpointInfo, error) {
	resp, err := (&adminServer{n: v.n}).ListEndpoints(ctx, &pb.ListEndpointsRequest{OutdatedOnly: true})
	return resp.GetEndpoints(), err
}
