package node

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/fetch"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

func TestUpstreamLimiter(t *testing.T) {
	t.Parallel()
	if newUpstreamLimiter(0) != nil {
		t.Fatal("rate 0 must be unlimited")
	}
	tests := []struct {
		rate  int64
		burst int
	}{{1000, 4 << 10}, {500 << 10, 500 << 10 / 8}, {10 << 20, 256 << 10}}
	for _, tt := range tests {
		if got := newUpstreamLimiter(tt.rate).Burst(); got != tt.burst {
			t.Errorf("rate %d: burst %d, want %d", tt.rate, got, tt.burst)
		}
	}
}

func dialAdmin(t testing.TB, n *Node) pb.AdminServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+n.GRPCAddr(), source.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewAdminServiceClient(conn)
}

// prefetchAll runs the Prefetch RPC and returns every message.
func prefetchAll(ctx context.Context, c pb.AdminServiceClient, product string) ([]*pb.PrefetchResponse, error) {
	stream, err := c.Prefetch(ctx, &pb.PrefetchRequest{Product: product})
	if err != nil {
		return nil, err
	}
	var out []*pb.PrefetchResponse
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

// The download task keeps a configured product current in every DP of a
// cluster without any endpoint asking; each site fetches each blob once.
func TestPrefetch_ClusterHoldsNewVersionWithoutRequests(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, map[string]int{"databases/a.dat": 1 << 20, "modules/m.bin": 512 << 10})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "32m"})
	nodes := startClusterWith(t, v, ngx.URL, func(c *Config) {
		c.Products = []string{"av"}
		c.PrefetchInterval = 300 * time.Millisecond
		c.Refresh = time.Hour // only the download task may act
	}, "paris", "paris", "paris", "lyon")
	holds := func(serial uint64) func() bool {
		return func() bool {
			for _, n := range nodes {
				if hv, err := n.cache.LatestVersion("av"); err != nil || hv.Serial != serial {
					return false
				}
			}
			return true
		}
	}
	testenv.WaitFor(t, 30*time.Second, "every DP holds v1", holds(1))

	pub := v.publish(t, "av", "2", 2, map[string]int{
		"databases/a.dat": 3 << 20, "databases/b.dat": 2 << 20, "databases/c.dat": 1 << 20, "modules/m.bin": 2 << 20,
	})
	testenv.WaitFor(t, 30*time.Second, "every DP holds v2 with no endpoint asking", holds(2))
	for _, f := range pub.Manifest.Blobs() {
		if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 2 {
			t.Errorf("origin served %s %d times to two sites, want 2 (once per site)", f.Path, got)
		}
	}
	for _, n := range nodes {
		if tr := n.Traffic(); tr.ServedBytes > 0 && n.cfg.Site == "lyon" {
			t.Errorf("lyon served %d bytes: it is alone in its site", tr.ServedBytes)
		}
	}
}

// Prefetch streams the progress of a version's completion and ends with
// done; asked again, it answers done at once.
func TestPrefetch_RPCStreamsProgress(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, map[string]int{
		"databases/a.dat": 4 << 20, "databases/b.dat": 1 << 20, "databases/empty": 0, "modules/m.bin": 2 << 20,
	})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{LimitRate: "4m"})
	n := startNode(t, v, ngx.URL, func(c *Config) { c.FetchParallel = 1 })
	c := dialAdmin(t, n)
	ctx := testCtx(t)

	msgs, err := prefetchAll(ctx, c, "av")
	if err != nil {
		t.Fatalf("Prefetch: %v", err)
	}
	if len(msgs) < 3 {
		t.Fatalf("Prefetch sent %d messages for a 7 MiB version at 4 MB/s, want progress along the way", len(msgs))
	}
	var prev *pb.PrefetchResponse
	for i, m := range msgs {
		if m.GetProduct() != "av" || m.GetVersion() != "1" || m.GetSerial() != 1 {
			t.Fatalf("message %d names %s %s %d", i, m.GetProduct(), m.GetVersion(), m.GetSerial())
		}
		if m.GetDone() != (i == len(msgs)-1) {
			t.Fatalf("message %d of %d: done %v", i, len(msgs), m.GetDone())
		}
		if prev != nil && (m.GetBytesDone() < prev.GetBytesDone() || m.GetBlobsDone() < prev.GetBlobsDone()) {
			t.Fatalf("progress went back: %v then %v", prev, m)
		}
		if m.GetBytesDone() > m.GetBytesTotal() || m.GetBlobsDone() > m.GetBlobsTotal() {
			t.Fatalf("done beyond total: %v", m)
		}
		prev = m
	}
	last := msgs[len(msgs)-1]
	blobs := pub.Manifest.Blobs()
	if last.GetBlobsTotal() != uint64(len(blobs)) || last.GetBlobsDone() != last.GetBlobsTotal() ||
		last.GetBytesTotal() != uint64(pub.Manifest.Size()) || last.GetBytesDone() != last.GetBytesTotal() {
		t.Fatalf("last message %v, want %d blobs and %d bytes, all done", last, len(blobs), pub.Manifest.Size())
	}
	partial := false
	for _, m := range msgs {
		if m.GetBytesDone() > 0 && m.GetBytesDone() < m.GetBytesTotal() {
			partial = true
		}
	}
	if !partial {
		t.Errorf("no message showed partial progress: %v", msgs)
	}
	if hv, err := n.cache.LatestVersion("av"); err != nil || hv.Serial != 1 {
		t.Fatalf("after Prefetch the DP holds %+v (%v), want serial 1", hv, err)
	}
	// Databases before modules: the module's request comes last.
	var order []string
	for _, e := range ngx.Requests(t) {
		if strings.Contains(e.URI, "/blobs/") {
			order = append(order, e.URI)
		}
	}
	var mod manifest.File
	for _, f := range pub.Manifest.Files {
		if f.Component == manifest.ComponentModules {
			mod = f
		}
	}
	if len(order) == 0 || order[len(order)-1] != "/"+manifest.BlobPath(mod.SHA256) {
		t.Errorf("origin requests %v: the module's blob should come after every database blob", order)
	}

	again, err := prefetchAll(ctx, c, "av")
	if err != nil || len(again) != 1 || !again[0].GetDone() || again[0].GetBytesDone() != uint64(pub.Manifest.Size()) {
		t.Fatalf("Prefetch of a held version: %v, %v; want one done message", again, err)
	}

	for _, tc := range []struct {
		product string
		want    codes.Code
	}{{"nope", codes.NotFound}, {"../x", codes.InvalidArgument}} {
		if _, err := prefetchAll(ctx, c, tc.product); status.Code(err) != tc.want {
			t.Errorf("Prefetch(%q): %v, want %v", tc.product, err, tc.want)
		}
	}
}

