package source_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// TestGRPC_ClosedPort: nothing listens; every call fails with
// ErrUnavailable, naming the source.
func TestGRPC_ClosedPort(t *testing.T) {
	t.Parallel()
	src := parse(t, "grpc://"+closedAddr(t), source.Options{Timeout: 5 * time.Second})
	ctx := testCtx(t)
	_, err := src.Latest(ctx, "kes")
	checkErr(t, src, err, source.ErrUnavailable)
	_, err = src.Manifest(ctx, "kes", "1")
	checkErr(t, src, err, source.ErrUnavailable)
	rc, err := src.Blob(ctx, missingDigest, 0)
	if err == nil {
		rc.Close()
	}
	checkErr(t, src, err, source.ErrUnavailable)
	err = src.(source.Reporter).ReportStatus(ctx, source.Status{ID: "e1", Product: "kes"})
	checkErr(t, src, err, source.ErrUnavailable)
}

// TestGRPC_SilentServer: a peer that accepts TCP connections and never
// speaks makes every call fail with ErrUnavailable after Options.Timeout,
// not when the caller's (much later) context ends.
func TestGRPC_SilentServer(t *testing.T) {
	t.Parallel()
	addr := silentListener(t)
	src := parse(t, "grpc://"+addr, source.Options{Timeout: 300 * time.Millisecond})
	calls := map[string]func(ctx context.Context) error{
		"Latest": func(ctx context.Context) error {
			_, err := src.Latest(ctx, "kes")
			return err
		},
		"Manifest": func(ctx context.Context) error {
			_, err := src.Manifest(ctx, "kes", "1")
			return err
		},
		"Blob": func(ctx context.Context) error {
			rc, err := src.Blob(ctx, missingDigest, 0)
			if err == nil {
				rc.Close()
			}
			return err
		},
		"ReportStatus": func(ctx context.Context) error {
			return src.(source.Reporter).ReportStatus(ctx, source.Status{ID: "e1", Product: "kes"})
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// The caller's context is 20 times the source's timeout: if
			// the call ends only with the context, the timeout was not
			// applied.
			ctx, cancel := context.WithTimeout(testCtx(t), 6*time.Second)
			defer cancel()
			err := call(ctx)
			if ctx.Err() != nil {
				t.Errorf("%s returned only when the caller's context ended (%v): Options.Timeout was not applied; err = %v", name, ctx.Err(), err)
			}
			checkErr(t, src, err, source.ErrUnavailable)
		})
	}
}

// fakeDP is a DistributionService whose answers a test scripts, served by a
// stock gRPC server (standard proto codec) on 127.0.0.1.
type fakeDP struct {
	pb.UnimplementedDistributionServiceServer
	latest   func(*pb.GetLatestRequest) (*pb.GetLatestResponse, error)
	readBlob func(*pb.ReadBlobRequest, grpc.ServerStreamingServer[pb.ReadBlobResponse]) error

	mu      sync.Mutex
	reqs    []any
	headers []metadata.MD
}

func (f *fakeDP) record(ctx context.Context, req any) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.headers = append(f.headers, md)
	f.mu.Unlock()
}

func (f *fakeDP) GetLatest(ctx context.Context, req *pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
	f.record(ctx, req)
	return f.latest(req)
}

func (f *fakeDP) GetManifest(ctx context.Context, req *pb.GetManifestRequest) (*pb.GetManifestResponse, error) {
	f.record(ctx, req)
	return &pb.GetManifestResponse{Manifest: &pb.SignedDocument{Data: []byte("m:" + req.GetVersion()), Signature: []byte("s")}}, nil
}

func (f *fakeDP) ReadBlob(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
	f.record(stream.Context(), req)
	return f.readBlob(req, stream)
}

// startFake serves f until the test ends and returns its address.
func startFake(t *testing.T, f *fakeDP) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterDistributionServiceServer(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ln.Addr().String()
}

