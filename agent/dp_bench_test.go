//go:build unix

package agent

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node"
	"github.com/dpcache/dpcache/source"
)

// benchDPSize is the file of BenchmarkInstallThroughDP: 256 MiB, or
// DPCACHE_BENCH_MIB mebibytes.
func benchDPSize(b *testing.B) int {
	if s := os.Getenv("DPCACHE_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("DPCACHE_BENCH_MIB=%q: want a number of MiB", s)
		}
		return n << 20
	}
	return 256 << 20
}

// startDP runs a DP whose upstream is the folder repo until b ends.
func startDP(b testing.TB, r *repo) *node.Node {
	cfg := node.DefaultConfig()
	cfg.Name, cfg.DataDir = "dp-bench", b.TempDir()
	cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Upstream, cfg.Trust = []string{r.dir}, r.trust
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.DisableMetrics = true
	n, err := node.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("node.Run: %v", err)
		}
	})
	return n
}

// BenchmarkInstallThroughDP measures, in one run, a fresh install of one
// large file (benchDPSize) through a DP that holds its version (the DP
// fetched it from a folder once, untimed): published unchunked, published
// chunked and read in batches (ReadBlobs), and chunked with every chunk
// its own ReadBlob. It prints the speed of each chunked install against
// the unchunked one (goal ≥ 0.8), the median of interleaved rounds, and
// that of the batched install from two DPs holding the version against
// one (both DPs run on this machine's cores: the gain shows the
// scheduling's cost more than a LAN's). It
// also times publishing the file chunked against hashing it and writing
// it to a file with fsync (goal ≥ 0.5). Durations are printed, never
// asserted. Run with -benchtime=1x.
func BenchmarkInstallThroughDP(b *testing.B) {
	size := benchDPSize(b)
	src := b.TempDir()
	data := randBytes(size, 42)
	if err := os.WriteFile(filepath.Join(src, "big.db"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	data = nil

	// Publish, chunked, against the least any publisher does.
	base := func() time.Duration {
		start := time.Now()
		in, err := os.Open(filepath.Join(src, "big.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer in.Close()
		out, err := os.Create(filepath.Join(b.TempDir(), "copy"))
		if err != nil {
			b.Fatal(err)
		}
		defer out.Close()
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
			b.Fatal(err)
		}
		if err := out.Sync(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	whole, chunked := newRepo(b), (*repo)(nil)
	chunked = whole.sameKeyRepo(b)
	publish := func(r *repo, chunk bool) time.Duration {
		start := time.Now()
		if _, err := manifest.Publish(manifest.PublishOptions{Repo: r.dir, Product: product, Version: "1", Key: r.key, Chunk: chunk}, src); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	base() // the file in the page cache for both
	tBase := base()
	tPub := publish(chunked, true)
	publish(whole, false)
	b.Logf("publish of %d MiB chunked: %v; sha256 + write + fsync: %v; speed ratio %.2f (goal ≥ 0.5)",
		size>>20, tPub.Round(time.Millisecond), tBase.Round(time.Millisecond), float64(tBase)/float64(tPub))
	b.ReportMetric(float64(tBase)/float64(tPub), "publish/hash+write")

	dpWhole, dpChunked, dpChunked2 := startDP(b, whole), startDP(b, chunked), startDP(b, chunked)
	install := func(batch bool, dps ...*node.Node) time.Duration {
		var srcs []source.Source
		for _, n := range dps {
			g, err := source.NewGRPC(n.GRPCAddr(), source.DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			srcs = append(srcs, g)
		}
		cfg := testConfig(b, whole.trust, srcs...)
		if !batch {
			cfg.hooks = &hooks{noBatch: true}
		}
		// Longer than mustUpdate's bound: the machine may be loaded.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		if _, err := Update(ctx, cfg); err != nil {
			b.Fatalf("Update: %v", err)
		}
		d := time.Since(start)
		if err := os.RemoveAll(cfg.Dir); err != nil {
			b.Fatal(err)
		}
		return d
	}
	// The DPs fetch the version from their folder once.
	install(true, dpWhole)
	install(true, dpChunked)
	install(true, dpChunked2)

	var tw, tb, t2, ts []time.Duration
	var share1, share2 int64 // bytes each DP served to the two-DP installs
	var cw, cb time.Duration // CPU time of the process (agent and DP)
	for b.Loop() {
		for range 3 {
			c := cpuTime(b)
			tw = append(tw, install(true, dpWhole))
			c2 := cpuTime(b)
			tb = append(tb, install(true, dpChunked))
			cw, cb = cw+c2-c, cb+cpuTime(b)-c2
			s1, s2 := dpChunked.Traffic().ServedBytes, dpChunked2.Traffic().ServedBytes
			t2 = append(t2, install(true, dpChunked, dpChunked2))
			share1 += dpChunked.Traffic().ServedBytes - s1
			share2 += dpChunked2.Traffic().ServedBytes - s2
			ts = append(ts, install(false, dpChunked))
		}
	}
	med := func(d []time.Duration) time.Duration {
		d = slices.Clone(d)
		slices.Sort(d)
		return d[len(d)/2]
	}
	mw, mb, m2, ms := med(tw), med(tb), med(t2), med(ts)
	mib := float64(size) / (1 << 20)
	b.Logf("install of %d MiB through a DP: unchunked %v (%.0f MiB/s); chunked, batched %v (%.0f MiB/s), ratio %.2f; chunked, one ReadBlob per chunk %v (%.0f MiB/s), ratio %.2f (goal ≥ 0.8)",
		size>>20, mw.Round(time.Millisecond), mib/mw.Seconds(), mb.Round(time.Millisecond), mib/mb.Seconds(), float64(mw)/float64(mb),
		ms.Round(time.Millisecond), mib/ms.Seconds(), float64(mw)/float64(ms))
	b.Logf("chunked, batched from two DPs: %v (%.0f MiB/s), %.2f× one DP; shares %.0f%% / %.0f%%",
		m2.Round(time.Millisecond), mib/m2.Seconds(), float64(mb)/float64(m2),
		100*float64(share1)/float64(share1+share2), 100*float64(share2)/float64(share1+share2))
	b.Logf("CPU time of agent and DP (a loaded machine stretches the durations above, not this): unchunked %v, chunked batched %v per install, ratio %.2f",
		(cw / time.Duration(len(tw))).Round(time.Millisecond), (cb / time.Duration(len(tb))).Round(time.Millisecond), float64(cw)/float64(cb))
	b.ReportMetric(float64(mw)/float64(mb), "batched/unchunked")
	b.ReportMetric(float64(mb)/float64(m2), "2DPs/1DP")
	b.ReportMetric(float64(mw)/float64(ms), "per-chunk/unchunked")
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
