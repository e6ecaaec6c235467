package node

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// fill returns size deterministic bytes named by tag: the same tag gives
// the same bytes (a blob shared by versions), another tag other bytes.
func fill(tag string, size int) []byte {
	b := make([]byte, size)
	rand.NewChaCha8(sha256.Sum256([]byte(tag))).Read(b)
	return b
}

// publishFiles publishes files (path → content) as version, published at
// when (time.Now when zero).
func (v *vendor) publishFiles(t testing.TB, product, version string, files map[string][]byte, when time.Time) *manifest.PublishResult {
	t.Helper()
	src := t.TempDir()
	for name, b := range files {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	opts := manifest.PublishOptions{Repo: v.repo, Product: product, Version: version, Key: v.key}
	if !when.IsZero() {
		opts.Now = func() time.Time { return when }
	}
	res, err := manifest.Publish(opts, src)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func heldSerials(t testing.TB, n *Node, product string) []uint64 {
	t.Helper()
	vs, err := n.cache.Versions(product)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, v := range vs {
		out = append(out, v.Serial)
	}
	return out
}

// cachedBlobs returns the digests of the whole blobs in the cache.
func cachedBlobs(t testing.TB, n *Node, pubs ...*manifest.PublishResult) (held, missing []string) {
	t.Helper()
	for _, p := range pubs {
		for _, f := range p.Manifest.Blobs() {
			if _, err := n.cache.Stat(f.SHA256); err == nil {
				held = append(held, f.SHA256)
			} else {
				missing = append(missing, f.SHA256)
			}
		}
	}
	return held, missing
}

// Six versions with --keep-versions 2 and a quota of two and a half
// versions: two remain, the cache's bytes never exceed the quota (room is
// made before each version is fetched), the dropped versions' documents
// go, their publication times stay, and the bbolt file stops growing once
// the quota is reached.
func TestRetention_KeepVersionsUnderQuota(t *testing.T) {
	v := newVendor(t)
	shared := fill("shared", 256<<10)
	files := func(k string) map[string][]byte {
		return map[string][]byte{
			"databases/a.dat":      fill(k+"a", 4<<20),
			"databases/b.dat":      fill(k+"b", 2<<20),
			"modules/m.so":         fill(k+"m", 2<<20),
			"databases/shared.dat": shared, // in every version
		}
	}
	const versionBytes = 8<<20 + 256<<10
	const quota = 2*versionBytes + 4<<20 // two versions and a half
	pubs := []*manifest.PublishResult{v.publishFiles(t, "av", "1", files("1"), time.Time{})}
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, func(c *Config) {
		c.Products = []string{"av"}
		c.KeepVersions = 2
		c.CacheMax = quota
	})

	// Sample the cache's bytes for the whole run.
	var mu sync.Mutex
	var maxUsed int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if st, err := n.cache.Stats(); err == nil {
				mu.Lock()
				maxUsed = max(maxUsed, st.Bytes+st.PendingBytes)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-sampled }()

	fileSize := map[int]int64{}
	for k := 1; k <= 6; k++ {
		if k > 1 {
			pubs = append(pubs, v.publishFiles(t, "av", fmt.Sprint(k), files(fmt.Sprint(k)), time.Time{}))
		}
		kept := pubs[max(0, k-2):]
		testenv.WaitFor(t, 30*time.Second, "version held and older ones dropped", func() bool {
			want := []uint64{uint64(max(1, k-1)), uint64(k)}
			if k == 1 {
				want = want[1:]
			}
			if !slices.Equal(heldSerials(t, n, "av"), want) {
				return false
			}
			st, err := n.cache.Stats()
			return err == nil && st.Blobs == 4*len(kept)-(len(kept)-1) && st.Pending == 0
		})
		st, err := n.cache.Stats()
		if err != nil {
			t.Fatal(err)
		}
		fileSize[k] = st.FileSize
		t.Logf("after v%d: %d blobs, %d bytes, file %d bytes", k, st.Blobs, st.Bytes, st.FileSize)
	}
	mu.Lock()
	used := maxUsed
	mu.Unlock()
	if used > quota {
		t.Errorf("the cache held %d bytes at some point, over its quota of %d", used, quota)
	}
	if _, missing := cachedBlobs(t, n, pubs[4:]...); len(missing) > 0 {
		t.Errorf("kept versions lack blobs %v", missing)
	}
	if held, _ := cachedBlobs(t, n, pubs[:4]...); slices.ContainsFunc(held, func(d string) bool { return d != sha(shared) }) {
		t.Errorf("blobs of dropped versions still cached: %v (only the shared one should be)", held)
	}
	// A version's documents go once it is dropped; its publication time
	// stays for endpoint ages.
	for k, p := range pubs {
		_, _, err := n.cache.Document(manifest.ManifestPath("av", p.Manifest.Version))
		if dropped := k < 4; dropped != errors.Is(err, cache.ErrNotFound) {
			t.Errorf("manifest of v%d: %v (dropped %v)", k+1, err, dropped)
		}
	}
	published := map[string]cache.Published{}
	recs, err := n.cache.PublishedVersions()
	if err != nil {
		t.Errorf("publication records: %v", err)
	}
	for _, r := range recs {
		published[r.Product+"/"+r.Version] = r.Published
	}
	for k := range 4 {
		r, ok := published["av/"+pubs[k].Manifest.Version]
		if !ok || r.Serial != pubs[k].Manifest.Serial || !r.Published.Equal(pubs[k].Manifest.Published) {
			t.Errorf("publication of v%d kept as %+v (%v), want serial %d at %v", k+1, r, ok, pubs[k].Manifest.Serial, pubs[k].Manifest.Published)
		}
	}
	// bbolt reuses the pages of deleted blobs: once the quota is reached
	// (v2), four more versions (33 MiB) add little to the file's high-water
	// mark (bbolt's copy-on-write churn, pages freed by the last
	// transactions); without reuse each would add its 8 MiB.
	for k, size := range fileSize {
		if size > quota*3/2 {
			t.Errorf("bbolt data reached %d bytes after v%d, over 1.5 x the %d-byte quota (%d bytes ingested in all): freed pages are not reused", size, k, quota, 6*versionBytes)
		}
	}
	if grew := fileSize[6] - fileSize[2]; grew > versionBytes/2 {
		t.Errorf("bbolt data grew by %d bytes from v2 to v6 (%d-byte versions, quota reached at v2): freed pages are not reused", grew, versionBytes)
	}
}

// The latest version is never evicted, however small the quota.
func TestRetention_NeverEvictsLatest(t *testing.T) {
	v := newVendor(t)
	pub := v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	logger, seen := newLogCapture(t)
	n := startNode(t, v, ngx.URL, func(c *Config) {
		c.Products = []string{"av"}
		c.CacheMax = 1
		c.Logger = logger
	})
	testenv.WaitFor(t, 30*time.Second, "v1 held and the quota warning logged", func() bool {
		return slices.Equal(heldSerials(t, n, "av"), []uint64{1}) && seen("cache over --cache-max")
	})
	if _, missing := cachedBlobs(t, n, pub); len(missing) > 0 {
		t.Fatalf("blobs of the latest version evicted: %v", missing)
	}
	b, err := readBlob(testCtx(t), dial(t, n), pub.Manifest.Files[0].SHA256, 0)
	if err != nil || sha(b) != pub.Manifest.Files[0].SHA256 {
		t.Fatalf("reading the latest: %v", err)
	}
	if _, low := n.retainer.LowDisk(); low {
		t.Logf("note: this machine has little free disk")
	}
}

// An endpoint mid-download of the latest version keeps reading it after
// newer versions arrive and it is dropped; its blob goes once the read is
// done.
func TestRetention_ReaderNotDisturbed(t *testing.T) {
	v := newVendor(t)
	big := fill("big", 8<<20)
	v.publishFiles(t, "av", "1", map[string][]byte{"databases/big.dat": big}, time.Time{})
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	n := startNode(t, v, ngx.URL, func(c *Config) {
		c.Products = []string{"av"}
		c.KeepVersions = 1
	})
	testenv.WaitFor(t, 30*time.Second, "v1 held", func() bool { return slices.Equal(heldSerials(t, n, "av"), []uint64{1}) })
	digest := sha(big)

	// A slow reader: small flow-control windows keep the DP's handler
	// blocked mid-blob.
	opts := append(source.DialOptions(), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	conn, err := grpc.NewClient("passthrough:///"+n.GRPCAddr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := testCtx(t)
	stream, err := pb.NewDistributionServiceClient(conn).ReadBlob(ctx, &pb.ReadBlobRequest{Sha256: digest})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < 512<<10 {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.GetData()...)
	}

	v.publishFiles(t, "av", "2", map[string][]byte{"databases/big.dat": fill("big2", 1<<20)}, time.Time{})
	testenv.WaitFor(t, 30*time.Second, "v1 dropped while its blob is read", func() bool {
		waiting := n.retainer.Pins().Waiting(digest)
		return slices.Equal(heldSerials(t, n, "av"), []uint64{2}) && waiting
	})
	if _, err := n.cache.Stat(digest); err != nil {
		t.Fatalf("the blob being read was deleted: %v", err)
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reader disturbed after %d bytes: %v", len(got), err)
		}
		got = append(got, m.GetData()...)
	}
	if sha(got) != digest {
		t.Fatalf("reader got %d bytes that do not match the blob", len(got))
	}
	testenv.WaitFor(t, 30*time.Second, "the blob evicted once its reader is done", func() bool {
		_, err := n.cache.Stat(digest)
		return errors.Is(err, cache.ErrNotFound)
	})
}

// BenchmarkEviction writes 10 GiB of cached versions (64 versions of 4 MiB
// blobs; -short: 1 GiB) into a DP's cache, then lets retention evict all
// but a tiny latest one, and reports the eviction time against the write
// time measured in the same run (target: at most 5%), best of three rounds.
func BenchmarkEviction(b *testing.B) {
	total := int64(10 << 30)
	if testing.Short() {
		total = 1 << 30
	}
	const blobSize = 4 << 20
	const versions = 64
	perVersion := int(total / versions / blobSize)
	v := newVendor(b)
	base := fill("eviction", blobSize)
	blobBytes := func(i int) []byte {
		binary.BigEndian.PutUint64(base, uint64(i))
		return base
	}
	digests := make([]string, versions*perVersion)
	for i := range digests {
		s := sha256.Sum256(blobBytes(i))
		digests[i] = hex.EncodeToString(s[:])
	}
	var writeS, evictS []float64
	for range b.N * 3 { // best of three rounds: this VM's disk latency varies a lot
		cfg := DefaultConfig()
		cfg.Name, cfg.DataDir = "dp-bench", b.TempDir()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "", ""
		cfg.Upstream, cfg.Trust = []string{"http://127.0.0.1:9/"}, v.trust
		cfg.Logger = slog.New(slog.DiscardHandler)
		cfg.DisableMetrics = true
		n, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		put := func(d string, data []byte) {
			w, err := n.cache.NewWriter(d, int64(len(data)))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				b.Fatal(err)
			}
			if err := w.Commit(); err != nil {
				b.Fatal(err)
			}
		}
		start := time.Now()
		for k := range versions {
			ds := digests[k*perVersion : (k+1)*perVersion]
			for i, d := range ds {
				put(d, blobBytes(k*perVersion+i))
			}
			if err := n.cache.PutVersion(cache.Version{Product: "av", Version: fmt.Sprintf("v%d", k+1), Serial: uint64(k + 1), Blobs: ds, Size: int64(len(ds)) * blobSize}); err != nil {
				b.Fatal(err)
			}
		}
		write := time.Since(start)
		tiny := []byte("latest")
		put(sha(tiny), tiny)
		if err := n.cache.PutVersion(cache.Version{Product: "av", Version: "latest", Serial: versions + 1, Blobs: []string{sha(tiny)}, Size: int64(len(tiny))}); err != nil {
			b.Fatal(err)
		}
		n.cfg.KeepVersions = 1
		start = time.Now()
		if err := n.retainer.Pass(context.Background()); err != nil {
			b.Fatal(err)
		}
		evict := time.Since(start)
		st, err := n.cache.Stats()
		if err != nil || st.Blobs != 1 || st.Versions != 1 {
			b.Fatalf("after eviction: %+v, %v; want the latest version's one blob", st, err)
		}
		n.Close()
		writeS = append(writeS, write.Seconds())
		evictS = append(evictS, evict.Seconds())
	}
	w, e := slices.Min(writeS), slices.Min(evictS)
	b.ReportMetric(float64(total)/w/1e6, "write-MB/s")
	b.ReportMetric(e, "evict-s")
	b.ReportMetric(w, "write-s")
	b.ReportMetric(e/w, "ratio")
	b.Logf("%d MiB in %d versions: write %.2fs, evict %.3fs, ratio %.4f", total>>20, versions, w, e, e/w)
}
