package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dpcache/dpcache/agent"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// clusterProduct is the product the cluster benchmarks publish.
const clusterProduct = "bench"

// vendorRepo is a signed repository on disk served by nginx.
type vendorRepo struct {
	dir      string // holds repo/, src/ and vendor.pub
	pubPath  string
	trust    *manifest.Trust
	manifest *manifest.Manifest
	bytes    int64 // sum of the version's distinct blob sizes
	ngx      *testenv.Nginx
}

// newVendorRepo publishes version "1" of clusterProduct with one file per
// entry of sizes (random content, each file distinct) and serves it with
// nginx.
func newVendorRepo(b *testing.B, sizes []int64) *vendorRepo {
	b.Helper()
	return newVendorRepoWith(b, sizes, testenv.NginxOptions{})
}

// newVendorRepoWith is newVendorRepo with nginx started with opts.
func newVendorRepoWith(b *testing.B, sizes []int64, opts testenv.NginxOptions) *vendorRepo {
	b.Helper()
	dir := b.TempDir()
	for i, size := range sizes {
		rel := fmt.Sprintf("databases/db%02d.bin", i)
		if i%4 == 3 {
			rel = fmt.Sprintf("modules/mod%02d.bin", i)
		}
		p := filepath.Join(dir, "src", rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := writeSeeded(p, size, uint64(i)+100); err != nil {
			b.Fatal(err)
		}
	}
	key, pub, err := manifest.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	v := &vendorRepo{dir: dir, pubPath: filepath.Join(dir, "vendor.pub")}
	if err := os.WriteFile(v.pubPath, pub, 0o644); err != nil {
		b.Fatal(err)
	}
	if v.trust, err = manifest.NewTrust(pub); err != nil {
		b.Fatal(err)
	}
	res, err := manifest.Publish(manifest.PublishOptions{Repo: filepath.Join(dir, "repo"), Product: clusterProduct, Version: "1", Key: key}, filepath.Join(dir, "src"))
	if err != nil {
		b.Fatal(err)
	}
	v.manifest = res.Manifest
	seen := map[string]bool{}
	for _, f := range res.Manifest.Files {
		if !seen[f.SHA256] {
			seen[f.SHA256] = true
			v.bytes += f.Size
		}
	}
	if len(seen) != len(sizes) {
		b.Fatalf("published %d distinct blobs, want %d", len(seen), len(sizes))
	}
	v.ngx = testenv.StartNginx(b, filepath.Join(dir, "repo"), opts)
	return v
}

// writeSeeded writes size pseudo-random bytes drawn from seed, so that files
// of different seeds are different blobs.
func writeSeeded(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, rand.NewChaCha8(key), size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// dpProc is a `dpcache node` process of a benchmark cluster.
type dpProc struct {
	name       string
	grpcAddr   string
	gossipAddr string
	proc       *testenv.Proc
	admin      pb.AdminServiceClient
}

// healthClient probes /healthz; a probe never hangs a wait.
var healthClient = &http.Client{Timeout: 2 * time.Second}

// startDP starts a DP process of site "bench" with its own data directory,
// joining the gossip addresses in join, and waits until it is healthy.
func startDP(b *testing.B, v *vendorRepo, name string, join []string) *dpProc {
	b.Helper()
	bin := testenv.BuildDpcache(b)
	d := &dpProc{
		name:       name,
		grpcAddr:   testenv.FreeAddr(b, "127.0.0.1"),
		gossipAddr: testenv.FreeAddr(b, "127.0.0.1"),
	}
	httpAddr := testenv.FreeAddr(b, "127.0.0.1")
	args := []string{"node", "--name", name, "--site", "bench", "--data", filepath.Join(b.TempDir(), "dp"),
		"--grpc", d.grpcAddr, "--http", httpAddr, "--gossip", d.gossipAddr,
		"--upstream", v.ngx.URL, "--trust", v.pubPath, "--log-level", "warn"}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	d.proc = testenv.StartProc(b, bin, args...)
	testenv.WaitFor(b, 30*time.Second, name+" healthy", func() bool {
		if d.proc.Exited() {
			b.Fatalf("%s exited: %s", name, d.proc.Stderr())
		}
		resp, err := healthClient.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	conn, err := grpc.NewClient("passthrough:///"+d.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	d.admin = pb.NewAdminServiceClient(conn)
	return d
}

// status asks the DP for the cluster as it sees it; localOnly limits the
// traffic counters to this DP.
func (d *dpProc) status(localOnly bool) (*pb.GetStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.admin.GetStatus(ctx, &pb.GetStatusRequest{LocalOnly: localOnly})
}

// sees reports whether d sees every DP of names alive, and, when serial is
// not 0, holding clusterProduct's serial whole.
func (d *dpProc) sees(names []string, serial uint64) bool {
	st, err := d.status(false)
	if err != nil {
		return false
	}
	for _, name := range names {
		i := slices.IndexFunc(st.GetMembers(), func(m *pb.MemberStatus) bool { return m.GetName() == name })
		if i < 0 || st.GetMembers()[i].GetState() != "alive" {
			return false
		}
		if serial == 0 {
			continue
		}
		held := false
		for _, pv := range st.GetMembers()[i].GetVersions() {
			if pv.GetProduct() == clusterProduct && slices.Contains(pv.GetSerials(), serial) {
				held = true
			}
		}
		if !held {
			return false
		}
	}
	return true
}

// readAll reads the blob digest whole from src and returns the throughput
// in MB/s.
func readAll(ctx context.Context, src *source.GRPC, digest string, size int64) (float64, error) {
	start := time.Now()
	r, err := src.Blob(ctx, digest, 0)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return 0, fmt.Errorf("%s: after %d bytes: %w", src, n, err)
	}
	if n != size {
		return 0, fmt.Errorf("%s: read %d bytes, want %d", src, n, size)
	}
	return float64(size) / time.Since(start).Seconds() / 1e6, nil
}

// BenchmarkClusterPeerTransfer compares a DP fetching a blob from a peer of
// its site while streaming it to an endpoint (a cold DP-B reading from
// DP-A, which holds it whole) with DP-A serving the same blob to an
// endpoint from its cache (the baseline). Each round starts DP-B afresh
// with an empty data directory, and checks at nginx's access log that the
// origin served the blob only once (to warm DP-A) and at DP-B's traffic
// counters that the bytes came from the peer. Best of three rounds. For
// reference it also reports (origin-MB/s) a cold DP alone, outside the
// cluster, reading the blob from nginx while streaming it: peer and origin
// fetches share the ingest path (hash, store in bbolt, stream), whose
// speed bounds both.
func BenchmarkClusterPeerTransfer(b *testing.B) {
	size := int64(256 << 20)
	if testing.Short() {
		size = 64 << 20
	}
	v := newVendorRepo(b, []int64{size})
	digest := v.manifest.Files[0].SHA256
	blobPath := manifest.BlobPath(digest)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dpA := startDP(b, v, "dp-a", nil)
	a, err := source.NewGRPC(dpA.grpcAddr, source.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	// Warm DP-A as an endpoint's update would: latest (which makes DP-A
	// pull the version and then hold it whole), the manifest, the blob.
	if _, err := a.Latest(ctx, clusterProduct); err != nil {
		b.Fatal(err)
	}
	if _, err := a.Manifest(ctx, clusterProduct, "1"); err != nil {
		b.Fatal(err)
	}
	if _, err := readAll(ctx, a, digest, size); err != nil {
		b.Fatalf("warming DP-A: %v", err)
	}
	testenv.WaitFor(b, 30*time.Second, "dp-a holds the version whole", func() bool {
		return dpA.sees([]string{"dp-a"}, v.manifest.Serial)
	})
	testenv.WaitFor(b, 10*time.Second, "nginx logged the blob", func() bool { return v.ngx.CountRequests(b, blobPath) == 1 })

	rounds, fromOrigin := 0, 1
	var peer, base, origin []float64
	for range b.N {
		for range 3 {
			rounds++
			mbps, err := readAll(ctx, a, digest, size)
			if err != nil {
				b.Fatalf("baseline: %v", err)
			}
			base = append(base, mbps)

			name := fmt.Sprintf("dp-b%d", rounds)
			dpB := startDP(b, v, name, []string{dpA.gossipAddr})
			testenv.WaitFor(b, 30*time.Second, name+" sees dp-a holding the version", func() bool {
				return dpB.sees([]string{"dp-a", name}, 0) && dpB.sees([]string{"dp-a"}, v.manifest.Serial)
			})
			bsrc, err := source.NewGRPC(dpB.grpcAddr, source.DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			// DP-B verifies the manifest first (as an endpoint's update
			// would have it do), so it knows which version names the blob.
			if _, err := bsrc.Manifest(ctx, clusterProduct, "1"); err != nil {
				b.Fatal(err)
			}
			cpuA, cpuB := cpuSeconds(b, dpA.proc.Pid()), cpuSeconds(b, dpB.proc.Pid())
			start := time.Now()
			mbps, err = readAll(ctx, bsrc, digest, size)
			if err != nil {
				b.Fatalf("through %s: %v", name, err)
			}
			wall := time.Since(start).Seconds()
			cpuA, cpuB = cpuSeconds(b, dpA.proc.Pid())-cpuA, cpuSeconds(b, dpB.proc.Pid())-cpuB
			b.Logf("round %d: via peer %.0f MB/s; CPU over the read: dp-a %.2f cores, %s %.2f cores", rounds, mbps, cpuA/wall, name, cpuB/wall)
			peer = append(peer, mbps)
			bsrc.Close()

			if n := v.ngx.CountRequests(b, blobPath); n != fromOrigin {
				b.Fatalf("round %d: nginx served the blob %d times, want %d (DP-B must read it from DP-A)", rounds, n, fromOrigin)
			}
			st, err := dpB.status(true)
			if err != nil {
				b.Fatal(err)
			}
			if tr := st.GetTraffic(); tr.GetPeerBytes() < uint64(size) || tr.GetUpstreamBytes() != 0 {
				b.Fatalf("round %d: %s traffic peer %d upstream %d bytes, want peer >= %d and upstream 0",
					rounds, name, tr.GetPeerBytes(), tr.GetUpstreamBytes(), size)
			}
			if err := dpB.proc.Stop(); err != nil {
				b.Logf("%s stop: %v", name, err)
			}

			// For reference, the same cold read through a lone DP that
			// fetches from the origin (the same ingest path, another source).
			name = fmt.Sprintf("dp-c%d", rounds)
			dpC := startDP(b, v, name, nil)
			csrc, err := source.NewGRPC(dpC.grpcAddr, source.DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			if _, err := csrc.Manifest(ctx, clusterProduct, "1"); err != nil {
				b.Fatal(err)
			}
			mbps, err = readAll(ctx, csrc, digest, size)
			if err != nil {
				b.Fatalf("through %s: %v", name, err)
			}
			origin = append(origin, mbps)
			fromOrigin++
			csrc.Close()
			if err := dpC.proc.Stop(); err != nil {
				b.Logf("%s stop: %v", name, err)
			}
			testenv.WaitFor(b, 10*time.Second, "nginx logged the blob", func() bool { return v.ngx.CountRequests(b, blobPath) == fromOrigin })
		}
	}
	bp, bb, bo := slices.Max(peer), slices.Max(base), slices.Max(origin)
	b.ReportMetric(bb, "dp-serve-MB/s")
	b.ReportMetric(bp, "peer-MB/s")
	b.ReportMetric(bo, "origin-MB/s")
	b.ReportMetric(bp/bb, "ratio")
	b.Logf("%d MiB blob: DP-A serving an endpoint %v MB/s; cold DP-B via peer DP-A %v MB/s; best ratio %.2f (target >= 0.9); "+
		"for reference, a cold lone DP via nginx %v MB/s (peer/origin %.2f)",
		size>>20, round(base), round(peer), bp/bb, round(origin), bp/bo)
}

// BenchmarkClusterUpstreamEconomy starts five DPs of one cold site and 200
// endpoint agents (in process, round-robin over the DPs) updating at once
// to a new version of several blobs, and reports the bytes nginx served
// for blobs over the version's size (ratio; target 1.00: the site fetches
// each blob from outside once), the time until every agent installed it,
// and the aggregate delivery rate to the agents. Each agent lists its own
// DP first and the other four after it, as `update --discover` would; the
// blob requests that had to move on to another DP are reported as
// "failovers".
func BenchmarkClusterUpstreamEconomy(b *testing.B) {
	const dps, agents = 5, 200
	blobs := []int64{12 << 20, 10 << 20, 9 << 20, 8 << 20, 8 << 20, 7 << 20, 6 << 20, 4 << 20} // 64 MiB
	if testing.Short() {
		blobs = []int64{4 << 20, 4 << 20, 4 << 20, 4 << 20} // 16 MiB
	}
	v := newVendorRepo(b, blobs)
	for range b.N {
		before := v.ngx.BytesServed(b, "/blobs/")
		var nodes []*dpProc
		var names, join []string
		for i := range dps {
			d := startDP(b, v, fmt.Sprintf("dp-%d", i+1), join)
			nodes = append(nodes, d)
			names = append(names, d.name)
			join = append(join, d.gossipAddr)
		}
		testenv.WaitFor(b, 30*time.Second, "every DP sees the whole cluster", func() bool {
			for _, d := range nodes {
				if !d.sees(names, 0) {
					return false
				}
			}
			return true
		})

		// Each agent has its DP first (round-robin), then the others, as
		// `update --discover` would list them; stats counts the blob
		// requests that got no stream (the agent then moved on) and times
		// every open.
		stats := &openStats{}
		var clients []*source.GRPC
		srcs := make([][]source.Source, agents)
		for i := range agents {
			for k := range dps {
				s, err := source.NewGRPC(nodes[(i+k)%dps].grpcAddr, source.DefaultOptions())
				if err != nil {
					b.Fatal(err)
				}
				clients = append(clients, s)
				srcs[i] = append(srcs[i], countingSource{s, stats})
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		var wg sync.WaitGroup
		var delivered atomic.Int64
		errs := make([]error, agents)
		start := time.Now()
		for i := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cfg := agent.DefaultConfig()
				cfg.Sources = srcs[i]
				cfg.Product, cfg.Dir, cfg.Trust = clusterProduct, b.TempDir(), v.trust
				cfg.EndpointID, cfg.Hostname = fmt.Sprintf("ep-%03d", i), fmt.Sprintf("ep-%03d", i)
				res, err := agent.Update(ctx, cfg)
				if err == nil && (res.Status != agent.StatusUpdated || res.Serial != v.manifest.Serial) {
					err = fmt.Errorf("status %q serial %d, want %q serial %d", res.Status, res.Serial, agent.StatusUpdated, v.manifest.Serial)
				}
				if err == nil {
					delivered.Add(res.BytesDownloaded)
				}
				errs[i] = err
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		cancel()
		for _, s := range clients {
			s.Close()
		}
		failed := 0
		for i, err := range errs {
			if err != nil {
				failed++
				if failed <= 3 {
					b.Errorf("agent %d (%s first): %v", i, nodes[i%dps].name, err)
				}
			}
		}
		if failed > 0 {
			b.Fatalf("%d of %d agents failed", failed, agents)
		}

		// Every blob reached some agent whole, so nginx finished sending
		// it; its log line follows at once.
		var upstream int64
		testenv.WaitFor(b, 10*time.Second, "nginx logged the blobs", func() bool {
			upstream = v.ngx.BytesServed(b, "/blobs/") - before
			return upstream >= v.bytes
		})
		perBlob := map[string]int{}
		for _, e := range v.ngx.Requests(b) {
			if strings.HasPrefix(e.URI, "/blobs/") {
				perBlob[e.URI]++
			}
		}
		var dpUpstream uint64
		if st, err := nodes[0].status(false); err == nil {
			dpUpstream = st.GetTraffic().GetUpstreamBytes()
		}
		ratio := float64(upstream) / float64(v.bytes)
		mbps := float64(delivered.Load()) / elapsed.Seconds() / 1e6
		b.ReportMetric(ratio, "ratio")
		b.ReportMetric(elapsed.Seconds(), "s-to-complete")
		b.ReportMetric(mbps, "agg-MB/s")
		b.ReportMetric(float64(stats.failures.Load()), "failovers")
		p50, p99, maxWait := stats.quantiles()
		b.Logf("%d DPs, %d agents, version %d MiB in %d blobs: nginx served %d blob bytes (%.3fx the version; DPs count %d upstream bytes), "+
			"blob requests per blob %v; all installed in %v, %.0f MB/s delivered to agents",
			dps, agents, v.bytes>>20, len(blobs), upstream, ratio, dpUpstream, requestCounts(perBlob), elapsed.Round(time.Millisecond), mbps)
		b.Logf("blob opens at agents (until the DP's first message): %d, p50 %v, p99 %v, max %v; %d got no answer in time and failed over to another DP",
			len(stats.waits), p50.Round(time.Millisecond), p99.Round(time.Millisecond), maxWait.Round(time.Millisecond), stats.failures.Load())

		for _, d := range nodes {
			if err := d.proc.Stop(); err != nil {
				b.Logf("%s stop: %v", d.name, err)
			}
		}
	}
}

// countingSource is a DP source that counts the blob requests it could
// not open (for example "no answer within" the source's timeout).
// not open (for example "no answer within" the source's timeout), and
// records how long each open took.
type countingSource struct {
	*source.GRPC
	stats *openStats
}

// openStats collects blob opens of countingSources; safe for concurrent use.
type openStats struct {
	failures atomic.Int64
	mu       sync.Mutex // protects waits
	waits    []time.Duration
}

// Blob implements source.Source.
func (c countingSource) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	start := time.Now()
	r, err := c.GRPC.Blob(ctx, digest, offset)
	if err != nil && ctx.Err() == nil {
		c.stats.failures.Add(1)
	}
	c.stats.mu.Lock()
	c.stats.waits = append(c.stats.waits, time.Since(start))
	c.stats.mu.Unlock()
	return r, err
}

// quantiles returns the median, 99th percentile and maximum of the waits.
func (s *openStats) quantiles() (p50, p99, maxWait time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waits) == 0 {
		return 0, 0, 0
	}
	w := slices.Clone(s.waits)
	slices.Sort(w)
	return w[len(w)/2], w[len(w)*99/100], w[len(w)-1]
}

// requestCounts lists how many requests nginx logged for each blob, sorted.
func requestCounts(perBlob map[string]int) []int {
	out := make([]int, 0, len(perBlob))
	for _, n := range perBlob {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// cpuSeconds returns the CPU time (user and system) pid has used so far.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return (ut + st) / clockTicks
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc (100 on
// every Linux architecture Go supports).
const clockTicks = 100

// BenchmarkClusterOwnerLoss measures what losing a blob's owner mid-fetch
// costs the site's internet link (issue 12): three DPs of a site, a slow
// origin (nginx limit_rate 8m), a 32 MiB version of one blob, and four
// endpoint agents (in process) that all list the owner first, as
// administrators configure them. In each of five runs the owner is killed
// (SIGKILL) once it has fetched a third of the blob, and nginx's access log
// gives the blob bytes it sent over the version's size; a baseline run of
// the same cluster without the kill precedes each. It reports the worst
// and mean owner-loss ratios (target <= 1.05) and the baseline's (1.00).
func BenchmarkClusterOwnerLoss(b *testing.B) {
	const runs, agents = 5, 4
	size := int64(32 << 20)
	v := newVendorRepoWith(b, []int64{size}, testenv.NginxOptions{LimitRate: "8m"})
	digest := v.manifest.Files[0].SHA256
	for range b.N {
		var loss, base []float64
		for run := range runs {
			for _, kill := range []bool{false, true} {
				ratio := ownerLossRun(b, v, digest, agents, kill)
				if kill {
					loss = append(loss, ratio)
				} else {
					base = append(base, ratio)
				}
				b.Logf("run %d, owner killed %v: nginx sent %.4fx the version", run+1, kill, ratio)
			}
		}
		mean := 0.0
		for _, r := range loss {
			mean += r / float64(len(loss))
		}
		b.ReportMetric(slices.Max(loss), "loss-ratio-max")
		b.ReportMetric(mean, "loss-ratio-mean")
		b.ReportMetric(slices.Max(base), "baseline-ratio-max")
		b.Logf("%d MiB version, owner killed a third of the way: origin bytes / version bytes %v (max %.4f, target <= 1.05); "+
			"same-run baseline without the kill %v", size>>20, roundRatios(loss), slices.Max(loss), roundRatios(base))
	}
}

// ownerLossRun starts three DPs, updates agents through them (the blob's
// owner listed first), kills the owner a third of the way when kill is set,
// and returns the blob bytes nginx sent meanwhile over the version's size.
func ownerLossRun(b *testing.B, v *vendorRepo, digest string, agents int, kill bool) float64 {
	b.Helper()
	before := v.ngx.BytesServed(b, "/blobs/")
	cutBefore := cutTransfers(b, v.ngx)
	var nodes []*dpProc
	var names, join []string
	for i := range 3 {
		d := startDP(b, v, fmt.Sprintf("dp-%d", i+1), join)
		nodes, names, join = append(nodes, d), append(names, d.name), append(join, d.gossipAddr)
	}
	defer func() {
		for _, d := range nodes {
			if !d.proc.Exited() {
				if err := d.proc.Stop(); err != nil {
					b.Logf("%s stop: %v", d.name, err)
				}
			}
		}
	}()
	testenv.WaitFor(b, 30*time.Second, "every DP sees the whole cluster", func() bool {
		for _, d := range nodes {
			if !d.sees(names, 0) {
				return false
			}
		}
		return true
	})
	ownerName := gossip.RankNames(digest, names)[0]
	owner := nodes[slices.Index(names, ownerName)]
	ranked := []*dpProc{owner}
	for _, d := range nodes {
		if d != owner {
			ranked = append(ranked, d)
		}
	}
	var clients []*source.GRPC
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	errs := make(chan error, agents)
	for i := range agents {
		var srcs []source.Source
		for _, d := range ranked {
			s, err := source.NewGRPC(d.grpcAddr, source.DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			clients = append(clients, s)
			srcs = append(srcs, s)
		}
		go func() {
			cfg := agent.DefaultConfig()
			cfg.Sources, cfg.Product, cfg.Dir, cfg.Trust = srcs, clusterProduct, b.TempDir(), v.trust
			cfg.EndpointID = fmt.Sprintf("ep-%d", i)
			_, err := agent.Update(ctx, cfg)
			errs <- err
		}()
	}
	if kill {
		testenv.WaitFor(b, 2*time.Minute, "the owner to fetch a third of the blob", func() bool {
			st, err := owner.status(true)
			return err == nil && int64(st.GetTraffic().GetUpstreamBytes()) >= v.bytes/3
		})
		owner.proc.Kill()
	}
	for range agents {
		if err := <-errs; err != nil {
			b.Fatalf("agent (owner killed %v): %v", kill, err)
		}
	}
	var served int64
	testenv.WaitFor(b, 30*time.Second, "nginx logged the blob's transfers", func() bool {
		served = v.ngx.BytesServed(b, "/blobs/") - before
		return served >= v.bytes && (!kill || cutTransfers(b, v.ngx) > cutBefore)
	})
	return float64(served) / float64(v.bytes)
}

// cutTransfers counts the blob transfers nginx logged as incomplete.
func cutTransfers(b *testing.B, ngx *testenv.Nginx) int {
	n := 0
	for _, e := range ngx.Requests(b) {
		if strings.HasPrefix(e.URI, "/blobs/") && !e.Complete {
			n++
		}
	}
	return n
}

// roundRatios rounds ratios to four decimals for the log.
func roundRatios(rs []float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = math.Round(r*1e4) / 1e4
	}
	return out
}
