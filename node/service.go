package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// distributionServer implements pb.DistributionServiceServer. It holds no
// state of its own; the Node's fields are guarded by Node.mu.
type distributionServer struct {
	pb.UnimplementedDistributionServiceServer
	n *Node
}

func (s *distributionServer) GetLatest(ctx context.Context, req *pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
	signed, err := s.n.latest(ctx, req.GetProduct())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetLatestResponse{Latest: &pb.SignedDocument{Data: signed.Data, Signature: signed.Signature}}, nil
}

func (s *distributionServer) GetManifest(ctx context.Context, req *pb.GetManifestRequest) (*pb.GetManifestResponse, error) {
	signed, _, err := s.n.manifestDoc(ctx, req.GetProduct(), req.GetVersion())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetManifestResponse{Manifest: &pb.SignedDocument{Data: signed.Data, Signature: signed.Signature}}, nil
}

func (s *distributionServer) ReadBlob(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
	digest := req.GetSha256()
	if err := manifest.ValidDigest(digest); err != nil {
		return status.Errorf(codes.InvalidArgument, "sha256 %q: %v", digest, err)
	}
	if err := s.n.readBlob(stream.Context(), digest, int64(req.GetOffset()), stream); err != nil {
		return toStatus(err)
	}
	return nil
}

func (s *distributionServer) ReportStatus(ctx context.Context, req *pb.ReportStatusRequest) (*pb.ReportStatusResponse, error) {
	st := req.GetStatus()
	if st == nil || st.GetId() == "" || st.GetProduct() == "" {
		return nil, status.Error(codes.InvalidArgument, "status: id and product are required")
	}
	if err := manifest.ValidName(st.GetProduct()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "status: product: %v", err)
	}
	if len(st.GetId()) > 256 || len(st.GetHostname()) > 256 || len(st.GetError()) > 4096 {
		return nil, status.Error(codes.InvalidArgument, "status: id, hostname or error too long")
	}
	st = proto.Clone(st).(*pb.EndpointStatus)
	if st.Reported == nil {
		st.Reported = timestampNow()
	}
	b, err := proto.Marshal(st)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "status: %v", err)
	}
	if err := s.n.cache.PutRecord(endpointsBucket, st.GetId()+"/"+st.GetProduct(), b); err != nil {
		return nil, toStatus(err)
	}
	s.n.log.Debug("endpoint reported", "endpoint", st.GetId(), "product", st.GetProduct(), "version", st.GetVersion(), "result", st.GetResult())
	return &pb.ReportStatusResponse{}, nil
}

// endpointsBucket holds the last report of each endpoint and product.
const endpointsBucket = "endpoints"

// blobSender is the part of a ReadBlob stream readBlob uses.
type blobSender interface {
	SendMsg(m any) error
}

// readBlob streams digest from off: from the cache when whole, else from
// the in-flight fetch as its bytes are stored.
func (n *Node) readBlob(ctx context.Context, digest string, off int64, stream blobSender) error {
	f, err := n.acquire(digest)
	if err != nil {
		return err
	}
	bufs := n.pool.stream()
	defer bufs.done()
	first := true
	if f == nil {
		size, err := n.cache.Stat(digest)
		if err != nil {
			return fmt.Errorf("blob %s: %w", digest, err)
		}
		return n.sendRange(ctx, digest, off, size, size, stream, bufs, &first, false)
	}
	if off > f.size {
		return fmt.Errorf("blob %s: offset %d past its size %d: %w", digest, off, f.size, ErrInvalid)
	}
	// Answer at once with the size: the caller learns the blob exists while
	// the first bytes are still on their way from upstream.
	if err := stream.SendMsg(&pb.BlobChunk{Size: uint64(f.size)}); err != nil {
		return err
	}
	first = false
	pos := off
	startGen, _, _, _, _ := f.state()
	for {
		gen, flushed, done, ferr, changed := f.state()
		if gen != startGen {
			if pos > off {
				return fmt.Errorf("blob %s: %w: upstream sent corrupt bytes, which were discarded; retry", digest, ErrDataLoss)
			}
			startGen = gen
		}
		if done {
			if ferr != nil {
				return ferr
			}
			// Whole now: the rest comes from the cache.
			return n.sendRange(ctx, digest, pos, f.size, f.size, stream, bufs, &first, false)
		}
		if pos < flushed {
			if err := n.sendRange(ctx, digest, pos, flushed, f.size, stream, bufs, &first, true); err != nil {
				if errors.Is(err, cache.ErrNotFound) {
					// The blob became whole (or was discarded) meanwhile:
					// look again.
					continue
				}
				return err
			}
			pos = flushed
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendRange sends bytes [from, to) of digest, read from the whole blob or,
// with pending, from the chunks of an ingest in progress.
func (n *Node) sendRange(ctx context.Context, digest string, from, to, size int64, stream blobSender, bufs *streamBuffers, first *bool, pending bool) error {
	if from > to {
		return fmt.Errorf("blob %s: offset %d past its size %d: %w", digest, from, size, ErrInvalid)
	}
	if *first && from == to {
		*first = false
		return stream.SendMsg(&pb.BlobChunk{Size: uint64(size)})
	}
	chunk := int64(n.cfg.ServeChunk)
	for pos := from; pos < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		l := min(chunk, to-pos)
		buf, err := bufs.get(ctx, int(l))
		if err != nil {
			return err
		}
		var nr int
		if pending {
			nr, err = n.cache.ReadPendingAt(digest, *buf, pos)
		} else {
			nr, err = n.cache.ReadAt(digest, *buf, pos)
		}
		if nr < int(l) && err == nil {
			err = fmt.Errorf("blob %s: short read at %d: %w", digest, pos, ErrDataLoss)
		}
		if err != nil && !(nr == int(l)) {
			bufs.Put(buf)
			return err
		}
		msg := &pb.BlobChunk{Data: mem.NewBuffer(buf, bufs)}
		if *first {
			msg.Size = uint64(size)
			*first = false
		}
		if err := stream.SendMsg(msg); err != nil {
			return err
		}
		n.traffic.served.Add(l)
		pos += l
	}
	return nil
}

// toStatus turns an error into a gRPC status at the RPC edge.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, cache.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, ErrDataLoss), errors.Is(err, cache.ErrDigestMismatch):
		code = codes.DataLoss
	case errors.Is(err, ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

func timestampNow() *timestamppb.Timestamp { return timestamppb.New(time.Now()) }
