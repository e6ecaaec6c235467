package source

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// DialOptions are the options dpcache uses to dial a distribution point
// over plain gRPC (grpc://).
func DialOptions() []grpc.DialOption {
	return pb.DialOptions(insecure.NewCredentials())
}

// leanReadBuffer is a connection's read buffer with Options.LeanConns.
const leanReadBuffer = 64 << 10

// GRPC is a distribution point reached over gRPC (grpc://) or gRPC over TLS
// (grpcs://).
type GRPC struct {
	addr      string
	scheme    string // "grpc" or "grpcs"
	conn      *grpc.ClientConn
	client    pb.DistributionServiceClient
	admin     pb.AdminServiceClient // over the same connection
	timeout   time.Duration
	trust     string // what TLS trusts, for certificate errors
	forwarded bool
	available bool   // AvailableOnly: ask for the bytes the DP holds now
	product   string // ForVersion: the version hint sent with blob reads
	version   string
}

// NewGRPC returns a Source for the DP at addr (host:port), over plain gRPC.
// It does not connect until first used.
func NewGRPC(addr string, opts Options) (*GRPC, error) {
	return newGRPC("grpc", addr, opts.withDefaults(), insecure.NewCredentials())
}

// NewGRPCTLS returns a Source for the DP at addr (host:port) over gRPC with
// TLS (grpcs://): the DP's certificate must be valid for the host and
// signed by a CA of the system roots or of opts.CAFile (or opts.TLSConfig's
// roots). It reads the CA file now; it does not connect until first used.
func NewGRPCTLS(addr string, opts Options) (*GRPC, error) {
	opts = opts.withDefaults()
	cfg, err := opts.tlsConfig()
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return newGRPC("grpcs", addr, opts, credentials.NewTLS(cfg))
}

func newGRPC(scheme, addr string, opts Options, creds credentials.TransportCredentials) (*GRPC, error) {
	dopts := pb.DialOptions(creds)
	if opts.LeanConns {
		dopts = append(dopts, grpc.WithReadBufferSize(leanReadBuffer), grpc.WithSharedWriteBuffer(true))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, dopts...)
	if err != nil {
		return nil, fmt.Errorf("source %s://%s: %w: %v", scheme, addr, ErrBadURL, err)
	}
	return &GRPC{addr: addr, scheme: scheme, conn: conn, client: pb.NewDistributionServiceClient(conn),
		admin: pb.NewAdminServiceClient(conn), timeout: opts.Timeout, trust: opts.trustDescription()}, nil
}

// Forwarded returns a copy of g whose requests carry the forwarded mark: a
// DP asking a peer on behalf of someone else uses it, and the peer never
// forwards such a request again.
func (g *GRPC) Forwarded() *GRPC {
	c := *g
	c.forwarded = true
	return &c
}

// AvailableOnly returns a copy of g whose blob reads carry the forwarded
// mark and ask for only the bytes the DP holds now (whole or still
// arriving): the stream then ends early, with an io.ErrUnexpectedEOF read
// error, where the DP's bytes end. A DP taking over a fetch uses it to copy
// what its peers already have.
func (g *GRPC) AvailableOnly() *GRPC {
	c := *g
	c.forwarded, c.available = true, true
	return &c
}

// ForVersion returns a copy of g whose blob reads name the version the blob
// belongs to, so that a DP that has not seen that version's manifest yet
// can fetch it first.
func (g *GRPC) ForVersion(product, version string) *GRPC {
	c := *g
	c.product, c.version = product, version
	return &c
}

// String implements Source.
func (g *GRPC) String() string { return g.scheme + "://" + g.addr }

// Close implements Source.
func (g *GRPC) Close() error {
	if g.forwarded || g.available || g.product != "" {
		return nil // the original owns the connection
	}
	return g.conn.Close()
}

// Latest implements Source.
func (g *GRPC) Latest(ctx context.Context, product string) (Signed, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	resp, err := g.client.GetLatest(g.outgoing(ctx), &pb.GetLatestRequest{Product: product, Forwarded: g.forwarded})
	if err != nil {
		return Signed{}, g.wrap(manifest.LatestPath(product), err)
	}
	return Signed{Data: resp.GetLatest().GetData(), Signature: resp.GetLatest().GetSignature(), Source: g.String()}, nil
}

// Manifest implements Source.
func (g *GRPC) Manifest(ctx context.Context, product, version string) (Signed, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	resp, err := g.client.GetManifest(g.outgoing(ctx), &pb.GetManifestRequest{Product: product, Version: version, Forwarded: g.forwarded})
	if err != nil {
		return Signed{}, g.wrap(manifest.ManifestPath(product, version), err)
	}
	return Signed{Data: resp.GetManifest().GetData(), Signature: resp.GetManifest().GetSignature(), Source: g.String()}, nil
}

