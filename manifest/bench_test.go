package manifest

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
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
