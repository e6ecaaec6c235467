package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/e2e/testenv"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// TestNode_Via_Refused: a request whose chain of DPs holds this DP, or
// more than MaxHops DPs, is refused with FailedPrecondition before it
// reaches anything; a malformed chain is InvalidArgument; a partial read
// cannot loop and is served whatever its chain.
func TestNode_Via_Refused(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	n := startNode(t, v, v.repo, nil)
	c := dial(t, n)
	other := source.NewInstanceID()
	nine := strings.TrimSuffix(strings.Repeat(other+",", source.MaxHops+1), ",")
	with := func(chain string) context.Context {
		return metadata.AppendToOutgoingContext(testCtx(t), source.ViaKey, chain)
	}
	digest := pub.Manifest.Files[0].SHA256
	// The DP learns the blob from the manifest.
	if _, err := c.GetManifest(testCtx(t), &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
		want codes.Code
		msg  string
	}{
		{"latest back at this DP", func() error {
			_, err := c.GetLatest(with(n.instance+","+other), &pb.GetLatestRequest{Product: "av"})
			return err
		}, codes.FailedPrecondition, "upstream loop: this request came back to this DP after 2 hops; check the --upstream lists"},
		{"manifest back at this DP", func() error {
			_, err := c.GetManifest(with(other+","+n.instance), &pb.GetManifestRequest{Product: "av", Version: "1"})
			return err
		}, codes.FailedPrecondition, "upstream loop: this request came back to this DP after 1 hops"},
		{"blob back at this DP", func() error {
			_, err := readBlob(with(n.instance), c, digest, 0)
			return err
		}, codes.FailedPrecondition, "upstream loop"},
		{"blobs back at this DP", func() error {
			stream, err := c.ReadBlobs(with(other+","+n.instance), &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{{Sha256: digest}}})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, codes.FailedPrecondition, "upstream loop"},
		{"past the hop limit", func() error {
			_, err := c.GetLatest(with(nine), &pb.GetLatestRequest{Product: "av"})
			return err
		}, codes.FailedPrecondition, "upstream hop limit"},
		{"malformed", func() error {
			_, err := c.GetLatest(with("dp-1"), &pb.GetLatestRequest{Product: "av"})
			return err
		}, codes.InvalidArgument, source.ViaKey},
		{"malformed blob request", func() error {
			_, err := readBlob(with(other+",,"), c, digest, 0)
			return err
		}, codes.InvalidArgument, source.ViaKey},
		{"through other DPs", func() error {
			_, err := c.GetLatest(with(other), &pb.GetLatestRequest{Product: "av"})
			return err
		}, codes.OK, ""},
		{"no chain", func() error {
			_, err := readBlob(testCtx(t), c, digest, 0)
			return err
		}, codes.OK, ""},
		{"partial read back at this DP", func() error { // the blob is whole now
			stream, err := c.ReadBlob(with(n.instance), &pb.ReadBlobRequest{Sha256: digest, AvailableOnly: true})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}, codes.OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := status.Code(err); got != tt.want {
				t.Fatalf("code %v (%v), want %v", got, err, tt.want)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.msg) || strings.Contains(msg, "\n") {
				t.Errorf("message %q, want one line with %q", msg, tt.msg)
			}
		})
	}
}

// startLoopPair runs DPs a and b, each the other's first upstream; a's
// second upstream is origin when it is not "". A long stall timeout: a
// request that waits on itself would show as a test stuck until its
// context ends, not as a failover after a stall.
func startLoopPair(t *testing.T, v *vendor, origin string) (a, b *Node) {
	t.Helper()
	addrA := testenv.FreeAddr(t, "127.0.0.1")
	long := func(cfg *Config) { cfg.StallTimeout = 10 * time.Minute }
	b = startNode(t, v, "grpc://"+addrA, func(cfg *Config) { long(cfg); cfg.Name = "dp-1" })
	a = startNode(t, v, "grpc://"+b.GRPCAddr(), func(cfg *Config) {
		long(cfg)
		cfg.Name = "dp-1" // names repeat across sites: the loop is found by instance
		cfg.GRPCAddr = addrA
		if origin != "" {
			cfg.Upstream = append(cfg.Upstream, origin)
		}
	})
	return a, b
}

// TestNode_UpstreamLoop_FailsOver: two DPs that are each other's upstream,
// one with the origin next: every request through either is served, the
// loop is refused at once rather than waited on.
func TestNode_UpstreamLoop_FailsOver(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	a, b := startLoopPair(t, v, v.repo)
	ctx := testCtx(t)
	// b first: its documents come from a, which must not ask b back.
	for _, n := range []*Node{b, a} {
		c := dial(t, n)
		if _, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"}); err != nil {
			t.Fatalf("%s: latest: %v", n.GRPCAddr(), err)
		}
		if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
			t.Fatalf("%s: manifest: %v", n.GRPCAddr(), err)
		}
		for _, f := range pub.Manifest.Files {
			got, err := readBlob(ctx, c, f.SHA256, 0)
			if err != nil {
				t.Fatalf("%s: %s: %v", n.GRPCAddr(), f.Path, err)
			}
			if sha(got) != f.SHA256 {
				t.Fatalf("%s: %s: wrong bytes", n.GRPCAddr(), f.Path)
			}
		}
	}
}

// TestNode_UpstreamLoop_NoOrigin: two DPs that are each other's only
// upstream: a request fails with the loop named, not with a timeout.
func TestNode_UpstreamLoop_NoOrigin(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	a, _ := startLoopPair(t, v, "")
	c := dial(t, a)
	_, err := c.GetLatest(testCtx(t), &pb.GetLatestRequest{Product: "av"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "upstream loop") {
		t.Fatalf("latest: %v, want Unavailable naming the upstream loop", err)
	}
	_, err = c.GetManifest(testCtx(t), &pb.GetManifestRequest{Product: "av", Version: "1"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "upstream loop") {
		t.Fatalf("manifest: %v, want Unavailable naming the upstream loop", err)
	}
	if msg := status.Convert(err).Message(); strings.Contains(msg, "\n") {
		t.Errorf("message spans lines: %q", msg)
	}
}
