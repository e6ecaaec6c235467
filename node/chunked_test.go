package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// chunkedVersion publishes version 1 of "av" with one chunked database
// (3 MiB) and one small module left whole, and returns the manifest, the
// chunked file and its bytes.
func chunkedVersion(t *testing.T, v *vendor) (*manifest.Manifest, manifest.File, []byte) {
	t.Helper()
	v.chunk = true
	pub := v.publish(t, "av", "1", 7, map[string]int{"databases/big.dat": 3<<20 + 17, "modules/small.so": 5000})
	var big manifest.File
	for _, f := range pub.Manifest.Files {
		if len(f.Chunks) > 0 {
			big = f
		}
	}
	if len(big.Chunks) < 8 {
		t.Fatalf("the 3 MiB file has %d chunks", len(big.Chunks))
	}
	if _, err := os.Stat(filepath.Join(v.repo, filepath.FromSlash(manifest.BlobPath(big.SHA256)))); err == nil {
		t.Fatal("the repository stores the chunked file whole")
	}
	// The bytes, assembled from the repository's chunks.
	var data []byte
	for _, c := range big.Chunks {
		data = append(data, readFile(t, v.repo, manifest.BlobPath(c.SHA256))...)
	}
	if sha(data) != big.SHA256 {
		t.Fatal("the published chunks do not assemble to the file")
	}
	return pub.Manifest, big, data
}

// learnManifest has the DP fetch and verify version 1 of "av".
func learnManifest(t *testing.T, c pb.DistributionServiceClient) {
	t.Helper()
	ctx := testCtx(t)
	if _, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
}

// A DP serves a chunked file whole, assembled from its chunks, over gRPC
// (from 0, from an offset, to a peer DP) and over HTTP /repo/ (whole,
// Range, HEAD, If-None-Match); the origin sends each chunk once, never
// the whole file, and the DP does not store the assembled file.
func TestNode_ChunkedFileServedWhole(t *testing.T) {
	v := newVendor(t)
	m, big, data := chunkedVersion(t, v)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	if _, err := readBlob(ctx, c, big.SHA256, 0); status.Code(err) != codes.NotFound {
		t.Fatalf("before any manifest names it: %v, want NotFound", err)
	}
	learnManifest(t, c)

	for _, off := range []int64{0, big.Size/2 + 3, big.Size - 1} {
		b, err := readBlob(ctx, c, big.SHA256, uint64(off))
		if err != nil || !bytes.Equal(b, data[off:]) {
			t.Fatalf("gRPC from %d: %d bytes, %v", off, len(b), err)
		}
	}
	stream, err := c.ReadBlob(ctx, &pb.ReadBlobRequest{Sha256: big.SHA256, Forwarded: true})
	if err != nil {
		t.Fatal(err)
	}
	var fromPeer []byte
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("forwarded: %v", err)
		}
		fromPeer = append(fromPeer, msg.Data...)
	}
	if !bytes.Equal(fromPeer, data) {
		t.Fatal("forwarded: not the file")
	}

	url := "http://" + n.HTTPAddr() + "/repo/" + manifest.BlobPath(big.SHA256)
	resp, body := httpGet(t, url)
	etag := `"` + big.SHA256 + `"`
	if resp.StatusCode != http.StatusOK || sha(body) != big.SHA256 || resp.Header.Get("ETag") != etag ||
		resp.Header.Get("Cache-Control") != immutableCacheControl {
		t.Fatalf("GET whole: %s, %d bytes, ETag %s, Cache-Control %q", resp.Status, len(body), resp.Header.Get("ETag"), resp.Header.Get("Cache-Control"))
	}
	resp, body = httpGet(t, url, "Range", "bytes=1000-200000")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[1000:200001]) ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 1000-200000/%d", big.Size) {
		t.Fatalf("GET range: %s, %d bytes, Content-Range %q", resp.Status, len(body), resp.Header.Get("Content-Range"))
	}
	resp, body = httpGet(t, url, "Range", fmt.Sprintf("bytes=%d-", big.Size-10))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[big.Size-10:]) {
		t.Fatalf("GET tail: %s, %d bytes", resp.Status, len(body))
	}
	if resp, _ := httpGet(t, url, "If-None-Match", etag); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %s, want 304", resp.Status)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	head, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	if head.StatusCode != http.StatusOK || head.Header.Get("Content-Length") != strconv.FormatInt(big.Size, 10) {
		t.Fatalf("HEAD: %s, Content-Length %s", head.Status, head.Header.Get("Content-Length"))
	}

	testenv.WaitFor(t, 30*time.Second, "version held whole", func() bool {
		hv, err := n.cache.LatestVersion("av")
		return err == nil && hv.Serial == 1
	})
	for _, f := range m.Blobs() {
		if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 1 {
			t.Errorf("origin served %s (%s) %d times, want 1", f.SHA256[:12], f.Path, got)
		}
	}
	if got := ngx.CountRequests(t, manifest.BlobPath(big.SHA256)); got != 0 {
		t.Errorf("origin asked for the whole chunked file %d times", got)
	}
	if _, err := n.cache.Stat(big.SHA256); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("the assembled file is stored: %v", err)
	}
}

