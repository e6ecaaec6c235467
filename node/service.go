package node

import (
	"context"
	"errors"
	"math"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/catalog"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// distributionServer implements pb.DistributionServiceServer. It holds no
// state of its own; the Node's fields are guarded by Node.mu.
type distributionServer struct {
	pb.UnimplementedDistributionServiceServer
	n *Node
}

func (s *distributionServer) GetLatest(ctx context.Context, req *pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
	signed, err := s.n.catalog.Latest(catalog.WithForwarded(ctx, req.GetForwarded()), req.GetProduct())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetLatestResponse{Latest: &pb.SignedDocument{Data: signed.Data, Signature: signed.Signature}}, nil
}

func (s *distributionServer) GetManifest(ctx context.Context, req *pb.GetManifestRequest) (*pb.GetManifestResponse, error) {
	signed, _, err := s.n.catalog.ManifestDoc(catalog.WithForwarded(ctx, req.GetForwarded()), req.GetProduct(), req.GetVersion())
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
	if p, v := req.GetProduct(), req.GetVersion(); p != "" && v != "" {
		if _, known := s.n.catalog.BlobSize(digest); !known && !s.n.isChunked(digest) {
			// A peer names the version: learn its blobs (verified) first.
			if _, _, err := s.n.catalog.ManifestDoc(catalog.WithForwarded(stream.Context(), req.GetForwarded()), p, v); err != nil {
				s.n.log.Debug("version hint of a blob request unusable", "product", p, "version", v, "err", err)
			}
		}
	}
	if req.GetOffset() > math.MaxInt64 {
		return status.Errorf(codes.InvalidArgument, "offset %d: past any blob's end", req.GetOffset())
	}
	if f, ok := s.n.chunkedFile(digest); ok && !req.GetAvailableOnly() {
		// The repository holds only its chunks: assemble them.
		return toStatus(s.n.fetcher.ReadFile(stream.Context(), f, int64(req.GetOffset()), req.GetForwarded(), stream))
	}
	read := s.n.fetcher.ReadBlob
	if req.GetAvailableOnly() {
		read = s.n.fetcher.ReadAvailable
	}
	if err := read(stream.Context(), digest, int64(req.GetOffset()), req.GetForwarded(), stream); err != nil {
		return toStatus(err)
	}
	return nil
}

func (s *distributionServer) ListSources(ctx context.Context, req *pb.ListSourcesRequest) (*pb.ListSourcesResponse, error) {
	return &pb.ListSourcesResponse{Sources: s.n.listSources(req.GetSite())}, nil
}

func (s *distributionServer) WatchLatest(req *pb.WatchLatestRequest, stream grpc.ServerStreamingServer[pb.WatchLatestResponse]) error {
	product := req.GetProduct()
	if err := manifest.ValidName(product); err != nil {
		return status.Errorf(codes.InvalidArgument, "product %q: %v", product, err)
	}
	s.n.catalog.AddProduct(product)
	ctx := stream.Context()
	var sent uint64
	for {
		changed := s.n.catalog.VersionWatch(product)
		v, err := s.n.cache.LatestVersion(product)
		if err == nil && v.Serial > sent {
			data, sig, err := s.n.cache.Document(catalog.LatestDocKey(product, v.Version))
			if err != nil {
				return toStatus(err)
			}
			if err := stream.Send(&pb.WatchLatestResponse{Latest: &pb.SignedDocument{Data: data, Signature: sig}}); err != nil {
				return err
			}
			sent = v.Serial
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		case <-s.n.bg.Done():
			return status.Error(codes.Unavailable, "the DP is shutting down")
		}
	}
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
	if strings.ContainsFunc(st.GetId(), func(r rune) bool { return r == '/' || !unicode.IsPrint(r) }) {
		return nil, status.Errorf(codes.InvalidArgument, "status: id %q has a '/' or a character that is not printable", st.GetId())
	}
	// Shown on the status page and by `dpcache endpoints`: printable only.
	if strings.ContainsFunc(st.GetHostname(), func(r rune) bool { return !unicode.IsPrint(r) }) {
		return nil, status.Errorf(codes.InvalidArgument, "status: hostname %q has a character that is not printable", st.GetHostname())
	}
	st = proto.Clone(st).(*pb.EndpointStatus)
	// The endpoint's clock decides nothing: a report from the future
	// would win every merge of the site's records for good.
	if r := st.GetReported(); r == nil || r.AsTime().After(time.Now().Add(maxReportSkew)) {
		st.Reported = timestampNow()
	}
	if st.Site == "" {
		st.Site = s.n.cfg.Site // an endpoint that does not know its site is in the DP's
	}
	b, err := proto.Marshal(st)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "status: %v", err)
	}
	if err := s.n.cache.PutEndpointReport(st.GetId(), st.GetProduct(), b, maxEndpointReports); err != nil {
		if errors.Is(err, cache.ErrFull) {
			return nil, status.Errorf(codes.ResourceExhausted, "status: this DP keeps %d endpoint reports and has no room for %s; older installations' reports stay", maxEndpointReports, st.GetId())
		}
		return nil, toStatus(err)
	}
	s.n.log.Debug("endpoint reported", "endpoint", st.GetId(), "product", st.GetProduct(), "version", st.GetVersion(), "result", st.GetResult())
	return &pb.ReportStatusResponse{}, nil
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

// maxEndpointReports bounds the endpoint/product reports a DP keeps: ten
// times the endpoints a DP is sized for.
const maxEndpointReports = 100_000

// maxReportSkew is how far in the future a report's time may be before the
// DP's own clock replaces it.
const maxReportSkew = 5 * time.Minute

func timestampNow() *timestamppb.Timestamp { return timestamppb.New(time.Now()) }
