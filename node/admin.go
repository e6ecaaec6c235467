package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/node/internal/ops"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// adminServer implements pb.AdminServiceServer; stateless, like
// distributionServer.
type adminServer struct {
	pb.UnimplementedAdminServiceServer
	n *Node
}

// peerStatusTimeout bounds asking one peer for its figures.
const peerStatusTimeout = 2 * time.Second

func (s *adminServer) GetStatus(ctx context.Context, req *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	local, err := s.n.localStatus()
	if err != nil {
		return nil, toStatus(err)
	}
	if req.GetLocalOnly() || s.n.gossip == nil {
		return &pb.GetStatusResponse{Members: []*pb.MemberStatus{local}, Traffic: local.GetTraffic()}, nil
	}
	members := s.n.gossip.Members()
	out := make([]*pb.MemberStatus, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		if m.Local {
			out[i] = local
			continue
		}
		out[i] = memberStatus(m)
		if m.State != gossip.StateAlive || m.GRPCAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if peer, err := s.n.askStatus(ctx, m.GRPCAddr); err == nil {
				out[i].Traffic, out[i].Cache = peer.GetTraffic(), peer.GetCache()
				out[i].StaleProducts, out[i].UpstreamFailingSince = peer.GetStaleProducts(), peer.GetUpstreamFailingSince()
			} else {
				s.n.log.Debug("peer did not report its status", "peer", m.Name, "err", err)
			}
		}()
	}
	wg.Wait()
	total := &pb.Traffic{}
	for _, m := range out {
		if t := m.GetTraffic(); t != nil {
			total.UpstreamBytes += t.GetUpstreamBytes()
			total.PeerBytes += t.GetPeerBytes()
			total.ServedBytes += t.GetServedBytes()
		}
	}
	return &pb.GetStatusResponse{Members: out, Traffic: total}, nil
}

// askStatus asks a peer for its own figures.
func (n *Node) askStatus(ctx context.Context, addr string) (*pb.MemberStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, peerStatusTimeout)
	defer cancel()
	peer, err := n.peers.admin(addr)
	if err != nil {
		return nil, err
	}
	resp, err := peer.Status(ctx, true)
	if err != nil {
		return nil, err
	}
	if len(resp.GetMembers()) != 1 {
		return nil, fmt.Errorf("peer %s answered its own status with %d members: %w", addr, len(resp.GetMembers()), ErrUnavailable)
	}
	return resp.GetMembers()[0], nil
}

func memberStatus(m gossip.Member) *pb.MemberStatus {
	ms := &pb.MemberStatus{Name: m.Name, Site: m.Site, GrpcAddress: m.GRPCAddr, HttpAddress: m.HTTPAddr, State: string(m.State)}
	products := make([]string, 0, len(m.Versions))
	for p := range m.Versions {
		products = append(products, p)
	}
	slices.Sort(products)
	for _, p := range products {
		ms.Versions = append(ms.Versions, &pb.ProductVersions{Product: p, Serials: slices.Clone(m.Versions[p])})
	}
	return ms
}

// localStatus describes this DP from its own cache and counters.
func (n *Node) localStatus() (*pb.MemberStatus, error) {
	self := n.self()
	ms := &pb.MemberStatus{Name: self.GetName(), Site: self.GetSite(), GrpcAddress: self.GetGrpcAddress(), HttpAddress: self.GetHttpAddress(), State: string(gossip.StateAlive)}
	products, err := n.cache.Products()
	if err != nil {
		return nil, err
	}
	for _, p := range products {
		vs, err := n.cache.Versions(p)
		if err != nil {
			return nil, err
		}
		pv := &pb.ProductVersions{Product: p}
		for _, v := range vs {
			pv.Serials = append(pv.Serials, v.Serial)
		}
		ms.Versions = append(ms.Versions, pv)
	}
	t := n.Traffic()
	ms.Traffic = &pb.Traffic{UpstreamBytes: uint64(t.UpstreamBytes), PeerBytes: uint64(t.PeerBytes), ServedBytes: uint64(t.ServedBytes)}
	st, err := n.cache.Stats()
	if err != nil {
		return nil, err
	}
	free, _ := ops.DiskFree(n.cfg.DataDir) // 0 when unknown
	ms.Cache = &pb.CacheUsage{Bytes: uint64(st.Bytes + st.PendingBytes), MaxBytes: uint64(n.cfg.CacheMax), Blobs: uint64(st.Blobs), FreeDiskBytes: free}
	ms.StaleProducts = slices.Sorted(maps.Keys(n.catalog.Stale()))
	if since, failing := n.upstreamFailing(); failing {
		ms.UpstreamFailingSince = timestamppb.New(since)
	}
	return ms, nil
}