// TestGRPC_StatusCodes maps a DP's status codes to the package's sentinels.
func TestGRPC_StatusCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code codes.Code
		want error
	}{
		{codes.NotFound, source.ErrNotFound},
		{codes.InvalidArgument, source.ErrInvalid},
		{codes.DataLoss, source.ErrDataLoss},
		{codes.Unavailable, source.ErrUnavailable},
		{codes.FailedPrecondition, source.ErrLoop},
		{codes.Internal, source.ErrUnavailable},
		{codes.ResourceExhausted, source.ErrUnavailable},
		{codes.DeadlineExceeded, source.ErrUnavailable},
		{codes.Unimplemented, source.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			t.Parallel()
			f := &fakeDP{
				latest: func(*pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
					return nil, status.Error(tt.code, "scripted")
				},
				readBlob: func(*pb.ReadBlobRequest, grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
					return status.Error(tt.code, "scripted")
				},
			}
			src := parse(t, "grpc://"+startFake(t, f), source.DefaultOptions())
			_, err := src.Latest(testCtx(t), "kes")
			checkErr(t, src, err, tt.want)
			// A blob error before the first message comes from Blob
			// itself, not from the first Read.
			rc, err := src.Blob(testCtx(t), missingDigest, 0)
			if err == nil {
				rc.Close()
			}
			checkErr(t, src, err, tt.want)
		})
	}
}

