package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
)

// BenchmarkIngest measures a cold DP ingesting a 1 GiB blob from nginx into
// its bbolt cache (hashing, chunking, the commit's fsync included) against
// a plain HTTP download of the same blob to a file with an fsync at the end
// (ratio), and against the same download hashing what it writes (SHA-256)
// and checking the sum (ratio-sha; issue 12's goal is ratio-sha >= 1.0),
// measured in the same run. -short uses 256 MiB. Best of three rounds each.
func BenchmarkIngest(b *testing.B) {
	size := 1 << 30
	if testing.Short() {
		size = 256 << 20
	}
	v := newVendor(b)
	pub := v.publish(b, "av", "1", 1, map[string]int{"databases/big.dat": size})
	digest := pub.Manifest.Files[0].SHA256
	ngx := testenv.StartNginx(b, v.repo, testenv.NginxOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	download := func(verify bool) time.Duration {
		path := filepath.Join(b.TempDir(), "blob")
		start := time.Now()
		resp, err := http.Get(ngx.URL + manifest.BlobPath(digest))
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		var w io.Writer = f
		h := sha256.New()
		if verify {
			w = io.MultiWriter(f, h)
		}
		if _, err := io.Copy(w, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if verify && hex.EncodeToString(h.Sum(nil)) != digest {
			b.Fatal("download: SHA-256 differs")
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
		d := time.Since(start)
		os.Remove(path)
		return d
	}
	ingest := func() time.Duration {
		n := startNode(b, v, ngx.URL, nil)
		if _, _, err := n.catalog.ManifestDoc(ctx, "av", "1"); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := n.fetcher.EnsureBlob(ctx, digest); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var plain, hashed, cached []float64
	mbps := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	for range b.N {
		for range 3 {
			plain = append(plain, mbps(download(false)))
			hashed = append(hashed, mbps(download(true)))
			cached = append(cached, mbps(ingest()))
		}
	}
	bp, bh, bc := slices.Max(plain), slices.Max(hashed), slices.Max(cached)
	b.ReportMetric(bp, "download-MB/s")
	b.ReportMetric(bh, "download+sha-MB/s")
	b.ReportMetric(bc, "ingest-MB/s")
	b.ReportMetric(bc/bp, "ratio")
	b.ReportMetric(bc/bh, "ratio-sha")
	b.Logf("download to file %v MB/s, with SHA-256 %v MB/s, ingest into cache %v MB/s, best ratios %.2f, %.2f (with SHA-256)",
		ints(plain), ints(hashed), ints(cached), bc/bp, bc/bh)
}

func ints(v []float64) []int {
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}
