package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Benchmarks: go test -run '^$' -bench . -benchtime 1x ./cache/
// (-short for 256 MiB instead of 1 GiB). Each reports its throughput, the
// baseline's (a plain file, measured in the same iteration) and their ratio.
//
// Measured on the 2-core shared VM (median of 3, 1 GiB, cache-MB/s; the
// plain file with io.Copy + fsync did 450-700 MB/s): default (256 KiB
// chunks, 8 MiB batches, synced) 743, ratio 1.33 (0.61-1.67); after a
// delete (page reuse) 648; batches of 1 MiB 231, 4 MiB 468, 16 MiB 758,
// 64 MiB 600; NoSync 535 (4 MiB batches 521, 64 MiB 639); chunks of 128 KiB
// 474, 512 KiB 687, 1 MiB with 1/16/32 MiB batches 186/669/802, 4 MiB 253;
// array freelist 804, NoFreelistSync 706, InitialMmapSize 0 691 / 8 GiB 777,
// AllocSize 16 MiB 487 / 256 MiB 694. With -short (256 MiB) the plain file
// reaches 1.0-1.3 GB/s (its single fsync is cheap) and the ratio falls to
// about 0.4: the cache is CPU-bound (SHA-256, two copies, bbolt's page
// writes) at 450-750 MB/s. ReadAt: 15-21 GB/s, ratio 0.87-1.26 against
// ReadAt on a plain file in the page cache.

const benchPiece = 1 << 20 // the caller's write and read size

func benchSize() int64 {
	if testing.Short() {
		return 256 << 20
	}
	return 1 << 30
}

// stream is size deterministic bytes, produced in 1 MiB pieces: 16 MiB of
// random bytes repeated, each piece stamped with its index.
type stream struct {
	base    []byte
	scratch []byte
	size    int64
}

func newStream(size int64) *stream {
	base := make([]byte, 16<<20)
	_, _ = rand.NewChaCha8([32]byte{42}).Read(base)
	return &stream{base: base, scratch: make([]byte, benchPiece), size: size}
}

