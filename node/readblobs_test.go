package node

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// ReadBlobs streams chunks cached and not yet cached, a whole blob, a
// chunked file assembled and a blob from an offset, in request order; an
// unknown digest in the middle is announced not found and the stream goes
// on; each chunk crosses the origin link once.
func TestNode_ReadBlobs(t *testing.T) {
	v := newVendor(t)
	m, big, data := chunkedVersion(t, v)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	learnManifest(t, c)
	ctx := testCtx(t)
	for _, ch := range big.Chunks[:3] { // cached before the batch
		if _, err := readBlob(ctx, c, ch.SHA256, 0); err != nil {
			t.Fatal(err)
		}
	}
	var small manifest.File
	for _, f := range m.Files {
		if len(f.Chunks) == 0 {
			small = f
		}
	}
	want := map[string][]byte{}
	var refs []source.BlobRef
	var off int64
	for i, ch := range big.Chunks {
		want[ch.SHA256] = data[off : off+ch.Size]
		off += ch.Size
		refs = append(refs, source.BlobRef{Digest: ch.SHA256})
		if i == 4 {
			refs = append(refs, source.BlobRef{Digest: strings.Repeat("ab", 32)})
		}
	}
	want[big.SHA256] = data
	want[small.SHA256] = readFile(t, v.repo, manifest.BlobPath(small.SHA256))
	refs = append(refs, source.BlobRef{Digest: big.SHA256}, source.BlobRef{Digest: small.SHA256, Offset: 1000})

	g, err := source.NewGRPC(n.GRPCAddr(), source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var got []int
	err = g.ReadBlobs(ctx, refs, func(i int, size int64, r io.Reader) error {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		w := want[refs[i].Digest][refs[i].Offset:]
		if size-refs[i].Offset != int64(len(w)) || string(b) != string(w) {
			t.Errorf("blob %d (%s): %d bytes of %d, wrong bytes", i, refs[i].Digest, len(b), size)
		}
		got = append(got, i)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(refs)-1 {
		t.Fatalf("delivered %v of %d blobs, want all but the unknown one", got, len(refs))
	}
	for _, i := range got {
		if i == 5 {
			t.Fatal("the unknown blob was delivered")
		}
	}
	for _, ch := range big.Chunks {
		if k := ngx.CountRequests(t, manifest.BlobPath(ch.SHA256)); k != 1 {
			t.Errorf("origin served chunk %s %d times, want 1", ch.SHA256, k)
		}
	}

	// each's error ends the batch with that error.
	stop := errors.New("stop")
	if err := g.ReadBlobs(ctx, refs, func(int, int64, io.Reader) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("each failing: %v", err)
	}
}

func TestNode_ReadBlobs_BadRequests(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	good := &pb.BlobRef{Sha256: strings.Repeat("ab", 32)}
	many := make([]*pb.BlobRef, source.MaxBatchBlobs+1)
	for i := range many {
		many[i] = good
	}
	tests := []struct {
		name string
		req  *pb.ReadBlobsRequest
	}{
		{"none", &pb.ReadBlobsRequest{}},
		{"too many", &pb.ReadBlobsRequest{Blobs: many}},
		{"bad digest", &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{good, {Sha256: "../etc/passwd"}}}},
		{"upper-case digest", &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{{Sha256: strings.Repeat("AB", 32)}}}},
		{"huge offset", &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{{Sha256: good.Sha256, Offset: 1 << 63}}}},
		{"bad product", &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{good}, Product: "../x", Version: "1"}},
		{"version without product", &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{good}, Version: "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream, err := c.ReadBlobs(ctx, tt.req)
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
		})
	}
	// An offset past a blob's end is the blob's own failure: the stream ends.
	pubBlob := manifestBlobs(t, c)[0]
	stream, err := c.ReadBlobs(ctx, &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{{Sha256: pubBlob.SHA256, Offset: uint64(pubBlob.Size) + 1}}})
	if err == nil {
		for err == nil {
			_, err = stream.Recv()
		}
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("offset past the end: %v, want InvalidArgument", err)
	}
}

// manifestBlobs has the DP learn version 1 of "av" and returns its blobs.
func manifestBlobs(t *testing.T, c pb.DistributionServiceClient) []manifest.File {
	t.Helper()
	learnManifest(t, c)
	ctx := testCtx(t)
	mr, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.ParseManifest(mr.GetManifest().GetData())
	if err != nil {
		t.Fatal(err)
	}
	return m.Blobs()
}

