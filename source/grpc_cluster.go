package source

import (
	"context"
	"errors"
	"fmt"
	"io"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// DP is a distribution point as ListSources returns it.
type DP struct {
	Name, Site, GRPCAddr, HTTPAddr string
}

// ListSources asks the DP which DPs an endpoint of site should use, nearest
// first (its site's live DPs, least busy first, then the other sites').
func (g *GRPC) ListSources(ctx context.Context, site string) ([]DP, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	resp, err := g.client.ListSources(ctx, &pb.ListSourcesRequest{Site: site})
	if err != nil {
		return nil, g.wrap("ListSources", err)
	}
	out := make([]DP, 0, len(resp.GetSources()))
	for _, s := range resp.GetSources() {
		out = append(out, DP{Name: s.GetName(), Site: s.GetSite(), GRPCAddr: s.GetGrpcAddress(), HTTPAddr: s.GetHttpAddress()})
	}
	return out, nil
}

// WatchLatest streams the product's latest.json (with its signature) now
// and each time the DP holds a newer version whole, until ctx ends or the
// stream breaks; the channel is then closed, and wait returns why (nil when
// ctx ended). The caller verifies each document.
func (g *GRPC) WatchLatest(ctx context.Context, product string) (updates <-chan Signed, wait func() error, err error) {
	if _, err := LatestPath(product); err != nil {
		return nil, nil, err
	}
	stream, serr := g.client.WatchLatest(ctx, &pb.WatchLatestRequest{Product: product})
	if serr != nil {
		return nil, nil, g.wrap("WatchLatest "+product, serr)
	}
	out := make(chan Signed)
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, io.EOF) {
					werr = g.wrap("WatchLatest "+product, err)
				} else if ctx.Err() == nil {
					werr = fmt.Errorf("%s: WatchLatest %s: the DP ended the stream: %w", g, product, ErrUnavailable)
				}
				return
			}
			select {
			case out <- Signed{Data: resp.GetLatest().GetData(), Signature: resp.GetLatest().GetSignature(), Source: g.String()}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, func() error { <-done; return werr }, nil
}
