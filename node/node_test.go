package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }

// vendor is a signing key and a repository folder.
type vendor struct {
	key   manifest.PrivateKey
	trust *manifest.Trust
	repo  string
	chunk bool // publish cuts large files into chunks
}

func newVendor(t testing.TB) *vendor {
	t.Helper()
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	trust, err := manifest.NewTrust(pub)
	if err != nil {
		t.Fatal(err)
	}
	return &vendor{key: key, trust: trust, repo: filepath.Join(t.TempDir(), "repo")}
}

// publish writes files (path → size, random content from seed) and
// publishes them as version.
func (v *vendor) publish(t testing.TB, product, version string, seed uint64, files map[string]int) *manifest.PublishResult {
	t.Helper()
	src := t.TempDir()
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	rng := rand.NewChaCha8(key)
	for name, size := range files {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, size)
		rng.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := manifest.Publish(manifest.PublishOptions{Repo: v.repo, Product: product, Version: version, Key: v.key, Chunk: v.chunk}, src)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// startNode runs a DP on 127.0.0.1 with the given upstream until the test ends.
func startNode(t testing.TB, v *vendor, upstream string, mod func(*Config)) *Node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = "dp-test"
	cfg.DataDir = t.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Upstream = []string{upstream}
	cfg.Trust = v.trust
	cfg.Refresh = 200 * time.Millisecond
	cfg.PrefetchInterval = 200 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, ok := t.(*testing.B); ok {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node.Run: %v", err)
		}
	})
	return n
}

// newTestWriter returns a log destination that writes to t until the test
// ends and drops what comes later: memberlist's timers can fire after a
// stopped member's Shutdown and log, and t.Log after the test panics.
func newTestWriter(t testing.TB) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() { // registered before the DPs' cleanups: runs after they stop
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex // protects done, and orders it with t.Log
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

func dial(t testing.TB, n *Node) pb.DistributionServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+n.GRPCAddr(), source.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewDistributionServiceClient(conn)
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readBlob reads a whole blob from offset over gRPC.
func readBlob(ctx context.Context, c pb.DistributionServiceClient, digest string, off uint64) ([]byte, error) {
	stream, err := c.ReadBlob(ctx, &pb.ReadBlobRequest{Sha256: digest, Offset: off})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m.Data...)
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

var smallProduct = map[string]int{
	"databases/a.dat":   3<<20 + 17,
	"databases/b.dat":   100 << 10,
	"databases/empty":   0,
	"modules/engine.so": 2 << 20,
}

func TestNode_ColdPassThroughThenCached(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)

	lr, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := v.trust.VerifyLatest(lr.GetLatest().GetData(), lr.GetLatest().GetSignature())
	if err != nil {
		t.Fatalf("latest from a cold DP does not verify: %v", err)
	}
	if l.Serial != pub.Latest.Serial {
		t.Fatalf("serial %d, want %d", l.Serial, pub.Latest.Serial)
	}
	mr, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := v.trust.VerifyManifest(mr.GetManifest().GetData(), mr.GetManifest().GetSignature(), l)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m.Blobs() {
		b, err := readBlob(ctx, c, f.SHA256, 0)
		if err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		if sha(b) != f.SHA256 {
			t.Fatalf("%s: wrong bytes", f.Path)
		}
		if f.Size > 10 {
			tail, err := readBlob(ctx, c, f.SHA256, uint64(f.Size-10))
			if err != nil || !bytes.Equal(tail, b[len(b)-10:]) {
				t.Fatalf("%s from offset: %v", f.Path, err)
			}
		}
	}
	// The version becomes whole in the background, then it is served as
	// this DP's own latest; each blob crossed the origin link once.
	testenv.WaitFor(t, 30*time.Second, "version held whole", func() bool {
		hv, err := n.cache.LatestVersion("av")
		return err == nil && hv.Serial == l.Serial
	})
	for _, f := range m.Blobs() {
		if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 1 {
			t.Errorf("origin served %s %d times, want 1", f.Path, got)
		}
	}
	if tr := n.Traffic(); tr.UpstreamBytes != m.Size() {
		t.Errorf("upstream bytes %d, want %d", tr.UpstreamBytes, m.Size())
	}
}