// grpcRequests returns dpcache_grpc_requests_total for method, every code.
func grpcRequests(t *testing.T, reg *prometheus.Registry, method string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "dpcache_grpc_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == method {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// installFrom runs an agent update of "av" from srcs into a new folder and
// returns the result and the folder.
func installFrom(t *testing.T, v *vendor, srcs ...source.Source) (*agent.Result, string) {
	t.Helper()
	cfg := agent.DefaultConfig()
	cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir = srcs, v.trust, "av", t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(newTestWriter(t), nil))
	res, err := agent.Update(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	return res, cfg.Dir
}

func grpcSource(t *testing.T, addr string) source.Source {
	t.Helper()
	g, err := source.NewGRPC(addr, source.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// An agent installs a chunked file through a DP with a few batched reads of
// its chunks (the agent cuts a file in batches of about 1 MiB, so that
// several DPs could share it), not one request per chunk, and downloads
// each byte once.
func TestNode_ReadBlobs_AgentInstall(t *testing.T) {
	v := newVendor(t)
	m, big, data := chunkedVersion(t, v)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	reg := prometheus.NewRegistry()
	n := startNode(t, v, ngx.URL, func(c *Config) { c.Registry = reg })
	res, dir := installFrom(t, v, grpcSource(t, n.GRPCAddr()))
	installed, err := os.ReadFile(filepath.Join(dir, "av", "current", "databases", "big.dat"))
	if err != nil || !bytes.Equal(installed, data) {
		t.Fatalf("installed file is not the published one (%v)", err)
	}
	if res.BytesDownloaded != m.Size() {
		t.Errorf("bytes_downloaded %d, want %d", res.BytesDownloaded, m.Size())
	}
	batches, singles := grpcRequests(t, reg, "ReadBlobs"), grpcRequests(t, reg, "ReadBlob")
	if !batched(batches, len(big.Chunks)) || singles != 1 { // the small module is a blob of its own
		t.Fatalf("%d chunks took %v ReadBlobs and %v ReadBlob requests, want batches of 4 chunks or more and 1", len(big.Chunks), batches, singles)
	}
}

// A batched read never fails an update: chunks a first DP cannot send at
// all (not listening), or a DP has no source for (deleted at its origin),
// come one by one from the next source.
func TestNode_ReadBlobs_AgentFallsBack(t *testing.T) {
	v := newVendor(t)
	m, big, data := chunkedVersion(t, v)
	mirror := filepath.Join(t.TempDir(), "mirror")
	if err := os.CopyFS(mirror, os.DirFS(v.repo)); err != nil {
		t.Fatal(err)
	}
	lost := big.Chunks[3]
	if err := os.Remove(filepath.Join(v.repo, filepath.FromSlash(manifest.BlobPath(lost.SHA256)))); err != nil {
		t.Fatal(err)
	}
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	reg := prometheus.NewRegistry()
	n := startNode(t, v, ngx.URL, func(c *Config) { c.Registry = reg })
	backup, err := source.Parse(mirror, source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer backup.Close()

	for _, tc := range []struct {
		name string
		srcs []source.Source
	}{
		{"DP down", []source.Source{grpcSource(t, testenv.FreeAddr(t, "127.0.0.1")), backup}},
		{"chunk lost at the DP's origin", []source.Source{grpcSource(t, n.GRPCAddr()), backup}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, dir := installFrom(t, v, tc.srcs...)
			installed, err := os.ReadFile(filepath.Join(dir, "av", "current", "databases", "big.dat"))
			if err != nil || !bytes.Equal(installed, data) {
				t.Fatalf("installed file is not the published one (%v)", err)
			}
			if res.BytesDownloaded != m.Size() {
				t.Errorf("bytes_downloaded %d, want %d", res.BytesDownloaded, m.Size())
			}
		})
	}
	if got := grpcRequests(t, reg, "ReadBlobs"); !batched(got, len(big.Chunks)) {
		t.Errorf("%v ReadBlobs requests for %d chunks, want batches of 4 chunks or more", got, len(big.Chunks))
	}
}

// batched reports whether chunks were read in requests of 4 chunks or
// more on average: some batched reads, far fewer than one per chunk.
func batched(requests float64, chunks int) bool {
	return requests >= 1 && requests <= float64(chunks)/4
}