// logCapture records log messages for tests to wait on.
type logCapture struct {
	slog.Handler
	mu   *sync.Mutex
	msgs *[]string
}

func newLogCapture(t testing.TB) (*slog.Logger, func(substr string) bool) {
	var mu sync.Mutex
	var msgs []string
	h := logCapture{slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug}), &mu, &msgs}
	seen := func(substr string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			if strings.Contains(m, substr) {
				return true
			}
		}
		return false
	}
	return slog.New(h), seen
}

func (h logCapture) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	*h.msgs = append(*h.msgs, r.Message)
	h.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	return logCapture{h.Handler.WithAttrs(as), h.mu, h.msgs}
}

func (h logCapture) WithGroup(name string) slog.Handler {
	return logCapture{h.Handler.WithGroup(name), h.mu, h.msgs}
}

// Outside --upstream-window the download task finds the version but
// fetches nothing; endpoint misses and an admin's Prefetch still work.
func TestPrefetch_OutsideWindowWaits(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	h, m, s := time.Now().Clock()
	now := time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second
	closed := Window{From: (now + 2*time.Hour) % (24 * time.Hour), To: (now + 3*time.Hour) % (24 * time.Hour)}
	logger, seen := newLogCapture(t)
	n := startNode(t, v, ngx.URL, func(c *Config) {
		c.Products = []string{"av"}
		c.UpstreamWindow = closed
		c.Logger = logger
	})
	testenv.WaitFor(t, 10*time.Second, "the download task waits for the window", func() bool {
		return seen("outside the upstream window")
	})
	for _, f := range pub.Manifest.Blobs() {
		if got := ngx.CountRequests(t, manifest.BlobPath(f.SHA256)); got != 0 {
			t.Fatalf("outside its window the download task fetched %s %d times", f.Path, got)
		}
	}
	msgs, err := prefetchAll(testCtx(t), dialAdmin(t, n), "av")
	if err != nil || len(msgs) == 0 || !msgs[len(msgs)-1].GetDone() {
		t.Fatalf("Prefetch outside the window: %v, %v", msgs, err)
	}
	if hv, err := n.cache.LatestVersion("av"); err != nil || hv.Serial != pub.Latest.Serial {
		t.Fatalf("held %+v, %v", hv, err)
	}
}

