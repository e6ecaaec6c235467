package node

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/ops"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// startNodeWith is startNode with a hook that adjusts the Node after New
// and before Run (for fields that Run's goroutines read).
func startNodeWith(t testing.TB, v *vendor, upstream []string, mod func(*Config), prep func(*Node)) *Node {
	t.Helper()
	return startNodeHooks(t, v, upstream, mod, prep, testHooks{})
}

// startNodeHooks is startNodeWith with test hooks.
func startNodeHooks(t testing.TB, v *vendor, upstream []string, mod func(*Config), prep func(*Node), hooks testHooks) *Node {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = "dp-test"
	cfg.DataDir = t.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Upstream = upstream
	cfg.Trust = v.trust
	cfg.Refresh = 200 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelInfo}))
	if _, ok := t.(*testing.B); ok {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := newNode(cfg, hooks)
	if err != nil {
		t.Fatal(err)
	}
	if prep != nil {
		prep(n)
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

// get fetches url and returns the status code and body.
func get(t testing.TB, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads a DP's /metrics over HTTP: the series (name with labels, as
// printed) and their values, and the raw text.
func scrape(t testing.TB, n *Node) (map[string]float64, string) {
	t.Helper()
	code, body := get(t, "http://"+n.HTTPAddr()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: HTTP %d: %s", code, body)
	}
	series := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics: unparsable line %q", line)
		}
		series[line[:i]] = v
	}
	return series, body
}

// promtoolCheck runs `promtool check metrics` (the Prometheus linter) on
// an exposition.
func promtoolCheck(t *testing.T, exposition string) {
	t.Helper()
	promtool := testenv.RequireBinary(t, "promtool")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// The counters match the bytes the test moved, exactly: misses then hits
// over gRPC, a hit over HTTP, upstream bytes attributed to the source that
// sent them (and the failing source before it, whose password never shows).
func TestMetrics_CountersMatchBytesMoved(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	down := "http://dp:s3cret@" + testenv.FreeAddr(t, "127.0.0.1") + "/"
	ages := map[string]int{"current": 7, "24h": 2, "3d": 1, "7d": 0}
	n := startNodeWith(t, v, []string{down, ngx.URL}, func(c *Config) {
		c.CacheMax = 1 << 30
		c.Refresh = time.Hour // no background completion: the reads decide hits and misses
	}, func(n *Node) {
		n.endpointCounts = func() *ops.EndpointCounts {
			return &ops.EndpointCounts{Ages: ages, Results: map[string]int{"updated": 3, "up-to-date": 4, "held": 0, "stale": 2, "failed": 1}}
		}
	})
	c := dial(t, n)
	ctx := testCtx(t)

	// GetManifest only (not GetLatest), and no refresh within the test:
	// nothing completes the version in the background, so the first read
	// of each blob is a miss.
	if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	blobs := pub.Manifest.Blobs()
	var total int64
	for round := range 2 {
		for _, f := range blobs {
			b, err := readBlob(ctx, c, f.SHA256, 0)
			if err != nil || sha(b) != f.SHA256 {
				t.Fatalf("round %d: %s: %v", round, f.Path, err)
			}
			if round == 0 {
				total += f.Size
			}
		}
	}
	big := slices.MaxFunc(blobs, func(a, b manifest.File) int { return int(a.Size - b.Size) })
	code, body := get(t, "http://"+n.HTTPAddr()+repoPrefix+manifest.BlobPath(big.SHA256))
	if code != http.StatusOK || sha([]byte(body)) != big.SHA256 {
		t.Fatalf("HTTP blob: %d", code)
	}

	got, text := scrape(t, n)
	downLabel, upLabel := n.upstream[0].String(), n.upstream[1].String()
	want := map[string]float64{
		`dpcache_serve_bytes_total`:                                float64(2*total + big.Size),
		`dpcache_upstream_bytes_total{source="` + upLabel + `"}`:   float64(total),
		`dpcache_upstream_bytes_total{source="` + downLabel + `"}`: 0,
		`dpcache_peer_bytes_total`:                                 0,
		`dpcache_cache_requests_total{result="miss"}`:              float64(len(blobs)),
		`dpcache_cache_requests_total{result="hit"}`:               float64(len(blobs) + 1),
		`dpcache_cache_blobs`:                                      float64(len(blobs)),
		`dpcache_cache_bytes`:                                      float64(total),
		`dpcache_cache_pending_blobs`:                              0,
		`dpcache_cache_max_bytes`:                                  1 << 30,
		`dpcache_cache_evictions_total`:                            0,
		`dpcache_fetches_in_flight`:                                0,
		`dpcache_gossip_members{state="alive"}`:                    1,
		`dpcache_gossip_members{state="dead"}`:                     0,
		`dpcache_endpoints{age="current"}`:                         7,
		`dpcache_endpoints{age="3d"}`:                              1,
		`dpcache_endpoints{age="7d"}`:                              0,
		`dpcache_endpoint_results{result="stale"}`:                 2,
		`dpcache_endpoint_results{result="failed"}`:                1,
		`dpcache_node_info{name="dp-test",site="default"}`:         1,
		`dpcache_http_requests_total{code="200",handler="/repo/"}`: 1,
		`dpcache_grpc_requests_total{code="OK",method="ReadBlob",service="dpcache.v1.DistributionService"}`:    float64(2 * len(blobs)),
		`dpcache_grpc_requests_total{code="OK",method="GetManifest",service="dpcache.v1.DistributionService"}`: 1,
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s missing from /metrics", k)
		} else if g != w {
			t.Errorf("%s = %v, want %v", k, g, w)
		}
	}
	if tr := n.Traffic(); float64(tr.ServedBytes) != got[`dpcache_serve_bytes_total`] || tr.UpstreamBytes != total {
		t.Errorf("Traffic() %+v disagrees with /metrics", tr)
	}
	if got[`dpcache_disk_free_bytes`] <= 0 || got[`dpcache_cache_file_bytes`] <= 0 {
		t.Errorf("disk free %v, cache file %v", got[`dpcache_disk_free_bytes`], got[`dpcache_cache_file_bytes`])
	}
	if strings.Contains(text, "s3cret") {
		t.Error("/metrics shows an upstream password")
	}
	if _, ok := got[`go_goroutines`]; !ok {
		t.Error("a DP's own registry lacks the Go runtime collector")
	}
	get(t, "http://"+n.HTTPAddr()+"/")
	if got, _ := scrape(t, n); got[`dpcache_http_requests_total{code="200",handler="/"}`] != 1 {
		t.Errorf("status page requests not counted under handler \"/\"")
	}
	promtoolCheck(t, text)
}

// Evictions reported through the hook show up as counters.
func TestMetrics_EvictedHook(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, nil)
	n.metrics.Evicted(3, 12345)
	n.metrics.Evicted(1, 5)
	got, _ := scrape(t, n)
	if got["dpcache_cache_evictions_total"] != 4 || got["dpcache_cache_evicted_bytes_total"] != 12350 {
		t.Fatalf("evictions %v, bytes %v; want 4 and 12350", got["dpcache_cache_evictions_total"], got["dpcache_cache_evicted_bytes_total"])
	}
	var off *ops.Metrics // metrics disabled: every hook is a no-op
	off.Evicted(1, 1)
	off.CacheRequest(true)
	if off.UpstreamBytes(n.upstream[0]) != nil {
		t.Fatal("disabled metrics count upstream bytes")
	}
}