// Blob implements Source. The first message is awaited within the source's
// timeout; after that the stream runs as long as bytes keep coming.
func (g *GRPC) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	rel, err := BlobPath(digest)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &grpcBlob{g: g, rel: rel, cancel: cancel, off: offset}
	// Open the stream and wait for the first message (or the error) within
	// the source's timeout, so that a silent DP or a missing blob is
	// reported by Blob, not by the first Read.
	first := make(chan error, 1)
	go func() {
		stream, err := g.client.ReadBlob(g.outgoing(ctx), &pb.ReadBlobRequest{Sha256: digest, Offset: uint64(offset), Forwarded: g.forwarded, AvailableOnly: g.available, Product: g.product, Version: g.version})
		if err == nil {
			r.stream = stream
			err = stream.RecvMsg(&r.msg)
		}
		first <- err
	}()
	t := time.NewTimer(g.timeout)
	defer t.Stop()
	select {
	case err = <-first:
	case <-t.C:
		cancel()
		<-first
		r.msg.Data.Free()
		return nil, fmt.Errorf("%s: %s: no answer within %v: %w", g, rel, g.timeout, ErrUnavailable)
	}
	if err == io.EOF {
		r.eof = true
	} else if err != nil {
		cancel()
		return nil, g.wrap(rel, err)
	}
	r.size = int64(r.msg.Size)
	return r, nil
}

// grpcBlob adapts a ReadBlob stream to io.Reader. Messages are received as
// references to the transport's buffers (pb.BlobFrames): WriteTo hands them
// to the writer without copying.
type grpcBlob struct {
	g      *GRPC
	rel    string
	stream grpc.ServerStreamingClient[pb.ReadBlobResponse]
	cancel context.CancelFunc
	msg    pb.BlobFrames // msg.Data[0][at:] is the unread part
	at     int
	off    int64 // blob offset of the next byte to deliver
	size   int64 // total blob size announced by the server, 0 if unknown
	eof    bool
}

// Size returns the blob's total size as announced by the DP, or 0.
func (r *grpcBlob) Size() int64 { return r.size }

// next makes sure unread bytes are at hand, receiving the next message when
// needed; false at the end of the stream.
func (r *grpcBlob) next() (bool, error) {
	for {
		for len(r.msg.Data) > 0 && r.at >= r.msg.Data[0].Len() {
			r.msg.Data[0].Free()
			r.msg.Data, r.at = r.msg.Data[1:], 0
		}
		if len(r.msg.Data) > 0 {
			return true, nil
		}
		if r.eof {
			return false, r.checkEnd()
		}
		if err := r.stream.RecvMsg(&r.msg); err != nil {
			if err == io.EOF {
				r.eof = true
				return false, r.checkEnd()
			}
			return false, r.g.wrap(r.rel, err)
		}
		r.at = 0
	}
}

func (r *grpcBlob) Read(p []byte) (int, error) {
	ok, err := r.next()
	if !ok {
		if err == nil {
			err = io.EOF
		}
		return 0, err
	}
	n := copy(p, r.msg.Data[0].ReadOnlyData()[r.at:])
	r.at += n
	r.off += int64(n)
	return n, nil
}

// WriteTo lets io.Copy take the transport's buffers without an extra copy.
func (r *grpcBlob) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		ok, err := r.next()
		if !ok {
			return total, err
		}
		n, err := w.Write(r.msg.Data[0].ReadOnlyData()[r.at:])
		total += int64(n)
		r.at += n
		r.off += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// checkEnd turns a clean end of stream before the announced size into an