func TestNode_BadRequests(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"unknown product", func() error {
			_, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "nope"})
			return err
		}, codes.NotFound},
		{"bad product name", func() error {
			_, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "../etc"})
			return err
		}, codes.InvalidArgument},
		{"unknown version", func() error {
			_, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "9"})
			return err
		}, codes.NotFound},
		{"bad digest", func() error {
			_, err := readBlob(ctx, c, "xyz", 0)
			return err
		}, codes.InvalidArgument},
		{"blob no manifest names", func() error {
			_, err := readBlob(ctx, c, sha([]byte("nothing")), 0)
			return err
		}, codes.NotFound},
		{"report without id", func() error {
			_, err := c.ReportStatus(ctx, &pb.ReportStatusRequest{Status: &pb.EndpointStatus{Product: "av"}})
			return err
		}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(tt.call()); got != tt.want {
				t.Fatalf("code %v, want %v", got, tt.want)
			}
		})
	}
}

// corrupt overwrites a published blob with other bytes of the same size.
func corrupt(t testing.TB, repo, digest string) {
	t.Helper()
	p := filepath.Join(repo, filepath.FromSlash(manifest.BlobPath(digest)))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestNode_CorruptBlobAtOrigin(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	var big manifest.File
	for _, f := range pub.Manifest.Files {
		if f.Size > big.Size {
			big = f
		}
	}
	corrupt(t, v.repo, big.SHA256)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	_, err := readBlob(ctx, c, big.SHA256, 0)
	if status.Code(err) != codes.DataLoss {
		t.Fatalf("reading a blob corrupted at the origin: %v, want DataLoss", err)
	}
	if _, err := n.cache.Stat(big.SHA256); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("corrupt blob is in the cache: %v", err)
	}
	// The version is never announced: the DP keeps passing upstream's
	// latest through and never records it whole.
	if _, err := n.cache.LatestVersion("av"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("a version with a corrupt blob was recorded whole: %v", err)
	}
}

func TestNode_RefreshAnnouncesOnlyWholeVersions(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, func(c *Config) { c.Products = []string{"av"} })
	testenv.WaitFor(t, 30*time.Second, "v1 prefetched", func() bool {
		hv, err := n.cache.LatestVersion("av")
		return err == nil && hv.Version == "1"
	})
	v1Latest := map[string][]byte{}
	for _, name := range []string{"latest.json", "latest.json.minisig"} {
		b, err := os.ReadFile(filepath.Join(v.repo, "av", name))
		if err != nil {
			t.Fatal(err)
		}
		v1Latest[name] = b
	}
	files := map[string]int{"databases/a.dat": 3 << 20, "databases/new.dat": 1 << 20, "modules/engine.so": 2 << 20}
	pub2 := v.publish(t, "av", "2", 2, files)
	c := dial(t, n)
	ctx := testCtx(t)
	// Whenever the DP announces v2, every blob of v2 is already whole.
	testenv.WaitFor(t, 30*time.Second, "v2 announced", func() bool {
		lr, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"})
		if err != nil {
			t.Fatal(err)
		}
		l, err := v.trust.VerifyLatest(lr.GetLatest().GetData(), lr.GetLatest().GetSignature())
		if err != nil {
			t.Fatal(err)
		}
		if l.Version != "2" {
			return false
		}
		for _, f := range pub2.Manifest.Files {
			if _, err := n.cache.Stat(f.SHA256); err != nil {
				t.Fatalf("v2 announced but %s is not whole: %v", f.Path, err)
			}
		}
		return true
	})

	// Upstream goes back to serial 1 (a rollback attack, or a stale
	// mirror): after more refreshes the DP still announces 2.
	for name, data := range v1Latest {
		if err := os.WriteFile(filepath.Join(v.repo, "av", name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	asked := ngx.CountRequests(t, "/av/latest.json")
	testenv.WaitFor(t, 30*time.Second, "two more refreshes", func() bool {
		return ngx.CountRequests(t, "/av/latest.json") >= asked+2
	})
	lr, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := v.trust.VerifyLatest(lr.GetLatest().GetData(), lr.GetLatest().GetSignature()); err != nil || l.Serial != 2 {
		t.Fatalf("after upstream offered serial 1, the DP announces %+v (%v), want serial 2", l, err)
	}
}

func TestNode_ConcurrentReadersShareOneFetch(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, map[string]int{"databases/big.dat": 8 << 20})
	// Slow origin: every reader joins the fetch while it is in flight.
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "4m"})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	f := pub.Manifest.Files[0]
	want, err := os.ReadFile(filepath.Join(v.repo, filepath.FromSlash(manifest.BlobPath(f.SHA256))))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := uint64(i) * 1000
			b, err := readBlob(ctx, c, f.SHA256, off)
			if err == nil && !bytes.Equal(b, want[off:]) {
				err = fmt.Errorf("reader at offset %d got %d wrong bytes", off, len(b))
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	whole, err := readBlob(ctx, c, f.SHA256, 0)
	if err != nil || sha(whole) != f.SHA256 {
		t.Fatalf("blob after the fetch: %v", err)
	}
	if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 1 {
		t.Fatalf("origin served the blob %d times to 20 concurrent readers, want 1", got)
	}
}