// WriteTo writes the stream in 1 MiB pieces, so io.Copy hands the
// destination 1 MiB writes.
func (s *stream) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for i := int64(0); n < s.size; i++ {
		p := s.scratch[:min(benchPiece, s.size-n)]
		off := (i * benchPiece) % int64(len(s.base))
		copy(p, s.base[off:])
		binary.BigEndian.PutUint64(p, uint64(i))
		m, err := w.Write(p)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (s *stream) Read([]byte) (int, error) { panic("use WriteTo") }

func (s *stream) digest() string {
	h := sha256.New()
	_, _ = s.WriteTo(h)
	return hex.EncodeToString(h.Sum(nil))
}

// writePlainFile is the baseline: io.Copy into a new file, then fsync.
func writePlainFile(b *testing.B, path string, s *stream) time.Duration {
	return writeFile(b, path, s, "")
}

// writeFile is writePlainFile; with a digest it also hashes the bytes as
// they are written (SHA-256, on the same goroutine, as a plain downloader
// that checks what it got) and checks the sum at the end.
func writeFile(b *testing.B, path string, s *stream, digest string) time.Duration {
	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	var w io.Writer = f
	h := sha256.New()
	if digest != "" {
		w = io.MultiWriter(f, h)
	}
	if _, err := io.Copy(w, s); err != nil {
		b.Fatal(err)
	}
	if digest != "" && hex.EncodeToString(h.Sum(nil)) != digest {
		b.Fatal("plain file: SHA-256 differs")
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func benchConfig(path string) Config {
	cfg := DefaultConfig()
	cfg.Path = path
	cfg.Logger = nil
	return cfg
}

// ingestStream ingests s into c as one blob and commits (fsync included).
func ingestStream(b *testing.B, c *Cache, digest string, s *stream) time.Duration {
	start := time.Now()
	w, err := c.NewWriter(digest, s.size)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(w, s); err != nil {
		b.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func benchIngest(b *testing.B, mod func(*Config), reuse bool) {
	s := newStream(benchSize())
	digest := s.digest()
	var fileTime, shaTime, cacheTime, shaCPU, cacheCPU time.Duration
	b.SetBytes(s.size)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dir := b.TempDir()
		fileTime += writePlainFile(b, filepath.Join(dir, "plain"), s)
		_ = os.Remove(filepath.Join(dir, "plain"))
		cpu0 := cpuTime()
		shaTime += writeFile(b, filepath.Join(dir, "plain"), s, digest)
		shaCPU += cpuTime() - cpu0
		_ = os.Remove(filepath.Join(dir, "plain"))
		cfg := benchConfig(filepath.Join(dir, "cache.db"))
		mod(&cfg)
		c, err := Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if reuse { // steady state: the pages of a deleted blob are reused
			ingestStream(b, c, digest, s)
			if err := c.DeleteBlob(digest); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		cpu0 = cpuTime()
		cacheTime += ingestStream(b, c, digest, s)
		cacheCPU += cpuTime() - cpu0
		b.StopTimer()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(cfg.Path)
		b.StartTimer()
	}
	total := s.size * int64(b.N)
	b.ReportMetric(mbps(total, cacheTime), "cache-MB/s")
	b.ReportMetric(mbps(total, fileTime), "file-MB/s")
	b.ReportMetric(mbps(total, shaTime), "file+sha-MB/s")
	b.ReportMetric(fileTime.Seconds()/cacheTime.Seconds(), "ratio")
	b.ReportMetric(shaTime.Seconds()/cacheTime.Seconds(), "ratio-sha")
	// CPU time (user and system, all threads) the ingest takes for one
	// of the hashed file: the price of using the second core, and what
	// the ratios fall to when the cores are busy with other work.
	b.ReportMetric(cacheCPU.Seconds()/shaCPU.Seconds(), "cpu-vs-sha")
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIngest ingests 1 GiB in 1 MiB writes with the default Config
// (hashing and the commit's fsync included) against io.Copy into a plain
// file plus fsync (ratio), and against the same while hashing (SHA-256)
// and checking the sum, as a plain download that verifies what it got does
// (ratio-sha; issue 12's goal is ratio-sha >= 1.0).
func BenchmarkIngest(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchIngest(b, func(*Config) {}, false) })
	b.Run("default-reuse", func(b *testing.B) { benchIngest(b, func(*Config) {}, true) })
}

// BenchmarkIngestOptions measures the tuning knobs one at a time against
// the defaults.
func BenchmarkIngestOptions(b *testing.B) {
	opts := []struct {
		name string
		mod  func(*Config)
	}{
		{"flush=1M", func(c *Config) { c.FlushSize = 1 << 20 }},
		{"flush=4M", func(c *Config) { c.FlushSize = 4 << 20 }},
		{"flush=8M", func(c *Config) { c.FlushSize = 8 << 20 }},
		{"flush=32M", func(c *Config) { c.FlushSize = 32 << 20 }},
		{"flush=64M", func(c *Config) { c.FlushSize = 64 << 20 }},
		{"nosync", func(c *Config) { c.NoSync = true }},
		{"nosync/flush=4M", func(c *Config) { c.NoSync = true; c.FlushSize = 4 << 20 }},
		{"nosync/flush=64M", func(c *Config) { c.NoSync = true; c.FlushSize = 64 << 20 }},
		{"chunk=128K", func(c *Config) { c.ChunkSize = 128 << 10 }},
		{"chunk=512K", func(c *Config) { c.ChunkSize = 512 << 10 }},
		{"chunk=1M/flush=1M", func(c *Config) { c.ChunkSize = 1 << 20; c.FlushSize = 1 << 20 }},
		{"flush=16M", func(c *Config) { c.FlushSize = 16 << 20 }},
		{"chunk=1M/flush=16M", func(c *Config) { c.ChunkSize = 1 << 20; c.FlushSize = 16 << 20 }},
		{"chunk=1M/flush=32M", func(c *Config) { c.ChunkSize = 1 << 20; c.FlushSize = 32 << 20 }},
		{"chunk=4M", func(c *Config) { c.ChunkSize = 4 << 20 }},
		{"freelist=array", func(c *Config) { c.FreelistType = FreelistArray }},
		{"nofreelistsync", func(c *Config) { c.NoFreelistSync = true }},
		{"mmap=0", func(c *Config) { c.InitialMmapSize = 0 }},
		{"mmap=8G", func(c *Config) { c.InitialMmapSize = 8 << 30 }},
		{"alloc=16M", func(c *Config) { c.AllocSize = 16 << 20 }},
		{"alloc=256M", func(c *Config) { c.AllocSize = 256 << 20 }},
	}
	for _, o := range opts {
		b.Run(o.name, func(b *testing.B) { benchIngest(b, o.mod, false) })
	}
}

// BenchmarkReadAt reads a cached 1 GiB blob in 1 MiB ReadAt calls against
// ReadAt on a plain file holding the same bytes (both in the page cache).
func BenchmarkReadAt(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchReadAt(b, func(*Config) {}) })
	for _, cs := range []int{1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("chunk=%dK", cs>>10), func(b *testing.B) {
			benchReadAt(b, func(c *Config) { c.ChunkSize = cs })
		})
	}
}

func benchReadAt(b *testing.B, mod func(*Config)) {
	s := newStream(benchSize())
	digest := s.digest()
	dir := b.TempDir()
	plain := filepath.Join(dir, "plain")
	writePlainFile(b, plain, s)
	f, err := os.Open(plain)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	cfg := benchConfig(filepath.Join(dir, "cache.db"))
	mod(&cfg)
	c, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ingestStream(b, c, digest, s)

	p := make([]byte, benchPiece)
	readFile := func() {
		for off := int64(0); ; off += benchPiece {
			if _, err := f.ReadAt(p, off); err == io.EOF {
				return
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
	readCache := func() {
		for off := int64(0); ; off += benchPiece {
			if _, err := c.ReadAt(digest, p, off); err == io.EOF {
				return
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
	readFile() // warm both
	readCache()
	var fileTime, cacheTime time.Duration
	b.SetBytes(s.size)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		start := time.Now()
		readFile()
		fileTime += time.Since(start)
		b.StartTimer()
		start = time.Now()
		readCache()
		cacheTime += time.Since(start)
	}
	total := s.size * int64(b.N)
	b.ReportMetric(mbps(total, cacheTime), "cache-MB/s")
	b.ReportMetric(mbps(total, fileTime), "file-MB/s")
	b.ReportMetric(fileTime.Seconds()/cacheTime.Seconds(), "ratio")
}
