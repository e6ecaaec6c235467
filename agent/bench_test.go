//go:build unix

package agent

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dpcache/dpcache/source"
)

const (
	benchFiles    = 8
	benchFileSize = 4 << 20
)

// benchRepo publishes benchFiles files of benchFileSize bytes and returns
// the repository and the folder they were published from.
func benchRepo(b *testing.B) (*repo, map[string]string) {
	r := newRepo(b)
	files := map[string]string{}
	for i := range benchFiles {
		files[fmt.Sprintf("db/f%02d.bin", i)] = pseudoRandom(benchFileSize + i)
	}
	r.publish(b, "1.0", 0, files)
	return r, files
}

// baselineCopy is what any installer must at least do: read each blob,
// hash it, write it to a new file and fsync it.
func baselineCopy(b *testing.B, r *repo, files map[string]string) time.Duration {
	dst := b.TempDir()
	start := time.Now()
	for p, c := range files {
		in, err := os.Open(r.blobFile(c))
		if err != nil {
			b.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, filepath.Base(p)))
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
			b.Fatal(err)
		}
		out.Sync()
		out.Close()
		in.Close()
	}
	return time.Since(start)
}

// BenchmarkUpdate_Install measures a full install from a folder source
// against baselineCopy of the same bytes (ratio x_baseline: 1.0 means no
// overhead).
func BenchmarkUpdate_Install(b *testing.B) {
	r, files := benchRepo(b)
	var base time.Duration
	const baseRuns = 3
	for range baseRuns {
		syscall.Sync()
		base += baselineCopy(b, r, files)
	}
	base /= baseRuns
	b.SetBytes(benchFiles * benchFileSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		cfg := testConfig(b, r.trust, source.NewFile(r.dir))
		syscall.Sync()
		b.StartTimer()
		if _, err := Update(testCtx(b), cfg); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(per)/float64(base), "x_baseline")
}

// BenchmarkUpdate_OneFileChanged measures an update where one file of
// benchFiles changed, against a full install measured in the same run
// (ratio x_full_install); the unchanged files are verified and linked.
func BenchmarkUpdate_OneFileChanged(b *testing.B) {
	r, files := benchRepo(b)
	// The reference: fresh full installs, averaged; the last one is kept
	// for the incremental updates.
	var full Config
	var fullTime time.Duration
	const fullRuns = 3
	for range fullRuns {
		full = testConfig(b, r.trust, source.NewFile(r.dir))
		syscall.Sync()
		start := time.Now()
		if _, err := Update(testCtx(b), full); err != nil {
			b.Fatal(err)
		}
		fullTime += time.Since(start)
	}
	fullTime /= fullRuns

	// Versions alternate between two contents of one file.
	variants := []string{files["db/f00.bin"], pseudoRandom(benchFileSize - 1)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		files["db/f00.bin"] = variants[(i+1)%2]
		r.publish(b, fmt.Sprintf("1.%d", i+1), 0, files)
		syscall.Sync() // the publish's dirty pages must not slow the update's fsyncs
		b.StartTimer()
		res, err := Update(testCtx(b), full)
		if err != nil {
			b.Fatal(err)
		}
		if res.FilesChanged != 1 {
			b.Fatalf("files changed = %d", res.FilesChanged)
		}
	}
	b.StopTimer()
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(per)/float64(fullTime), "x_full_install")
}
