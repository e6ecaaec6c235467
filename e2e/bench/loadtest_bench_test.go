package bench

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
)

// The size of BenchmarkLoadtest's run; `make loadtest` sets them.
var (
	loadEndpoints   = flag.Int("loadtest.endpoints", 1000, "BenchmarkLoadtest: simulated endpoints")
	loadConcurrency = flag.Int("loadtest.concurrency", 500, "BenchmarkLoadtest: endpoints at once")
)

// BenchmarkLoadtest runs `dpcache loadtest` against a DP process of this
// machine in front of nginx: -loadtest.endpoints endpoints (default
// 1,000), -loadtest.concurrency at once (default 500), each going from
// version 1 to 2 of a product whose 5 MiB file changed (a 1 MiB one did
// not). The DP holds version 2 before the run (prefetch), so the figures
// are the DP's serving, not its ingest. The baseline is the DP's RssAnon
// idle, just before the run: rss_peak/idle is the growth under load.
//
//	make loadtest    # or: make loadtest LOADTEST_ENDPOINTS=10000 LOADTEST_CONCURRENCY=1000
func BenchmarkLoadtest(b *testing.B) {
	bin := testenv.BuildDpcache(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "src", "databases")
	if err := os.MkdirAll(src, 0o755); err != nil {
		b.Fatal(err)
	}
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	trust := filepath.Join(dir, "vendor.pub")
	if err := os.WriteFile(trust, pub, 0o644); err != nil {
		b.Fatal(err)
	}
	repo := filepath.Join(dir, "repo")
	for i, version := range []string{"1", "2"} {
		if err := writeSeeded(filepath.Join(src, "base.dat"), 5<<20, uint64(i+1)); err != nil {
			b.Fatal(err)
		}
		if err := writeSeeded(filepath.Join(src, "index.idx"), 1<<20, 99); err != nil {
			b.Fatal(err)
		}
		if _, err := manifest.Publish(manifest.PublishOptions{Repo: repo, Product: "bench", Version: version, Key: key}, filepath.Join(dir, "src")); err != nil {
			b.Fatal(err)
		}
	}
	ngx := testenv.StartNginx(b, repo, testenv.NginxOptions{})
	grpcAddr, httpAddr := testenv.FreeAddr(b, "127.0.0.1"), testenv.FreeAddr(b, "127.0.0.1")
	node := testenv.StartProc(b, bin, "node", "--name", "bench", "--data", filepath.Join(dir, "dp"),
		"--grpc", grpcAddr, "--http", httpAddr, "--gossip", "127.0.0.1:0", "--upstream", ngx.URL,
		"--trust", trust, "--log-level", "warn")
	run := func(args ...string) string {
		p := testenv.StartProc(b, bin, args...)
		<-p.Done()
		if p.ExitCode() != 0 {
			b.Fatalf("dpcache %v: exit %d\n%s", args, p.ExitCode(), p.Output())
		}
		return p.Stdout()
	}
	testenv.WaitFor(b, 30*time.Second, "the DP answering", func() bool {
		p := testenv.StartProc(b, bin, "status", "--node", grpcAddr)
		<-p.Done()
		return p.ExitCode() == 0
	})
	run("prefetch", "--node", grpcAddr, "--product", "bench")
	time.Sleep(time.Second) // let the DP settle after its ingest before the idle figure
	idle := rssAnon(b, node.Pid())

	b.ResetTimer()
	var res struct {
		Endpoints, Updated, Errors int
		Seconds                    float64
		P50ms                      float64 `json:"p50_ms"`
		P99ms                      float64 `json:"p99_ms"`
		FirstP99ms                 float64 `json:"first_p99_ms"`
		PerMinute                  float64 `json:"endpoints_per_minute"`
		RssAnonPeak                int64   `json:"rss_anon_peak_bytes"`
		VmRSSPeak                  int64   `json:"vm_rss_peak_bytes"`
		SelfPeak                   int64   `json:"loadtest_rss_anon_peak_bytes"`
	}
	for range b.N {
		out := run("loadtest", "--node", grpcAddr, "--product", "bench", "--from", "1", "--trust", trust,
			"--endpoints", strconv.Itoa(*loadEndpoints), "--concurrency", strconv.Itoa(*loadConcurrency), "--json")
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			b.Fatalf("loadtest --json: %v\n%s", err, out)
		}
	}
	b.StopTimer()
	if res.Errors != 0 || res.Updated != *loadEndpoints {
		b.Errorf("updated %d of %d, errors %d", res.Updated, *loadEndpoints, res.Errors)
	}
	const mib = 1 << 20
	b.ReportMetric(res.PerMinute, "endpoints/min")
	b.ReportMetric(res.P50ms, "p50_ms")
	b.ReportMetric(res.P99ms, "p99_ms")
	b.ReportMetric(res.FirstP99ms, "first_p99_ms")
	b.ReportMetric(float64(res.RssAnonPeak)/mib, "rss_anon_peak_MiB")
	b.ReportMetric(float64(idle)/mib, "rss_anon_idle_MiB")
	b.ReportMetric(float64(res.RssAnonPeak)/float64(idle), "rss_peak/idle")
	b.Logf("%d endpoints, %d at once, 5 MiB changed: %.0f endpoints/min in %.1f s, p50 %.0f ms, p99 %.0f ms, first answer p99 %.0f ms, %d errors; "+
		"DP RssAnon peak %.0f MiB (idle %.0f MiB, %.2fx), VmRSS peak %.0f MiB; loadtest's own RssAnon peak %.0f MiB",
		*loadEndpoints, *loadConcurrency, res.PerMinute, res.Seconds, res.P50ms, res.P99ms, res.FirstP99ms, res.Errors,
		float64(res.RssAnonPeak)/mib, float64(idle)/mib, float64(res.RssAnonPeak)/float64(idle), float64(res.VmRSSPeak)/mib, float64(res.SelfPeak)/mib)
}
