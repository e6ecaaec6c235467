package manifest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkVerifyManifest measures signature check plus parse and validation
// of a 10,000-file manifest, against a bare json.Unmarshal of the same bytes
// (reported as x_json_unmarshal).
func BenchmarkVerifyManifest(b *testing.B) {
	k, tr := newKey(b)
	m := &Manifest{Product: "kes", Version: "1", Serial: 1, Published: time.Now().UTC()}
	for i := range 10000 {
		m.Files = append(m.Files, File{
			Path: fmt.Sprintf("bases/d%03d/f%05d.avc", i/100, i), Size: int64(i),
			SHA256: SHA256Hex([]byte{byte(i), byte(i >> 8)}), Component: ComponentDatabases,
		})
	}
	data, _ := m.Marshal()
	sig, _ := k.Sign(data)
	l := NewLatest(m, data)

	base := baselineNs(b, func() {
		var x Manifest
		if err := json.Unmarshal(data, &x); err != nil {
			b.Fatal(err)
		}
	})
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := tr.VerifyManifest(data, sig, l); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base, "x_json_unmarshal")
}

// BenchmarkPublish measures publishing 32 MiB in 8 files into an empty
// repository, against copying the same files with io.Copy and fsync
// (reported as x_plain_copy).
func BenchmarkPublish(b *testing.B) {
	k, _ := newKey(b)
	src := b.TempDir()
	buf := make([]byte, 4<<20)
	for i := range 8 {
		_, _ = rand.Read(buf)
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	copyAll := func(dst string) {
		entries, _ := os.ReadDir(src)
		for _, e := range entries {
			in, _ := os.Open(filepath.Join(src, e.Name()))
			out, _ := os.Create(filepath.Join(dst, e.Name()))
			if _, err := io.Copy(out, in); err != nil {
				b.Fatal(err)
			}
			_ = out.Sync()
			_ = out.Close()
			_ = in.Close()
		}
	}
	base := baselineNs(b, func() { copyAll(b.TempDir()) })
	b.SetBytes(8 * int64(len(buf)))
	for b.Loop() {
		if _, err := Publish(PublishOptions{Repo: b.TempDir(), Product: "p", Version: "1", Key: k}, src); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base, "x_plain_copy")
}

// BenchmarkPublish_1GiB measures publishing one 1 GiB file in chunks
// (Chunk: true, into an empty repository) against what any publisher must
// do at least, in the same run and on the same disk: read the file, hash
// it with SHA-256 and write it to one file with fsync. Each iteration runs
// both, baseline first. It reports both speeds and x_speed_of_hash_fsync,
// the publish speed over the baseline's (the goal is >= 0.5), and what
// creating a file costs on that file system (see createCostUs). With -short
// the file is 128 MiB. Run it with -benchtime=1x or 2x: an iteration
// writes 2 GiB, kept until the end. TMPDIR chooses the file system.
func BenchmarkPublish_1GiB(b *testing.B) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 128 << 20
	}
	k, _ := newKey(b)
	src := b.TempDir()
	srcFile := filepath.Join(src, "big.db")
	writeRandomFile(b, srcFile, size)
	work := b.TempDir()

	var baseNs, pubNs float64
	var chunks int
	i := 0
	for b.Loop() {
		i++
		dst := filepath.Join(work, fmt.Sprintf("plain-%d", i))
		start := time.Now()
		hashWriteSync(b, srcFile, dst)
		baseNs += float64(time.Since(start).Nanoseconds())
		b.StopTimer()
		_ = os.Remove(dst)
		repo := filepath.Join(work, fmt.Sprintf("repo-%d", i))
		b.StartTimer()

		start = time.Now()
		r, err := Publish(PublishOptions{Repo: repo, Product: "p", Version: "1", Key: k, Chunk: true}, src)
		if err != nil {
			b.Fatal(err)
		}
		pubNs += float64(time.Since(start).Nanoseconds())
		b.StopTimer()
		chunks = r.BlobsWritten
		b.StartTimer()
		// The repository stays until the end: on ext4 without a journal,
		// creating a file scans past every inode freed in the last 30
		// seconds, so removing 13,000 chunks here would slow the next
		// iteration's creates.
	}
	mbs := func(ns float64) float64 { return float64(size) * float64(i) / 1e6 / (ns / 1e9) }
	b.ReportMetric(mbs(baseNs), "hash_fsync_MB/s")
	b.ReportMetric(mbs(pubNs), "publish_MB/s")
	b.ReportMetric(baseNs/pubNs, "x_speed_of_hash_fsync")
	b.ReportMetric(float64(chunks), "chunks")
	b.ReportMetric(createCostUs(b, work), "us/file_create")
}

// createCostUs returns what creating an empty file costs, in microseconds,
// on the file system of dir: one per chunk is the part of a chunked
// publish no batching removes. (On this project's shared VMs, ext4 without
// a journal, it ranged from 40us to 1.4ms: each create skips the inodes
// freed in the last 30 seconds, and every test run frees thousands.) The
// files stay until the benchmark ends, for the same reason.
func createCostUs(b *testing.B, dir string) float64 {
	dir, err := os.MkdirTemp(dir, "creates")
	if err != nil {
		b.Fatal(err)
	}
	const n = 1000
	start := time.Now()
	for i := range n {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint(i)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		_ = f.Close()
	}
	return float64(time.Since(start).Microseconds()) / n
}

// hashWriteSync is BenchmarkPublish_1GiB's baseline: read src, SHA-256 it
// and write it to dst, then fsync dst and its folder.
func hashWriteSync(b *testing.B, src, dst string) {
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	if _, err := copyBuffered(out, io.TeeReader(in, h)); err != nil {
		b.Fatal(err)
	}
	_ = h.Sum(nil)
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	if err := SyncDir(filepath.Dir(dst)); err != nil {
		b.Fatal(err)
	}
}

// writeRandomFile writes size pseudo-random bytes to path and syncs it, so
// that no write-back of it lands in a measured sync.
func writeRandomFile(b *testing.B, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := mrand.NewChaCha8([32]byte{7})
	buf := make([]byte, 4<<20)
	for n := int64(0); n < size; n += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-n)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// baselineNs runs f repeatedly for about 300ms (at least 3 times) and
// returns its mean duration in nanoseconds. It runs before b's timer is
// reset, so it does not count in b's figures.
func baselineNs(b *testing.B, f func()) float64 {
	b.Helper()
	start := time.Now()
	n := 0
	for n < 3 || time.Since(start) < 300*time.Millisecond {
		f()
		n++
	}
	ns := float64(time.Since(start).Nanoseconds()) / float64(n)
	b.ResetTimer()
	return ns
}
