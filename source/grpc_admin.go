package source

import (
	"context"
	"fmt"
	"io"
	"slices"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// A DP's AdminService, over the connection its DistributionService uses:
// the one admin client of the command line (status, endpoints, prefetch)
// and of a DP's fan-outs to its peers.

// Status returns the cluster as the DP sees it: its members, the versions
// each holds, the traffic counters. localOnly asks for the DP alone (what
// a peer's fan-out gathers).
func (g *GRPC) Status(ctx context.Context, localOnly bool) (*pb.GetStatusResponse, error) {
	resp, err := g.admin.GetStatus(ctx, &pb.GetStatusRequest{LocalOnly: localOnly})
	if err != nil {
		return nil, g.wrap("GetStatus", err)
	}
	return resp, nil
}

// Endpoints returns what the site's endpoints reported (localOnly: those
// that reported to this DP), only those behind the newest version when
// outdatedOnly.
func (g *GRPC) Endpoints(ctx context.Context, outdatedOnly, localOnly bool) (*pb.ListEndpointsResponse, error) {
	resp, err := g.admin.ListEndpoints(ctx, &pb.ListEndpointsRequest{OutdatedOnly: outdatedOnly, LocalOnly: localOnly})
	if err != nil {
		return nil, g.wrap("ListEndpoints", err)
	}
	return resp, nil
}

// Prefetch asks the DP to bring product up to date in its site now and
// returns the progress stream's receive function: messages until io.EOF
// once the DP ends the stream, or an error naming the DP.
func (g *GRPC) Prefetch(ctx context.Context, product string) (recv func() (*pb.PrefetchResponse, error), err error) {
	if _, err := LatestPath(product); err != nil {
		return nil, err
	}
	stream, err := g.admin.Prefetch(ctx, &pb.PrefetchRequest{Product: product})
	if err != nil {
		return nil, g.wrap("Prefetch", err)
	}
	return func() (*pb.PrefetchResponse, error) {
		m, err := stream.Recv()
		if err != nil && err != io.EOF {
			return nil, g.wrap("Prefetch", err)
		}
		return m, err
	}, nil
}

// Discover asks the first grpc(s):// source of srcs which DPs an endpoint
// of site should use and returns them, nearest first (see Listed),
// followed by the sources given that it did not list (each once). Without
// a DP among srcs it returns srcs and an error.
func Discover(ctx context.Context, srcs []Source, site string, opts Options) ([]Source, error) {
	var dp *GRPC
	for _, s := range srcs {
		if g, ok := s.(*GRPC); ok {
			dp = g
			break
		}
	}
	if dp == nil {
		return srcs, fmt.Errorf("no grpc:// or grpcs:// source to ask which DPs to use: %w", ErrInvalid)
	}
	listed, err := dp.Listed(ctx, site, opts, srcs)
	if err != nil {
		return srcs, err
	}
	return append(listed, Unlisted(srcs, listed)...), nil
}

// Listed asks the DP which DPs an endpoint of site should use and returns
// them, nearest first: each the source of known with its name (reused),
// or else a new source reached with the scheme of g and opts.
func (g *GRPC) Listed(ctx context.Context, site string, opts Options, known []Source) ([]Source, error) {
	dps, err := g.ListSources(ctx, site)
	if err != nil {
		return nil, err
	}
	byName := map[string]Source{}
	for _, s := range known {
		byName[s.String()] = s
	}
	var out, opened []Source
	for _, d := range dps {
		u := g.scheme + "://" + d.GRPCAddr
		if s, ok := byName[u]; ok {
			out = append(out, s)
			delete(byName, u) // each once
			continue
		}
		found, err := Parse(u, opts)
		if err != nil {
			for _, s := range opened {
				s.Close()
			}
			return nil, err
		}
		out, opened = append(out, found), append(opened, found)
	}
	return out, nil
}

// Unlisted returns the sources of srcs that are not in listed.
func Unlisted(srcs, listed []Source) []Source {
	var out []Source
	for _, s := range srcs {
		if !slices.Contains(listed, s) {
			out = append(out, s)
		}
	}
	return out
}