// Plain HTTP updaters pointed at a DP: the agent with the DP's /repo/ as
// an HTTP source (it sees the chunked manifest and fetches chunks), and a
// raw GET of the whole file's digest whose bytes hash to it.
func TestNode_ChunkedFile_PlainHTTPUpdater(t *testing.T) {
	v := newVendor(t)
	m, big, _ := chunkedVersion(t, v)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	base := "http://" + n.HTTPAddr() + "/repo/"

	s, err := source.Parse(base, source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := agent.DefaultConfig()
	cfg.Sources, cfg.Trust, cfg.Product, cfg.Dir = []source.Source{s}, v.trust, "av", t.TempDir()
	res, err := agent.Update(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("update from %s: %v", base, err)
	}
	if res.Serial != 1 || res.FilesChanged != len(m.Files) {
		t.Fatalf("update from %s: %+v", base, res)
	}
	installed, err := os.ReadFile(filepath.Join(cfg.Dir, "av", "current", "databases", "big.dat"))
	if err != nil {
		t.Fatal(err)
	}
	if sha(installed) != big.SHA256 {
		t.Fatal("installed file is not the published one")
	}
	resp, body := httpGet(t, base+manifest.BlobPath(big.SHA256))
	if resp.StatusCode != http.StatusOK || int64(len(body)) != big.Size || sha(body) != big.SHA256 {
		t.Fatalf("raw GET of the whole file: %s, %d bytes", resp.Status, len(body))
	}
}

// A chunk corrupted at the origin fails an assembled read, over gRPC
// (DataLoss) and over HTTP (the connection is cut): never a complete
// wrong file.
func TestNode_ChunkedFile_CorruptChunkAtOrigin(t *testing.T) {
	v := newVendor(t)
	_, big, _ := chunkedVersion(t, v)
	corrupt(t, v.repo, big.Chunks[len(big.Chunks)/2].SHA256)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	learnManifest(t, c)

	b, err := readBlob(ctx, c, big.SHA256, 0)
	if status.Code(err) != codes.DataLoss || int64(len(b)) >= big.Size {
		t.Fatalf("gRPC: %d bytes, %v; want DataLoss before the end", len(b), err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTPAddr()+"/repo/"+manifest.BlobPath(big.SHA256), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("HTTP: %v", err) // the headers come before the corrupt chunk
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || int64(len(body)) >= big.Size {
		t.Fatalf("HTTP: %s, %d bytes, %v; want a cut connection", resp.Status, len(body), err)
	}
	// The first chunk corrupted too, and a DP that holds none of them: an
	// error status, before any byte.
	corrupt(t, v.repo, big.Chunks[0].SHA256)
	n2 := startNode(t, v, ngx.URL, nil)
	learnManifest(t, dial(t, n2))
	resp, _ = httpGet(t, "http://"+n2.HTTPAddr()+"/repo/"+manifest.BlobPath(big.SHA256))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("HTTP with the first chunk corrupt: %s, want 502", resp.Status)
	}
}
