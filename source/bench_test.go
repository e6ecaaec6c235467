package source_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// benchBlobSize is the blob the download benchmarks move.
const benchBlobSize = 256 << 20

// benchRepo writes a benchBlobSize blob of pseudo-random bytes into a
// repository layout and returns the root and the digest.
func benchRepo(b *testing.B) (string, string) {
	b.Helper()
	root := b.TempDir()
	tmp := filepath.Join(root, "blob.tmp")
	f, err := os.Create(tmp)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for written := 0; written < benchBlobSize; written += len(buf) {
		for i := 0; i < len(buf); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		h.Write(buf)
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	dst := filepath.Join(root, filepath.FromSlash(manifest.BlobPath(digest)))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		b.Fatal(err)
	}
	return root, digest
}

// curlDownload runs curl to /dev/null with extra arguments and returns how
// long it took.
func curlDownload(b *testing.B, bin string, args ...string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-sS", "-o", "/dev/null"}, args...)...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("curl %v: %v: %s", args, err, out)
	}
	return time.Since(start)
}

// sourceDownload reads the whole blob from src into io.Discard (through
// the reader's WriteTo when it has one, as io.Copy does) and returns how
// long it took.
func sourceDownload(b *testing.B, src source.Source, digest string) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	rc, err := src.Blob(ctx, digest, 0)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(discard{}, rc)
	rc.Close()
	if err != nil || n != benchBlobSize {
		b.Fatalf("%s: read %d bytes: %v", src, n, err)
	}
	return time.Since(start)
}

// discard is io.Discard without its ReadFrom, so that io.Copy uses the
// reader's WriteTo or a plain 32 KiB buffer, as a real consumer would.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// reportRatio reports MB/s of both and the ratio source speed / curl
// speed (1 means as fast as curl).
func reportRatio(b *testing.B, srcTotal, curlTotal time.Duration) {
	mb := float64(benchBlobSize) * float64(b.N) / 1e6
	b.ReportMetric(mb/srcTotal.Seconds(), "MB/s")
	b.ReportMetric(mb/curlTotal.Seconds(), "curl-MB/s")
	b.ReportMetric(curlTotal.Seconds()/srcTotal.Seconds(), "ratio")
}

// BenchmarkFTP_Download: a 256 MiB blob from a real vsftpd through the FTP
// source, against curl fetching the same file from the same server in the
// same run (ratio = source speed / curl speed; target ≥ 0.9).
func BenchmarkFTP_Download(b *testing.B) {
	curl := testenv.RequireBinary(b, "curl")
	root, digest := benchRepo(b)
	v := testenv.StartVsftpd(b, root, testenv.VsftpdOptions{User: testenv.UniqueUserName(b, "dpbench"), Password: "bench-pw"})
	src, err := source.Parse(v.URL, source.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	url := v.URL + manifest.BlobPath(digest)
	// Warm the page cache and both paths.
	sourceDownload(b, src, digest)
	curlDownload(b, curl, url)
	b.SetBytes(benchBlobSize)
	b.ResetTimer()
	var srcTotal, curlTotal time.Duration
	for range b.N {
		srcTotal += sourceDownload(b, src, digest)
		b.StopTimer()
		curlTotal += curlDownload(b, curl, url)
		b.StartTimer()
	}
	reportRatio(b, srcTotal, curlTotal)
}

// BenchmarkHTTP_ThroughSquid: a 256 MiB blob from a real nginx through a
// real squid with basic auth, via the HTTP source with Options.Proxy,
// against curl -x through the same squid (ratio = source speed / curl
// speed; target ≥ 0.9).
func BenchmarkHTTP_ThroughSquid(b *testing.B) {
	curl := testenv.RequireBinary(b, "curl")
	root, digest := benchRepo(b)
	ngx := testenv.StartNginx(b, root, testenv.NginxOptions{})
	squid := testenv.StartSquid(b, testenv.SquidOptions{User: "bench", Password: "bench-pw"})
	src, err := source.Parse(ngx.URL, source.Options{Proxy: squid.ProxyURL()})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	url := ngx.URL + manifest.BlobPath(digest)
	sourceDownload(b, src, digest)
	curlDownload(b, curl, "-x", squid.URL, url)
	b.SetBytes(benchBlobSize)
	b.ResetTimer()
	var srcTotal, curlTotal time.Duration
	for range b.N {
		srcTotal += sourceDownload(b, src, digest)
		b.StopTimer()
		curlTotal += curlDownload(b, curl, "-x", squid.URL, url)
		b.StartTimer()
	}
	reportRatio(b, srcTotal, curlTotal)
}
