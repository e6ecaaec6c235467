package agent

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/restic/chunker"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// chunkWorkloads are issue 13's edits of a 64 MiB database: v2 from v1.
var chunkWorkloads = []struct {
	name string
	edit func(v1 []byte) []byte
}{
	{"region1MiB+insert100KiB", func(v1 []byte) []byte {
		v2 := append([]byte{}, v1[:16<<20]...)
		v2 = append(v2, randBytes(1<<20, 1)...)
		v2 = append(v2, v1[17<<20:40<<20]...)
		v2 = append(v2, randBytes(100<<10, 2)...)
		return append(v2, v1[40<<20:]...)
	}},
	{"scattered200x4KiB", func(v1 []byte) []byte {
		v2 := bytes.Clone(v1)
		r := rand.New(rand.NewPCG(3, 4))
		for i := range 200 {
			off := r.IntN(len(v2) - 4<<10)
			copy(v2[off:], randBytes(4<<10, byte(10+i)))
		}
		return v2
	}},
}

func randBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// BenchmarkChunkedUpdate_VsXdelta3 updates an endpoint from v1 to v2 of a
// 64 MiB chunked database for each of issue 13's edit patterns and prints
// the bytes the update downloaded (bytes_downloaded), and with the v2
// manifest (which lists the chunks), against the size of `xdelta3 -e -s
// v1 v2`, measured in the same run. It also prints, for other average
// chunk sizes, the new chunks' bytes plus the chunk list's bytes, to show
// the trade-off behind manifest.ChunkAverageBits. Run with -benchtime=1x.
func BenchmarkChunkedUpdate_VsXdelta3(b *testing.B) {
	xdelta, err := exec.LookPath("xdelta3")
	if err != nil {
		b.Skip("xdelta3 not installed (apt-get install xdelta3): no baseline to compare with")
	}
	v1 := randBytes(64<<20, 0)
	for _, w := range chunkWorkloads {
		b.Run(w.name, func(b *testing.B) {
			v2 := w.edit(v1)
			dir := b.TempDir()
			old, nw, patch := filepath.Join(dir, "v1"), filepath.Join(dir, "v2"), filepath.Join(dir, "patch")
			for p, d := range map[string][]byte{old: v1, nw: v2} {
				if err := os.WriteFile(p, d, 0o644); err != nil {
					b.Fatal(err)
				}
			}
			if out, err := exec.Command(xdelta, "-e", "-f", "-s", old, nw, patch).CombinedOutput(); err != nil {
				b.Fatalf("xdelta3: %v: %s", err, out)
			}
			fi, err := os.Stat(patch)
			if err != nil {
				b.Fatal(err)
			}
			xd := fi.Size()

			r := newRepo(b)
			r.publishWith(b, manifest.PublishOptions{Version: "1", Chunk: true}, map[string]string{"db/base.db": string(v1)})
			pub2 := r.publishWith(b, manifest.PublishOptions{Version: "2", Serial: 2, Chunk: true}, map[string]string{"db/base.db": string(v2)})
			mdata, err := pub2.Manifest.Marshal()
			if err != nil {
				b.Fatal(err)
			}
			var got int64
			for b.Loop() {
				b.StopTimer()
				// An endpoint on v1: installed from a repository holding v1 only.
				r1 := r.sameKeyRepo(b)
				r1.publishWith(b, manifest.PublishOptions{Version: "1", Chunk: true}, map[string]string{"db/base.db": string(v1)})
				cfg := testConfig(b, r.trust, source.NewFile(r1.dir))
				mustUpdate(b, cfg)
				cfg.Sources = []source.Source{source.NewFile(r.dir)}
				b.StartTimer()
				got = mustUpdate(b, cfg).BytesDownloaded
			}
			b.ReportMetric(float64(got)/float64(xd), "chunked/xdelta3")
			b.ReportMetric(float64(got+int64(len(mdata)))/float64(xd), "with-manifest/xdelta3")
			b.Logf("%s: downloaded %d bytes (+%d of manifest), xdelta3 patch %d bytes: %.2fx (%.2fx with the manifest)",
				w.name, got, len(mdata), xd, float64(got)/float64(xd), float64(got+int64(len(mdata)))/float64(xd))
			for _, bits := range []int{13, 14, 15, 16, 17} {
				chunks, fresh := cutNew(v1, v2, bits)
				list := int64(chunks) * 90 // one {"sha256", "size"} of the indented manifest
				b.Logf("  average 2^%d+%d KiB: %d chunks in v2, new chunks %d bytes + chunk list %d bytes = %.2fx xdelta3",
					bits, (1<<bits)/4>>10, chunks, fresh, list, float64(fresh+list)/float64(xd))
			}
		})
	}
}

// cutNew cuts v1 and v2 with average bits (min size a quarter of the
// average, max 8 times) and returns v2's chunk count and the bytes of
// its chunks not in v1.
func cutNew(v1, v2 []byte, bits int) (int, int64) {
	cut := func(data []byte, fn func([]byte)) {
		c := chunker.NewWithBoundaries(bytes.NewReader(data), manifest.ChunkPolynomial, uint(1<<bits)/4, uint(8<<bits))
		c.SetAverageBits(bits)
		buf := make([]byte, 8<<bits)
		for {
			ch, err := c.Next(buf)
			if err != nil {
				return
			}
			fn(ch.Data)
		}
	}
	have := map[[32]byte]bool{}
	cut(v1, func(d []byte) { have[sha256.Sum256(d)] = true })
	n, fresh := 0, int64(0)
	cut(v2, func(d []byte) {
		n++
		if s := sha256.Sum256(d); !have[s] {
			have[s] = true
			fresh += int64(len(d))
		}
	})
	return n, fresh
}