// A cluster: peer bytes and members by state; the sum over DPs of
// upstream bytes is what the origin served.
func TestMetrics_Cluster(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	nodes := startClusterWith(t, v, ngx.URL, quietAfterTest(t), "paris", "paris")
	updateAll(t, v, "av", grpcSources(t, nodes, 2))
	testenv.WaitFor(t, 30*time.Second, "both DPs hold v1", func() bool {
		for _, n := range nodes {
			if hv, err := n.cache.LatestVersion("av"); err != nil || hv.Version != "1" {
				return false
			}
		}
		return true
	})
	var upstream, peer float64
	for _, n := range nodes {
		got, text := scrape(t, n.Node)
		tr := n.Traffic()
		up := got[`dpcache_upstream_bytes_total{source="`+n.upstream[0].String()+`"}`]
		if up != float64(tr.UpstreamBytes) || got["dpcache_peer_bytes_total"] != float64(tr.PeerBytes) || got["dpcache_serve_bytes_total"] != float64(tr.ServedBytes) {
			t.Errorf("%s: /metrics upstream %v peer %v served %v, Traffic() %+v", n.cfg.Name, up, got["dpcache_peer_bytes_total"], got["dpcache_serve_bytes_total"], tr)
		}
		if got[`dpcache_gossip_members{state="alive"}`] != 2 {
			t.Errorf("%s: %v members alive, want 2", n.cfg.Name, got[`dpcache_gossip_members{state="alive"}`])
		}
		if got[`dpcache_cache_latest_serial{product="av"}`] != 1 {
			t.Errorf("%s: latest serial %v, want 1", n.cfg.Name, got[`dpcache_cache_latest_serial{product="av"}`])
		}
		upstream += up
		peer += got["dpcache_peer_bytes_total"]
		promtoolCheck(t, text)
	}
	if want := float64(ngx.BytesServed(t, "/blobs/")); upstream != want {
		t.Errorf("DPs counted %v upstream bytes, the origin served %v", upstream, want)
	}
	if upstream+peer < float64(2*pub.Manifest.Size()) {
		t.Errorf("the DPs took %v bytes from upstream and peers, less than the two copies they hold (%d)", upstream+peer, 2*pub.Manifest.Size())
	}
}

