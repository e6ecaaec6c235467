package node

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// Loop detection between DPs that are each other's upstreams (directly or
// through a longer cycle). Every document or blob request a DP sends to a
// DP carries the chain of DP instances it came through (source.ViaKey);
// these interceptors check the chain a request brings, before its handler
// can join a shared fetch, and give the handler a context whose chain
// (source.Via) is the received one plus this DP's instance id, which
// catalog and fetch carry into the background fetches the request starts.
// A request that came back to this DP, or went through more than
// source.MaxHops DPs, is refused with FailedPrecondition: the request
// cannot succeed until an administrator fixes the --upstream lists, and
// the sending DP moves on to its next upstream at once. A malformed chain
// is InvalidArgument.

// viaMethods are the requests that may make a DP ask its upstream: the
// chain is checked on these only.
var viaMethods = map[string]bool{
	pb.DistributionService_GetLatest_FullMethodName:   true,
	pb.DistributionService_GetManifest_FullMethodName: true,
	pb.DistributionService_ReadBlob_FullMethodName:    true,
	pb.DistributionService_ReadBlobs_FullMethodName:   true,
}

// viaOptions returns the gRPC interceptors that check a request's chain of
// DP instances and pass it on, extended with self, in the handler's
// context.
func viaOptions(self string, log *slog.Logger) []grpc.ServerOption {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !viaMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		vctx, err := checkVia(ctx, self)
		if err != nil {
			return nil, refuseVia(ctx, log, info.FullMethod, err)
		}
		ctx = vctx
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !viaMethods[info.FullMethod] {
			return handler(srv, ss)
		}
		ctx, err := checkVia(ss.Context(), self)
		if errors.Is(err, source.ErrLoop) {
			// Refused once the request is read: a partial read
			// (AvailableOnly) neither fetches nor waits, so it cannot
			// loop, and a peer asks one of the DPs in its chain.
			return handler(srv, &viaStream{ServerStream: ss, ctx: ss.Context(), loop: func() error { return refuseVia(ss.Context(), log, info.FullMethod, err) }})
		}
		if err != nil {
			return refuseVia(ss.Context(), log, info.FullMethod, err)
		}
		return handler(srv, &viaStream{ServerStream: ss, ctx: ctx})
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

// checkVia parses the chain of DP instances in ctx's request metadata and
// returns ctx with the chain to send on (the received one, then self) and
// the download task's mark (source.BackgroundKey), or an error wrapping
// source.ErrInvalid or source.ErrLoop.
func checkVia(ctx context.Context, self string) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	chain, err := source.ParseVia(md.Get(source.ViaKey))
	if err != nil {
		return ctx, err
	}
	if err := source.CheckLoop(chain, self); err != nil {
		return ctx, err
	}
	if source.ParseBackground(md.Get(source.BackgroundKey)) {
		// A peer DP's download task: the fetch upstream it makes this DP
		// do is its site's download, under this DP's --upstream-rate.
		ctx = source.WithBackground(ctx, backgroundAlways)
	}
	return source.WithVia(ctx, append(chain, self)), nil
}

// backgroundAlways is the rate-limit flag of a peer's download-task
// requests: always limited (nothing here clears it).
var backgroundAlways = func() *atomic.Bool {
	var b atomic.Bool
	b.Store(true)
	return &b
}()

// refuseVia turns checkVia's error into the request's status, logging a
// loop (an administrator must fix the --upstream lists).
func refuseVia(ctx context.Context, log *slog.Logger, method string, err error) error {
	if errors.Is(err, source.ErrLoop) {
		var from string
		if p, ok := peer.FromContext(ctx); ok {
			from = p.Addr.String()
		}
		log.Warn("refused a request from a DP: it came through a cycle of upstream DPs", "request", method, "from", from, "err", err)
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

// viaStream is a ReadBlob stream whose context carries the chain of DP
// instances; loop, when set, refuses a received request that is not a
// partial read.
type viaStream struct {
	grpc.ServerStream
	ctx  context.Context
	loop func() error
}

func (s *viaStream) Context() context.Context { return s.ctx }

func (s *viaStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if r, ok := m.(*pb.ReadBlobRequest); s.loop != nil && !(ok && r.GetAvailableOnly()) {
		return s.loop()
	}
	return nil
}
