// Package bench holds the load benchmarks of a distribution point run as a
// separate process, each against a baseline measured in the same run: nginx
// serving the same bytes, the DP itself idle, or the DP over plain gRPC for
// its TLS figures (tls_bench_test.go). Run them with
//
//	go test -run '^$' -bench . -benchtime 1x ./e2e/bench/
//
// (-short shrinks the blob from 1 GiB to 256 MiB).
package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// setup is a published product with one big blob, served by nginx and by a
// DP process that holds it whole.
type setup struct {
	size     int64
	digest   string
	ngx      *testenv.Nginx
	node     *testenv.Proc
	dp       *source.GRPC
	grpcAddr string

	bin, dir string
	// connect returns a new connection to the DP, as an endpoint makes:
	// plain gRPC, or TLS once restartTLS has run.
	connect func() (*source.GRPC, error)
}

func newSetup(b *testing.B, size int64) *setup {
	b.Helper()
	bin := testenv.BuildDpcache(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "src", "databases")
	if err := os.MkdirAll(src, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := writeRandom(filepath.Join(src, "big.dat"), size); err != nil {
		b.Fatal(err)
	}
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vendor.pub"), pub, 0o644); err != nil {
		b.Fatal(err)
	}
	repo := filepath.Join(dir, "repo")
	res, err := manifest.Publish(manifest.PublishOptions{Repo: repo, Product: "bench", Version: "1", Key: key}, filepath.Join(dir, "src"))
	if err != nil {
		b.Fatal(err)
	}
	s := &setup{size: size, digest: res.Manifest.Files[0].SHA256, bin: bin, dir: dir}
	s.ngx = testenv.StartNginx(b, repo, testenv.NginxOptions{})
	s.startNode(b, http.DefaultClient, "http")
	s.connect = func() (*source.GRPC, error) { return source.NewGRPC(s.grpcAddr, source.DefaultOptions()) }
	s.dp, err = s.connect()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.dp.Close() })
	// Warm the DP: the manifest, then the blob once (the stream ends only
	// after the blob is verified and whole in the cache).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := s.dp.Manifest(ctx, "bench", "1"); err != nil {
		b.Fatal(err)
	}
	if n, err := s.readDP(ctx, 0, size); err != nil || n != size {
		b.Fatalf("warming the DP: %d bytes, %v", n, err)
	}
	return s
}

// startNode starts the DP on the data directory of s, with extra flags,
// on new ports, and waits until its /healthz answers over scheme.
func (s *setup) startNode(b *testing.B, client *http.Client, scheme string, extra ...string) {
	b.Helper()
	grpcAddr, httpAddr := testenv.FreeAddr(b, "127.0.0.1"), testenv.FreeAddr(b, "127.0.0.1")
	s.node = testenv.StartProc(b, s.bin, append([]string{"node", "--name", "bench", "--data", filepath.Join(s.dir, "dp"),
		"--grpc", grpcAddr, "--http", httpAddr, "--gossip", "127.0.0.1:0", "--upstream", s.ngx.URL,
		"--trust", filepath.Join(s.dir, "vendor.pub"), "--log-level", "warn"}, extra...)...)
	testenv.WaitFor(b, 30*time.Second, "node healthy", func() bool {
		if s.node.Exited() {
			b.Fatalf("the DP exited: %s", s.node.Stderr())
		}
		resp, err := client.Get(scheme + "://" + httpAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	s.grpcAddr = grpcAddr
}

func writeRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{1})
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, rng, size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readDP reads n bytes of the blob from off through the DP's gRPC API, on
// a connection of its own, as each endpoint has (the nginx baseline's
// clients have theirs too).
func (s *setup) readDP(ctx context.Context, off, n int64) (int64, error) {
	dp, err := s.connect()
	if err != nil {
		return 0, err
	}
	defer dp.Close()
	r, err := dp.Blob(ctx, s.digest, off)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return io.Copy(io.Discard, io.LimitReader(r, n))
}

var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}

// readNginx reads n bytes of the blob from off over HTTP from nginx.
func (s *setup) readNginx(ctx context.Context, off, n int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", s.ngx.URL+manifest.BlobPath(s.digest), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("nginx: %s", resp.Status)
	}
	return io.Copy(io.Discard, resp.Body)
}

// parallel runs clients readers at once, each reading per bytes at its own
// offset, and returns the aggregate throughput in MB/s.
func parallel(b *testing.B, clients int, per, size int64, read func(ctx context.Context, off, n int64) (int64, error)) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var total atomic.Int64
	errs := make(chan error, clients)
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := (int64(i) * (size - per) / int64(max(clients-1, 1))) &^ 4095
			n, err := read(ctx, off, per)
			total.Add(n)
			if err == nil && n != per {
				err = fmt.Errorf("client %d read %d bytes, want %d", i, n, per)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return float64(total.Load()) / time.Since(start).Seconds() / 1e6
}

// BenchmarkServeCached compares the DP serving a cached blob over gRPC with
// nginx serving the same file over HTTP (sendfile): one client reading the
// whole blob, and 32 clients each reading a quarter of it at once. Each
// round alternates nginx and the DP; the best of three rounds is reported.
func BenchmarkServeCached(b *testing.B) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	s := newSetup(b, size)
	cases := []struct {
		name    string
		clients int
		per     int64
	}{
		{"1client", 1, size},
		{"32clients", 32, size / 4},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var ngx, dp []float64
			for range b.N {
				for range 3 {
					ngx = append(ngx, parallel(b, c.clients, c.per, size, s.readNginx))
					dp = append(dp, parallel(b, c.clients, c.per, size, s.readDP))
				}
			}
			bn, bd := slices.Max(ngx), slices.Max(dp)
			b.ReportMetric(bn, "nginx-MB/s")
			b.ReportMetric(bd, "dp-MB/s")
			b.ReportMetric(bd/bn, "ratio")
			b.Logf("%s: nginx %v MB/s, DP %v MB/s, best ratio %.2f", c.name, round(ngx), round(dp), bd/bn)
		})
	}
}

// BenchmarkServeMemory measures the DP's anonymous memory (RssAnon; the
// bbolt file's mmap pages are page cache, not counted) while 200 clients
// read the blob at once, against the same DP idle. Clients read for a fixed
// number of bytes each so the run stays short; the peak is what matters.
func BenchmarkServeMemory(b *testing.B) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	s := newSetup(b, size)
	for range b.N {
		idle := rssAnon(b, s.node.Pid())
		var peak atomic.Int64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				if v := rssAnon(b, s.node.Pid()); v > peak.Load() {
					peak.Store(v)
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		mbps := parallel(b, 200, 32<<20, size, s.readDP)
		close(stop)
		<-sampled
		const target = 256 << 20
		b.ReportMetric(float64(idle)/(1<<20), "idle-MiB")
		b.ReportMetric(float64(peak.Load())/(1<<20), "peak-MiB")
		b.ReportMetric(float64(peak.Load())/float64(idle), "peak/idle")
		b.ReportMetric(float64(peak.Load())/target, "peak/target")
		b.Logf("200 clients: %.0f MB/s aggregate; DP RssAnon idle %d MiB, peak %d MiB (target 256 MiB)", mbps, idle>>20, peak.Load()>>20)
	}
}

// rssAnon reads RssAnon of pid in bytes.
func rssAnon(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no RssAnon in /proc/PID/status")
	return 0
}

func round(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}
