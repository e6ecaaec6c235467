package node

import (
	"context"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dpcache/dpcache/node/internal/catalog"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// Window is a daily period, in local time, during which the download task
// may start fetching from upstream. The zero Window is always open. From and
// To are offsets from midnight, [0, 24h); From > To crosses midnight
// ("22:00-06:00").
type Window = catalog.Window

// ParseWindow parses "HH:MM-HH:MM" (local time; the end is excluded; an
// end before the start crosses midnight, as in "22:00-06:00"). "" is the
// zero Window (always open).
func ParseWindow(s string) (Window, error) { return catalog.ParseWindow(s) }

// The download task ("download updates to the repository"): the products
// of Config.Products are kept current before any endpoint asks, checked at
// every Config.Refresh (plus up to 10% at random) and fetched inside
// Config.UpstreamWindow when one is set. AdminService.Prefetch runs it now
// for one product and streams the progress of the version completion.

// newUpstreamLimiter returns the token bucket of Config.UpstreamRate, or
// nil when unlimited. Its burst (the largest read taken at once) is an
// eighth of a second's budget, between 4 KiB and 256 KiB.
func newUpstreamLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	burst := int(min(max(bytesPerSecond/8, 4<<10), 256<<10))
	return rate.NewLimiter(rate.Limit(bytesPerSecond), burst)
}

// waitJoined returns once the DP sees another member of its cluster, or
// after max, or at once when it has no cluster to join.
func (n *Node) waitJoined(ctx context.Context, max time.Duration) {
	if n.gossip == nil || len(n.cfg.Join) == 0 {
		return
	}
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	for {
		changed := n.gossip.Changed()
		if len(n.gossip.Live("")) > 1 {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// prefetchTick is how often Prefetch looks at a completion's progress; a
// message is sent only when it changed.
const prefetchTick = 200 * time.Millisecond

// Prefetch runs the download task for a product now and streams the
// progress of its newest version until it is held whole (done set).
func (s *adminServer) Prefetch(req *pb.PrefetchRequest, stream grpc.ServerStreamingServer[pb.PrefetchResponse]) error {
	n := s.n
	ctx := stream.Context()
	j, held, err := n.catalog.PrefetchNow(ctx, req.GetProduct())
	if err != nil {
		return toStatus(err)
	}
	if j == nil {
		return stream.Send(&pb.PrefetchResponse{
			Product: held.Product, Version: held.Version, Serial: held.Serial,
			BlobsTotal: uint64(len(held.Blobs)), BlobsDone: uint64(len(held.Blobs)),
			BytesTotal: uint64(held.Size), BytesDone: uint64(held.Size), Done: true,
		})
	}
	tick := time.NewTicker(prefetchTick)
	defer tick.Stop()
	var last *pb.PrefetchResponse
	for {
		p := n.catalog.Progress(j)
		if !proto.Equal(p, last) {
			if err := stream.Send(p); err != nil {
				return err
			}
			last = p
		}
		select {
		case <-j.Done():
			if j.Err() != nil {
				return toStatus(j.Err())
			}
			v, err := n.cache.LatestVersion(j.Product())
			if err != nil || v.Serial < j.Serial() {
				return status.Errorf(codes.Unavailable, "%s %s: the completion ended but the version is not held whole (%v); run prefetch again", j.Product(), j.Version(), err)
			}
			p := n.catalog.Progress(j)
			if p.BlobsTotal == 0 { // completed by an earlier job
				p.BlobsTotal, p.BlobsDone = uint64(len(v.Blobs)), uint64(len(v.Blobs))
				p.BytesTotal, p.BytesDone = uint64(v.Size), uint64(v.Size)
			}
			p.Done = true
			return stream.Send(p)
		case <-tick.C:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
