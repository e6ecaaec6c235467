package node

import (
	"errors"
	"math"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/catalog"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// readBlobsAhead is how many blobs past the one being sent a ReadBlobs
// request starts fetching, so that a batch of misses is not fetched from
// upstream one round trip at a time.
const readBlobsAhead = 8

// ReadBlobs sends each blob of the request in order through ReadBlob's
// path (a miss is fetched once for the site and cached), each opened by a
// BlobStart; a blob no source holds is announced not found and skipped.
func (s *distributionServer) ReadBlobs(req *pb.ReadBlobsRequest, stream grpc.ServerStreamingServer[pb.ReadBlobsResponse]) error {
	blobs := req.GetBlobs()
	if len(blobs) == 0 || len(blobs) > source.MaxBatchBlobs {
		return status.Errorf(codes.InvalidArgument, "blobs: %d given, want 1 to %d", len(blobs), source.MaxBatchBlobs)
	}
	for i, b := range blobs {
		if err := manifest.ValidDigest(b.GetSha256()); err != nil {
			return status.Errorf(codes.InvalidArgument, "blob %d: sha256 %q: %v", i, b.GetSha256(), err)
		}
		if b.GetOffset() > math.MaxInt64 {
			return status.Errorf(codes.InvalidArgument, "blob %d: offset %d: past any blob's end", i, b.GetOffset())
		}
	}
	ctx := stream.Context()
	fwd := req.GetForwarded()
	if p, v := req.GetProduct(), req.GetVersion(); p != "" || v != "" {
		if err := errors.Join(manifest.ValidName(p), manifest.ValidName(v)); err != nil {
			return status.Errorf(codes.InvalidArgument, "product %q, version %q: %v", p, v, err)
		}
		for _, b := range blobs {
			if _, known := s.n.catalog.BlobSize(b.GetSha256()); known || s.n.isChunked(b.GetSha256()) {
				continue
			}
			// A peer names the version: learn its blobs (verified) first.
			if _, _, err := s.n.catalog.ManifestDoc(catalog.WithForwarded(ctx, fwd), p, v); err != nil {
				s.n.log.Debug("version hint of a blobs request unusable", "product", p, "version", v, "err", err)
			}
			break
		}
	}
	ahead := 0 // blobs before it are being fetched or were tried
	for i, b := range blobs {
		for ; ahead < min(len(blobs), i+1+readBlobsAhead); ahead++ {
			if d := blobs[ahead].GetSha256(); !s.n.isChunked(d) {
				_, _, _ = s.n.fetcher.Acquire(ctx, d, fwd) // a failure shows when the blob's turn comes
			}
		}
		out := &blobsSender{stream: stream, index: uint32(i)}
		digest, off := b.GetSha256(), int64(b.GetOffset())
		var err error
		if f, ok := s.n.chunkedFile(digest); ok {
			err = s.n.fetcher.ReadFile(ctx, f, off, fwd, out)
		} else {
			err = s.n.fetcher.ReadBlob(ctx, digest, off, fwd, out)
		}
		switch {
		case err == nil:
			err = out.start() // a blob without bytes from its offset
		case !out.started && (errors.Is(err, ErrNotFound) || errors.Is(err, cache.ErrNotFound)):
			err = stream.Send(&pb.ReadBlobsResponse{Start: &pb.BlobStart{Index: uint32(i), NotFound: true}})
		}
		if err != nil {
			return toStatus(err)
		}
	}
	return nil
}

// blobsSender turns the messages of one blob's ReadBlob stream into those
// of a ReadBlobs stream: the first (the size) into a BlobStart, the
// others, bytes only, passed on as they are (the same wire field). The
// BlobStart waits for the blob's first bytes (or its end): a blob whose
// fetch fails before any byte is announced not found rather than started.
type blobsSender struct {
	stream  grpc.ServerStreamingServer[pb.ReadBlobsResponse]
	index   uint32
	size    uint64
	started bool // the BlobStart is sent
}

func (s *blobsSender) SendMsg(m any) error {
	c, ok := m.(*pb.BlobChunk)
	if !ok {
		return status.Errorf(codes.Internal, "blobs stream: unexpected message %T", m)
	}
	if c.Size != 0 {
		s.size, c.Size = c.Size, 0 // field 2 is the BlobStart here
	}
	if c.Data == nil || c.Data.Len() == 0 {
		if c.Data != nil {
			c.Data.Free()
		}
		return nil
	}
	if err := s.start(); err != nil {
		c.Data.Free()
		return err
	}
	return s.stream.SendMsg(c)
}

// start sends the blob's BlobStart, once.
func (s *blobsSender) start() error {
	if s.started {
		return nil
	}
	s.started = true
	return s.stream.Send(&pb.ReadBlobsResponse{Start: &pb.BlobStart{Index: s.index, Size: s.size}})
}