// error: a DP that stops early must never yield a silently short blob.
func (r *grpcBlob) checkEnd() error {
	if r.size > 0 && r.off < r.size {
		if r.g.available {
			return fmt.Errorf("%s: %s: %w: it ended at byte %d of %d: %w", r.g, r.rel, ErrPartial, r.off, r.size, io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("%s: %s: stream ended at byte %d of %d: %w", r.g, r.rel, r.off, r.size, io.ErrUnexpectedEOF)
	}
	return nil
}

func (r *grpcBlob) Close() error {
	r.cancel()
	r.msg.Data.Free()
	r.msg.Data = nil
	return nil
}

// ReportStatus implements Reporter.
func (g *GRPC) ReportStatus(ctx context.Context, st Status) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	_, err := g.client.ReportStatus(ctx, &pb.ReportStatusRequest{Status: &pb.EndpointStatus{
		Id: st.ID, Hostname: st.Hostname, Site: st.Site, Product: st.Product,
		Version: st.Version, Serial: st.Serial, Result: st.Result, Error: st.Error,
		Reported: timestamppb.New(st.Reported),
	}})
	if err != nil {
		return g.wrap("ReportStatus", err)
	}
	return nil
}

// outgoing adds to ctx's request metadata the chain of DP instances its
// work came through (see WithVia), so that a DP the request comes back to
// refuses it. Partial reads (AvailableOnly) carry none: they neither fetch
// nor wait, so they cannot loop, and the peer they ask is often in the
// chain (it fetches the blob this DP serves it). The download task's
// requests are marked as such (see WithBackground).
func (g *GRPC) outgoing(ctx context.Context) context.Context {
	if IsBackground(ctx) {
		ctx = metadata.AppendToOutgoingContext(ctx, BackgroundKey, "1")
	}
	if via := Via(ctx); len(via) > 0 && !g.available {
		return metadata.AppendToOutgoingContext(ctx, ViaKey, FormatVia(via))
	}
	return ctx
}

// wrap maps a gRPC status to this package's sentinels, naming the source.
func (g *GRPC) wrap(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s: %s: %w: %v", g, what, ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %s: %w", g, what, err)
	}
	var sentinel error
	switch st.Code() {
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.DataLoss:
		sentinel = ErrDataLoss
	case codes.InvalidArgument:
		sentinel = ErrInvalid
	case codes.FailedPrecondition:
		// The only precondition a DP checks (see CheckLoop); its message
		// names the loop.
		return fmt.Errorf("%s: %s: %w", g, what, loopError(st.Message()))
	case codes.Unauthenticated, codes.PermissionDenied:
		// The DP's authorization (a certificate's role or name): said
		// with the code, which scripts and logs search for.
		return fmt.Errorf("%s: %s: %w (%s): %s", g, what, ErrRefused, st.Code(), st.Message())
	default:
		sentinel = ErrUnavailable
	}
	if cause, refused, ok := g.tlsCause(st.Message()); ok {
		if refused {
			return fmt.Errorf("%s: %s: %w (Unauthenticated): %s", g, what, ErrRefused, cause)
		}
		return fmt.Errorf("%s: %s: %w: %s", g, what, sentinel, cause)
	}
	return fmt.Errorf("%s: %s: %w: %s", g, what, sentinel, transportCause(st.Message()))
}

// tlsCause says in a sentence why a TLS handshake with the DP failed,
// from grpc-go's message, and whether the DP refused this client's
// certificate; ok is false when the message is not about TLS.
func (g *GRPC) tlsCause(msg string) (cause string, refused, ok bool) {
	switch {
	case strings.Contains(msg, "tls: certificate required"):
		return "the DP requires a client certificate signed by its --client-ca; give --cert and --key", true, true
	case strings.Contains(msg, "remote error: tls: expired certificate"):
		return "the DP refused this client certificate: it has expired; issue a new one", true, true
	case strings.Contains(msg, "remote error: tls: unknown certificate authority"), strings.Contains(msg, "remote error: tls: bad certificate"):
		return "the DP refused this client certificate: it is not signed by the DP's --client-ca", true, true
	case strings.Contains(msg, "x509: certificate is valid for"), strings.Contains(msg, "x509: certificate is not valid for any names"):
		host, _, _ := strings.Cut(g.addr, ":")
		return "the DP's TLS certificate does not name " + host + " (issue it with --host " + host + ")", false, true
	case strings.Contains(msg, "x509: "), strings.Contains(msg, "failed to verify certificate"):
		return "the DP's TLS certificate is not signed by a CA trusted here (" + g.trust + ")", false, true
	case g.scheme == "grpc" && strings.Contains(msg, "error reading server preface: EOF"):
		return "the DP closed the connection at once: if it runs TLS (--tls-cert), use grpcs://", false, true
	case strings.Contains(msg, "the server's certificate ("):
		return "the server is not a DP: " + strings.TrimSuffix(msg[strings.Index(msg, "the server's certificate ("):], `"`), false, true
	}
	return "", false, false
}

// transportCause shortens grpc-go's message for a connection that could
// not be made (`connection error: desc = "transport: Error while dialing:
// dial tcp 10.0.0.1:7340: connect: connection refused"`) to its cause
// ("connection refused"): the source's name already says where.
func transportCause(msg string) string {
	const dialing = "Error while dialing: "
	i := strings.Index(msg, dialing)
	if !strings.HasPrefix(msg, "connection error: ") || i < 0 {
		return msg
	}
	cause := strings.TrimSuffix(msg[i+len(dialing):], `"`)
	if m := dialPrefix.FindStringIndex(cause); m != nil && m[0] == 0 {
		cause = cause[m[1]:]
	}
	return cause
}

// dialPrefix matches what net.OpError puts before the cause of a failed
// dial: "dial tcp 10.0.0.1:7340: connect: ".
var dialPrefix = regexp.MustCompile(`^dial (tcp|udp|unix)[46]? \S+: (connect: )?`)