// TestGRPC_Requests: what the source asks a DP, and the forwarded mark.
func TestGRPC_Requests(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(10)
	f := &fakeDP{
		latest: func(req *pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
			return &pb.GetLatestResponse{Latest: &pb.SignedDocument{Data: []byte("l:" + req.GetProduct()), Signature: []byte("sig")}}, nil
		},
		readBlob: func(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
			return stream.Send(&pb.ReadBlobResponse{Data: content[req.GetOffset():], Size: uint64(len(content))})
		},
	}
	src := parse(t, "grpc://"+startFake(t, f), source.DefaultOptions())
	g := src.(*source.GRPC)
	fw := g.Forwarded()
	ctx := testCtx(t)
	for _, s := range []source.Source{g, fw} {
		got, err := s.Latest(ctx, "kes")
		if err != nil {
			t.Fatal(err)
		}
		checkSigned(t, got, []byte("l:kes"), []byte("sig"))
		got, err = s.Manifest(ctx, "kes", "12.1")
		if err != nil {
			t.Fatal(err)
		}
		checkSigned(t, got, []byte("m:12.1"), []byte("s"))
		b, err := readBlob(ctx, s, digest, 3, io.ReadAll)
		checkBytes(t, "blob", b, content[3:], err)
	}
	// Closing the forwarded copy leaves the original's connection open.
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Latest(ctx, "kes"); err != nil {
		t.Fatalf("Latest after closing the forwarded copy: %v", err)
	}
	if fw.String() != g.String() {
		t.Errorf("forwarded String() %q, want %q", fw, g)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	want := []string{
		`GetLatest product:"kes" forwarded:false`,
		`GetManifest product:"kes" version:"12.1" forwarded:false`,
		fmt.Sprintf(`ReadBlob sha256:%q offset:3 forwarded:false`, digest),
		`GetLatest product:"kes" forwarded:true`,
		`GetManifest product:"kes" version:"12.1" forwarded:true`,
		fmt.Sprintf(`ReadBlob sha256:%q offset:3 forwarded:true`, digest),
		`GetLatest product:"kes" forwarded:false`,
	}
	var got []string
	for _, r := range f.reqs {
		switch r := r.(type) {
		case *pb.GetLatestRequest:
			got = append(got, fmt.Sprintf("GetLatest product:%q forwarded:%v", r.GetProduct(), r.GetForwarded()))
		case *pb.GetManifestRequest:
			got = append(got, fmt.Sprintf("GetManifest product:%q version:%q forwarded:%v", r.GetProduct(), r.GetVersion(), r.GetForwarded()))
		case *pb.ReadBlobRequest:
			got = append(got, fmt.Sprintf("ReadBlob sha256:%q offset:%d forwarded:%v", r.GetSha256(), r.GetOffset(), r.GetForwarded()))
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the DP saw\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

// TestGRPC_BlobStream: the reader reassembles any message split, including
// empty messages, and reports errors and truncation at the point they
// happen.
func TestGRPC_BlobStream(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(300_001)
	size := uint64(len(content))
	send := func(stream grpc.ServerStreamingServer[pb.ReadBlobResponse], msgs ...*pb.ReadBlobResponse) error {
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				return err
			}
		}
		return nil
	}
	tests := []struct {
		name string
		// serve streams content[off:] (or not).
		serve func(off uint64, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error
		// want: the bytes read before the error, as a length of content[off:]
		// (-1: all), and the error wanted.
		wantLen int
		wantErr error
	}{
		{
			name: "one message",
			serve: func(off uint64, s grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				return send(s, &pb.ReadBlobResponse{Data: content[off:], Size: size})
			},
			wantLen: -1,
		},
		{
			name: "size first, then data, with empty messages",
			serve: func(off uint64, s grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				rest := content[off:]
				msgs := []*pb.ReadBlobResponse{{Size: size}, {}}
				for len(rest) > 0 {
					n := min(len(rest), 4093)
					msgs = append(msgs, &pb.ReadBlobResponse{Data: rest[:n]}, &pb.ReadBlobResponse{})
					rest = rest[n:]
				}
				return send(s, msgs...)
			},
			wantLen: -1,
		},
		{
			name: "one byte messages then a big one",
			serve: func(off uint64, s grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				rest := content[off:]
				msgs := []*pb.ReadBlobResponse{{Data: rest[:1], Size: size}}
				for i := 1; i < 50; i++ {
					msgs = append(msgs, &pb.ReadBlobResponse{Data: rest[i : i+1]})
				}
				msgs = append(msgs, &pb.ReadBlobResponse{Data: rest[50:]})
				return send(s, msgs...)
			},
			wantLen: -1,
		},
		{
			name: "data loss mid-stream",
			serve: func(off uint64, s grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				if err := send(s, &pb.ReadBlobResponse{Data: content[off : off+1000], Size: size}); err != nil {
					return err
				}
				return status.Error(codes.DataLoss, "upstream sent corrupt bytes")
			},
			wantLen: 1000,
			wantErr: source.ErrDataLoss,
		},
		{
			name: "unavailable mid-stream",
			serve: func(off uint64, s grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				if err := send(s, &pb.ReadBlobResponse{Data: content[off : off+5000], Size: size}); err != nil {
					return err
				}
				return status.Error(codes.Unavailable, "upstream went away")
			},
			wantLen: 5000,
			wantErr: source.ErrUnavailable,
		},
		{
			// The DP announced the size and ended the stream cleanly
			// before it: "reading past what the source has returns an
			// error, never silent truncation".
			name: "ends before the announced size",
			serve: func(off uint64, s grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				return send(s, &pb.ReadBlobResponse{Data: content[off : off+2000], Size: size})
			},
			wantLen: 2000,
			wantErr: io.ErrUnexpectedEOF,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeDP{readBlob: func(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
				return tt.serve(req.GetOffset(), stream)
			}}
			src := parse(t, "grpc://"+startFake(t, f), source.DefaultOptions())
			for _, off := range []int64{0, 77} {
				want := content[off:]
				if tt.wantLen >= 0 {
					want = want[:tt.wantLen]
				}
				got, err := readBlob(testCtx(t), src, digest, off, io.ReadAll)
				if tt.wantErr == nil {
					checkBytes(t, fmt.Sprintf("offset %d", off), got, want, err)
					continue
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("offset %d: error %v, want one wrapping %v", off, err, tt.wantErr)
				}
				checkBytes(t, fmt.Sprintf("offset %d, before the error", off), got, want, nil)
			}
		})
	}
}

// TestGRPC_FirstMessageTimeout: a DP that accepts ReadBlob and never sends
// makes Blob fail with ErrUnavailable after Options.Timeout.
func TestGRPC_FirstMessageTimeout(t *testing.T) {
	t.Parallel()
	f := &fakeDP{readBlob: func(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
		<-stream.Context().Done()
		return stream.Context().Err()
	}}
	src := parse(t, "grpc://"+startFake(t, f), source.Options{Timeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(testCtx(t), 6*time.Second)
	defer cancel()
	rc, err := src.Blob(ctx, missingDigest, 0)
	if err == nil {
		rc.Close()
	}
	if ctx.Err() != nil {
		t.Errorf("Blob returned only when the caller's context ended")
	}
	checkErr(t, src, err, source.ErrUnavailable)
}

// TestGRPC_DP runs the gRPC source against a real distribution point for
// what the conformance suite does not cover: status reports and the size a
// DP announces.
func TestGRPC_DP(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	origin := httptest.NewServer(http.FileServer(http.Dir(r.root)))
	t.Cleanup(origin.Close)
	dp := startDP(t, r.trust, origin.URL)
	src := parse(t, "grpc://"+dp.GRPCAddr(), source.DefaultOptions())
	rep, ok := src.(source.Reporter)
	if !ok {
		t.Fatalf("%T does not implement source.Reporter", src)
	}

	t.Run("ReportStatus", func(t *testing.T) {
		t.Parallel()
		err := rep.ReportStatus(testCtx(t), source.Status{
			ID: "endpoint-1", Hostname: "pc-042", Site: "branch-7", Product: r.product,
			Version: r.version, Serial: 1, Result: "updated", Reported: time.Now(),
		})
		if err != nil {
			t.Fatal(err)
		}
		// Failed runs report their error; a zero time is allowed.
		err = rep.ReportStatus(testCtx(t), source.Status{ID: "endpoint-2", Product: r.product, Result: "failed", Error: "disk full"})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ReportStatus/Invalid", func(t *testing.T) {
		t.Parallel()
		for _, st := range []source.Status{
			{Product: r.product},                  // no ID
			{ID: "endpoint-1"},                    // no product
			{ID: "endpoint-1", Product: "../etc"}, // bad product
			{ID: strings.Repeat("x", 10_000), Product: r.product},
		} {
			err := rep.ReportStatus(testCtx(t), st)
			checkErr(t, src, err, source.ErrInvalid)
		}
	})

	t.Run("BlobSize", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		if _, err := src.Manifest(ctx, r.product, r.version); err != nil {
			t.Fatal(err)
		}
		d, content := r.big()
		for _, off := range []int64{0, 999} {
			rc, err := src.Blob(ctx, d, off)
			if err != nil {
				t.Fatal(err)
			}
			sz, ok := rc.(interface{ Size() int64 })
			if !ok {
				rc.Close()
				t.Fatalf("%T has no Size method", rc)
			}
			if got := sz.Size(); got != int64(len(content)) {
				t.Errorf("offset %d: Size() = %d, want the blob's %d bytes", off, got, len(content))
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			checkBytes(t, "blob", got, content[off:], err)
		}
	})

}

// TestGRPC_CloseReleases: closing a blob reader in the middle cancels the
// stream on the DP, while the caller's context is still alive.
func TestGRPC_CloseReleases(t *testing.T) {
	t.Parallel()
	content, digest := blobContent(100_000)
	released := make(chan struct{})
	f := &fakeDP{readBlob: func(req *pb.ReadBlobRequest, stream grpc.ServerStreamingServer[pb.ReadBlobResponse]) error {
		if err := stream.Send(&pb.ReadBlobResponse{Data: content[:1000], Size: uint64(len(content))}); err != nil {
			return err
		}
		<-stream.Context().Done()
		close(released)
		return stream.Context().Err()
	}}
	src := parse(t, "grpc://"+startFake(t, f), source.DefaultOptions())
	rc, err := src.Blob(testCtx(t), digest, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 500)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-released:
	case <-time.After(20 * time.Second):
		t.Fatal("the DP's stream was still open 20 s after Close")
	}
}