// --upstream-rate bounds the bytes the download task reads from upstream
// (DESIGN.md: "limit the download task's fetches (not endpoint-driven
// ones, nor dpcache prefetch)"): every byte it reads from upstream is
// charged to the token bucket before it is used (the bucket's pacing is
// golang.org/x/time/rate's); what prefetch or an endpoint waits for is
// not charged, nor are reads from peers.
func TestPrefetch_UpstreamRateLimits(t *testing.T) {
	const size, limit = 3 << 20, 2 << 20
	start := func(t *testing.T, products []string, rateLimit int64) (*vendor, *Node, *atomic.Int64, string) {
		v := newVendor(t)
		pub := v.publish(t, "av", "1", 1, map[string]int{"databases/big.dat": size})
		ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
		var charged atomic.Int64
		n := startNodeHooks(t, v, []string{ngx.URL}, func(c *Config) { c.UpstreamRate, c.Products = rateLimit, products }, nil, testHooks{
			wrapLimiter: func(fl fetch.Limiter) fetch.Limiter {
				l, ok := fl.(*rate.Limiter)
				if !ok || l.Limit() != rate.Limit(rateLimit) {
					t.Errorf("limiter %v, want %d B/s", fl, rateLimit)
					return fl
				}
				return chargedLimiter{l, &charged}
			},
		})
		return v, n, &charged, pub.Manifest.Files[0].SHA256
	}
	held := func(n *Node) bool {
		hv, err := n.cache.LatestVersion("av")
		return err == nil && hv.Serial == 1
	}

	t.Run("download task", func(t *testing.T) {
		_, n, charged, digest := start(t, []string{"av"}, limit)
		testenv.WaitFor(t, 30*time.Second, "the download task to hold av 1", func() bool { return held(n) })
		if got, up := charged.Load(), n.Traffic().UpstreamBytes; got != up || got != size {
			t.Fatalf("charged %d bytes to the rate limit for %d read upstream, want both %d", got, up, size)
		}
		b, err := readBlob(testCtx(t), dial(t, n), digest, 0)
		if err != nil || sha(b) != digest {
			t.Fatalf("blob after a limited fetch: %v", err)
		}
	})
	t.Run("prefetch", func(t *testing.T) {
		_, n, charged, _ := start(t, nil, limit)
		msgs, err := prefetchAll(testCtx(t), dialAdmin(t, n), "av")
		if err != nil || !msgs[len(msgs)-1].GetDone() {
			t.Fatalf("Prefetch: %v, %v", msgs, err)
		}
		if got, up := charged.Load(), n.Traffic().UpstreamBytes; got != 0 || up != size {
			t.Fatalf("prefetch: charged %d bytes to the rate limit for %d read upstream, want 0 for %d", got, up, size)
		}
	})
	t.Run("endpoint", func(t *testing.T) {
		v, n, charged, _ := start(t, nil, limit)
		res := updateAll(t, v, "av", []source.Source{grpcSource(t, n.GRPCAddr())})
		if res[0].Serial != 1 {
			t.Fatalf("update through the DP: %+v", res[0])
		}
		if got, up := charged.Load(), n.Traffic().UpstreamBytes; got != 0 || up != size {
			t.Fatalf("endpoint: charged %d bytes to the rate limit for %d read upstream, want 0 for %d", got, up, size)
		}
	})
	// A peer DP's download task asks this DP (the blob's owner) for the
	// version: its requests carry the mark (source.BackgroundKey), so the
	// completion and the fetch upstream they cause here are the site's
	// download, limited.
	t.Run("a peer's download task", func(t *testing.T) {
		_, n, charged, digest := start(t, nil, limit)
		peer := grpcSource(t, n.GRPCAddr())
		var limited atomic.Bool
		limited.Store(true)
		ctx := source.WithBackground(testCtx(t), &limited)
		if _, err := peer.Manifest(ctx, "av", "1"); err != nil {
			t.Fatal(err)
		}
		r, err := peer.Blob(ctx, digest, 0)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil || sha(b) != digest {
			t.Fatalf("blob through the DP: %v", err)
		}
		if got, up := charged.Load(), n.Traffic().UpstreamBytes; got != up || got != size {
			t.Fatalf("charged %d bytes to the rate limit for %d read upstream, want both %d", got, up, size)
		}
	})
	// The download task is fetching slowly (64 KiB/s: 48 s for the
	// blob) when prefetch asks for the same version: the rest of the
	// fetch is not limited.
	t.Run("prefetch joins the download task", func(t *testing.T) {
		_, n, charged, _ := start(t, []string{"av"}, 64<<10)
		testenv.WaitFor(t, 30*time.Second, "the download task to read from upstream", func() bool { return charged.Load() > 0 })
		msgs, err := prefetchAll(testCtx(t), dialAdmin(t, n), "av")
		if err != nil || !msgs[len(msgs)-1].GetDone() {
			t.Fatalf("Prefetch: %v, %v", msgs, err)
		}
		if got, up := charged.Load(), n.Traffic().UpstreamBytes; got >= size || up != size {
			t.Fatalf("charged %d bytes to the rate limit for %d read upstream, want less than %d: prefetch waits for the rest", got, up, size)
		}
	})
}

// chargedLimiter counts what is charged to an upstream limiter.
type chargedLimiter struct {
	*rate.Limiter
	charged *atomic.Int64
}

func (l chargedLimiter) WaitN(ctx context.Context, n int) error {
	l.charged.Add(int64(n))
	return l.Limiter.WaitN(ctx, n)
}