// smallBudgetNode starts a DP serving in 64 KiB chunks from a budget of 4,
// with the given stall timeout (0: the default), holding whole in its cache
// a blob of size bytes, whose digest it returns with a client.
func smallBudgetNode(t *testing.T, size int, stall time.Duration) (*Node, pb.DistributionServiceClient, string) {
	t.Helper()
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, map[string]int{"databases/big.dat": size})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, func(c *Config) {
		c.ServeChunk = 64 << 10
		c.ServeMemory = 4 * 64 << 10
		if stall > 0 {
			c.StallTimeout = stall
		}
	})
	c := dial(t, n)
	ctx := testCtx(t)
	if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	d := pub.Manifest.Files[0].SHA256
	if b, err := readBlob(ctx, c, d, 0); err != nil || sha(b) != d { // now whole in the cache
		t.Fatalf("first read: %v", err)
	}
	return n, c, d
}

// Streams cancelled mid-blob give their chunk buffers back to the serving
// budget: a leak would starve every later reader.
func TestNode_CancelledStreamsReturnServeBudget(t *testing.T) {
	n, c, d := smallBudgetNode(t, 4<<20, 0)
	ctx := testCtx(t)
	for range 20 {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := c.ReadBlob(sctx, &pb.ReadBlobRequest{Sha256: d})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	testenv.WaitFor(t, 10*time.Second, "serving budget returned", func() bool {
		return n.fetcher.ServeBudgetIdle()
	})
	b, err := readBlob(ctx, c, d, 0)
	if err != nil || sha(b) != d {
		t.Fatalf("reading after cancelled streams: %v", err)
	}
}

// frozenConn is a client connection that stops reading after limit bytes,
// as a process that froze or a laptop put to sleep mid-download: the DP's
// writes to it block once the socket buffers are full.
type frozenConn struct {
	net.Conn
	limit  int64
	read   atomic.Int64
	thawed chan struct{}
}

func (c *frozenConn) Read(p []byte) (int, error) {
	if c.read.Load() >= c.limit {
		<-c.thawed
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// Readers that stop reading mid-blob do not stall the DP's other readers:
// once their queued chunks have gone unwritten for the stall timeout, their
// share of the serving budget goes to the others.
func TestNode_FrozenReadersDoNotStallOthers(t *testing.T) {
	n, c, d := smallBudgetNode(t, 48<<20, time.Second)
	ctx := testCtx(t)

	frozen := &frozenConn{limit: 1 << 20, thawed: make(chan struct{})}
	conn, err := grpc.NewClient("passthrough:///"+n.GRPCAddr(), append(source.DialOptions(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			frozen.Conn = nc
			return frozen, err
		}),
		// No client keepalive: it would find the frozen connection dead
		// and end its streams, as a frozen process does not.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Hour}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		close(frozen.thawed) // first: closing the connection waits for its reader
		conn.Close()
	}()
	fc := pb.NewDistributionServiceClient(conn)
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	for range 2 { // each holds two chunks: the whole budget
		if _, err := fc.ReadBlob(fctx, &pb.ReadBlobRequest{Sha256: d}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 30*time.Second, "the frozen readers to hold the serving budget", func() bool {
		return !n.fetcher.ServeBudgetIdle()
	})
	b, err := readBlob(ctx, c, d, 0)
	if err != nil || sha(b) != d {
		t.Fatalf("reading beside frozen readers: %v", err)
	}
}

func TestNode_ReportStatusIsKept(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	src, err := source.NewGRPC(n.GRPCAddr(), source.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx := testCtx(t)
	want := source.Status{ID: "ep-1", Hostname: "host-1", Site: "paris", Product: "av", Version: "1", Serial: 1, Result: "updated", Reported: time.Unix(1700000000, 0)}
	if err := src.ReportStatus(ctx, want); err != nil {
		t.Fatal(err)
	}
	got := storedReports(t, n)
	if len(got) != 1 || got["ep-1"].GetVersion() != "1" || got["ep-1"].GetSite() != "paris" || got["ep-1"].GetReported().AsTime().Unix() != 1700000000 {
		t.Fatalf("stored reports %v, want the one sent", got)
	}
	// An endpoint that does not say its site is recorded in the DP's.
	if err := src.ReportStatus(ctx, source.Status{ID: "ep-2", Product: "av", Version: "1", Serial: 1, Result: "updated", Reported: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if site := storedReports(t, n)["ep-2"].GetSite(); site != n.cfg.Site {
		t.Fatalf("report without a site recorded in site %q, want the DP's %q", site, n.cfg.Site)
	}

	// A report from the future is recorded at the DP's time (it would win
	// every merge for good); an id with a '/' is refused.
	if err := src.ReportStatus(ctx, source.Status{ID: "ep-3", Product: "av", Version: "1", Serial: 1, Result: "updated", Reported: time.Now().AddDate(100, 0, 0)}); err != nil {
		t.Fatal(err)
	}
	if reported := storedReports(t, n)["ep-3"].GetReported().AsTime(); reported.After(time.Now()) {
		t.Errorf("a report from the future was kept at %v", reported)
	}
	if err := src.ReportStatus(ctx, source.Status{ID: "a/b", Product: "av", Result: "updated"}); !errors.Is(err, source.ErrInvalid) {
		t.Errorf("report with id a/b: %v, want InvalidArgument", err)
	}
}

// storedReports returns the endpoint reports n keeps, by endpoint id.
func storedReports(t *testing.T, n *Node) map[string]*pb.EndpointStatus {
	t.Helper()
	out := map[string]*pb.EndpointStatus{}
	err := n.cache.EndpointReports(func(key string, value []byte) error {
		st := &pb.EndpointStatus{}
		if err := proto.Unmarshal(value, st); err != nil {
			return err
		}
		out[st.GetId()] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestNode_RefreshListBounded: a product name that every upstream answers
// NotFound for is not kept current (a typo was polled every minute, for
// ever); a real one is; at most 1,000 names are kept.
func TestNode_RefreshListBounded(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	c := dial(t, n)
	ctx := testCtx(t)
	if _, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "avbase"}); status.Code(err) != codes.NotFound {
		t.Fatalf("latest of a typo: %v, want NotFound", err)
	}
	if _, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"}); err != nil {
		t.Fatal(err)
	}
	if got := n.catalog.KeptProducts(); !slices.Equal(got, []string{"av"}) {
		t.Errorf("products kept current: %v, want [av]", got)
	}
	for i := range 1100 {
		n.catalog.AddProduct(fmt.Sprintf("flood-%d", i))
	}
	if got := len(n.catalog.KeptProducts()); got != 1000 {
		t.Errorf("%d products kept after a flood of names, want 1000", got)
	}
}

// publishFrozen publishes av 1 into v's repository, current, and the same
// version into another repository as a frozen mirror would offer it
// (expired a day ago); it returns the frozen repository.
func publishFrozen(t *testing.T, v *vendor) string {
	t.Helper()
	frozen := filepath.Join(t.TempDir(), "frozen")
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "base.dat"), []byte("antivirus bases"), 0o644); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-48 * time.Hour)
	if _, err := manifest.Publish(manifest.PublishOptions{Repo: frozen, Product: "av", Version: "1", Key: v.key,
		Expires: 24 * time.Hour, Now: func() time.Time { return past }}, src); err != nil {
		t.Fatal(err)
	}
	if _, err := manifest.Publish(manifest.PublishOptions{Repo: v.repo, Product: "av", Version: "1", Key: v.key, Expires: 24 * time.Hour}, src); err != nil {
		t.Fatal(err)
	}
	return frozen
}

// TestNode_StaleUpstream: a DP whose only upstream offers an expired
// latest.json (a frozen source) still passes the newest version through,
// but shows itself stale in /metrics and on the status page; with a
// current upstream after it, the current one is used and nothing is stale.
func TestNode_StaleUpstream(t *testing.T) {
	v := newVendor(t)
	frozen := publishFrozen(t, v)
	n := startNode(t, v, frozen, nil)
	resp, err := dial(t, n).GetLatest(testCtx(t), &pb.GetLatestRequest{Product: "av"})
	if err != nil {
		t.Fatalf("latest through a DP whose upstream is stale: %v", err)
	}
	l, err := v.trust.VerifyLatest(resp.GetLatest().GetData(), resp.GetLatest().GetSignature())
	if err != nil || !l.Expired(time.Now()) {
		t.Fatalf("latest = %+v, %v; want the expired one passed through", l, err)
	}
	if _, stale := n.catalog.Stale()["av"]; !stale {
		t.Error("the DP does not show av stale")
	}
	for path, want := range map[string]string{"/metrics": `dpcache_upstream_stale{product="av"} 1`, "/": `id="stale"`} {
		r, err := http.Get("http://" + n.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %q", path, want)
		}
	}

	both := startNode(t, v, frozen, func(c *Config) { c.Upstream = []string{frozen, v.repo} })
	if _, err := dial(t, both).GetLatest(testCtx(t), &pb.GetLatestRequest{Product: "av"}); err != nil {
		t.Fatal(err)
	}
	if st := both.catalog.Stale(); len(st) != 0 {
		t.Errorf("with a current upstream after the frozen one, stale = %v", st)
	}
}

// TestNode_UpstreamDown: a DP that holds nothing and whose every upstream
// refuses connections is not ready, says so on its status page and counts
// the failures in /metrics (it answered /readyz 200 and showed nothing);
// once the upstream answers, it is ready again and the metrics date the
// success.
func TestNode_UpstreamDown(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	addr := testenv.FreeAddr(t, "127.0.0.1") // nothing listens there yet
	upstream := "http://" + addr + "/"
	n := startNode(t, v, upstream, nil)
	get := func(path string) (int, string) {
		t.Helper()
		r, err := http.Get("http://" + n.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	if _, err := dial(t, n).GetLatest(testCtx(t), &pb.GetLatestRequest{Product: "av"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("latest with the upstream down: %v, want Unavailable", err)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "every upstream failing") {
		t.Errorf("/readyz with nothing held and the upstream down: %d %q, want 503 naming the upstream", code, body)
	}
	_, metrics := get("/metrics")
	for _, want := range []string{
		fmt.Sprintf("dpcache_upstream_failing{source=%q} 1", upstream),
		fmt.Sprintf("dpcache_upstream_errors_total{source=%q} ", upstream),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(metrics, "dpcache_upstream_errors_total{source=\""+upstream+"\"} 0") {
		t.Error("/metrics counts no upstream error")
	}
	if _, page := get("/"); !strings.Contains(page, `id="upstream-down"`) {
		t.Error(`the status page shows no "upstream unreachable" banner`)
	}

	// The origin comes up at the upstream's address.
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	origin := &http.Server{Handler: http.FileServer(http.Dir(v.repo)), ReadHeaderTimeout: 10 * time.Second}
	go origin.Serve(lis)
	t.Cleanup(func() { origin.Close() })
	if _, err := dial(t, n).GetLatest(testCtx(t), &pb.GetLatestRequest{Product: "av"}); err != nil {
		t.Fatalf("latest once the upstream is back: %v", err)
	}
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with the upstream back: %d %q, want 200", code, body)
	}
	_, metrics = get("/metrics")
	for _, want := range []string{
		fmt.Sprintf("dpcache_upstream_failing{source=%q} 0", upstream),
		fmt.Sprintf("dpcache_upstream_last_success_timestamp_seconds{source=%q} ", upstream),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q once the upstream is back", want)
		}
	}
	if _, page := get("/"); strings.Contains(page, `id="upstream-down"`) {
		t.Error(`the "upstream unreachable" banner stays once the upstream is back`)
	}
}

// TestNode_TransportLimits: one client connection cannot open more than
// MaxStreams calls at once (the next waits for one to end), and an HTTP
// request with oversized headers is refused (431) without harming the DP.
func TestNode_TransportLimits(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	n := startNode(t, v, v.repo, nil)
	c := dial(t, n)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	if _, err := c.GetLatest(ctx, &pb.GetLatestRequest{Product: "av"}); err != nil {
		t.Fatal(err)
	}
	var streams []pb.DistributionService_WatchLatestClient
	for range pb.MaxStreams {
		s, err := c.WatchLatest(ctx, &pb.WatchLatestRequest{Product: "av"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil { // the stream is open on the server
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	over, overCancel := context.WithTimeout(ctx, time.Second)
	_, err := c.GetLatest(over, &pb.GetLatestRequest{Product: "av"})
	overCancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a call beyond %d open streams on one connection: %v, want it to wait (DeadlineExceeded)", pb.MaxStreams, err)
	}
	cancel() // end the streams: calls go through again
	for _, s := range streams {
		s.Recv()
	}
	if _, err := dial(t, n).GetLatest(testCtx(t), &pb.GetLatestRequest{Product: "av"}); err != nil {
		t.Errorf("GetLatest once the streams ended: %v", err)
	}

	req, _ := http.NewRequest(http.MethodGet, "http://"+n.HTTPAddr()+"/healthz", nil)
	req.Header.Set("X-Flood", strings.Repeat("a", 256<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("256 KiB of headers: %s, want 431", resp.Status)
	}
	if r, err := http.Get("http://" + n.HTTPAddr() + "/healthz"); err != nil || r.StatusCode != http.StatusOK {
		t.Errorf("/healthz after the flood: %v %v", r, err)
	} else {
		r.Body.Close()
	}
}