// /readyz: 503 before Run and while stopping, 200 while serving.
func TestMetrics_Readyz(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	cfg := DefaultConfig()
	cfg.Name, cfg.DataDir = "dp-ready", t.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Upstream, cfg.Trust = []string{ngx.URL}, v.trust
	cfg.Logger = slog.New(slog.NewTextHandler(newTestWriter(t), nil))
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ready := func() int {
		rec := httptest.NewRecorder()
		n.httpHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code
	}
	if got := ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("before Run: /readyz %d, want 503", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	testenv.WaitFor(t, 10*time.Second, "/readyz 200 over HTTP", func() bool {
		code, _ := get(t, "http://"+n.HTTPAddr()+"/readyz")
		return code == http.StatusOK
	})
	if code, body := get(t, "http://"+n.HTTPAddr()+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := ready(); got != http.StatusServiceUnavailable {
		t.Fatalf("stopped: /readyz %d, want 503", got)
	}
}

// Metrics off: /metrics is 404, nothing is registered, serving and the
// status page work.
func TestMetrics_Disabled(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	reg := prometheus.NewRegistry()
	n := startNode(t, v, ngx.URL, func(c *Config) { c.DisableMetrics, c.Registry = true, reg })
	c := dial(t, n)
	ctx := testCtx(t)
	if _, err := c.GetManifest(ctx, &pb.GetManifestRequest{Product: "av", Version: "1"}); err != nil {
		t.Fatal(err)
	}
	f := pub.Manifest.Blobs()[0]
	if b, err := readBlob(ctx, c, f.SHA256, 0); err != nil || sha(b) != f.SHA256 {
		t.Fatal(err)
	}
	if code, _ := get(t, "http://"+n.HTTPAddr()+"/metrics"); code != http.StatusNotFound {
		t.Fatalf("/metrics with metrics off: %d, want 404", code)
	}
	if code, _ := get(t, "http://"+n.HTTPAddr()+"/"); code != http.StatusOK {
		t.Fatalf("status page with metrics off: %d", code)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Fatalf("metrics off, yet the registry holds %d families (%v)", len(mfs), err)
	}
}

// An injected registry receives the metrics; a second DP on the same
// registry is refused rather than mixing two DPs' figures.
func TestMetrics_InjectedRegistry(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	reg := prometheus.NewRegistry()
	startNode(t, v, ngx.URL, func(c *Config) { c.Registry = reg })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if !slices.Contains(names, "dpcache_serve_bytes_total") || slices.Contains(names, "go_goroutines") {
		t.Fatalf("injected registry holds %v: want the DP's metrics and no Go collector", names)
	}
	cfg := DefaultConfig()
	cfg.Name, cfg.DataDir = "dp-2", t.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Upstream, cfg.Trust, cfg.Registry = []string{ngx.URL}, v.trust, reg
	cfg.Logger = slog.New(slog.DiscardHandler)
	n2, err := New(cfg)
	if err == nil {
		n2.Close()
		t.Fatal("a second DP registered on the same registry")
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("second DP on one registry: %v, want an AlreadyRegisteredError", err)
	}
}

// BenchmarkServeMetrics measures a DP serving a cached blob over gRPC to an
// in-process client with metrics on against the same with metrics off
// (Config.DisableMetrics), measured in the same run: six adjacent pairs of
// reads; ratio is the median of the pairs' ratios (best-ratio compares the
// best of each side). 256 MiB; -short uses 64 MiB. Target: ratio ≥ 0.97.
func BenchmarkServeMetrics(b *testing.B) {
	size := 256 << 20
	if testing.Short() {
		size = 64 << 20
	}
	v := newVendor(b)
	pub := v.publish(b, "av", "1", 1, map[string]int{"databases/big.dat": size})
	digest := pub.Manifest.Files[0].SHA256
	ngx := testenv.StartNginx(b, v.repo, testenv.NginxOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	on := startNode(b, v, ngx.URL, nil)
	off := startNode(b, v, ngx.URL, func(c *Config) { c.DisableMetrics = true })
	read := map[*Node]func() float64{}
	for _, n := range []*Node{on, off} {
		if _, _, err := n.catalog.ManifestDoc(ctx, "av", "1"); err != nil {
			b.Fatal(err)
		}
		if err := n.fetcher.EnsureBlob(ctx, digest); err != nil {
			b.Fatal(err)
		}
		conn, err := grpc.NewClient("passthrough:///"+n.GRPCAddr(), source.DialOptions()...)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		c := pb.NewDistributionServiceClient(conn)
		read[n] = func() float64 {
			start := time.Now()
			stream, err := c.ReadBlob(ctx, &pb.ReadBlobRequest{Sha256: digest})
			if err != nil {
				b.Fatal(err)
			}
			var got int
			for {
				m, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				got += len(m.Data)
			}
			if got != size {
				b.Fatalf("read %d bytes, want %d", got, size)
			}
			return float64(size) / time.Since(start).Seconds() / 1e6
		}
	}
	read[on]() // warm both paths
	read[off]()
	// Adjacent pairs, in alternating order, so that the load of a shared
	// machine weighs on both sides alike; the ratio is the median of the
	// pairs' ratios.
	var withM, without, ratios []float64
	for range b.N {
		for i := range 6 {
			var a, z float64
			if i%2 == 0 {
				z, a = read[off](), read[on]()
			} else {
				a, z = read[on](), read[off]()
			}
			withM, without, ratios = append(withM, a), append(without, z), append(ratios, a/z)
		}
	}
	slices.Sort(ratios)
	median := (ratios[(len(ratios)-1)/2] + ratios[len(ratios)/2]) / 2
	bon, boff := slices.Max(withM), slices.Max(without)
	b.ReportMetric(bon, "metrics-MB/s")
	b.ReportMetric(boff, "no-metrics-MB/s")
	b.ReportMetric(median, "ratio")
	b.ReportMetric(bon/boff, "best-ratio")
	b.Logf("metrics on %v MB/s, off %v MB/s; median pair ratio %.3f, best-of ratio %.3f", ints(withM), ints(without), median, bon/boff)
	if got, _ := scrape(b, on); got["dpcache_serve_bytes_total"] < float64(size) {
		b.Fatalf("served bytes %v", got["dpcache_serve_bytes_total"])
	}
}
