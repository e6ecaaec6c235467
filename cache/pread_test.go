package cache

import (
	"bytes"
	"math/rand/v2"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestCache_ReadAt_Pread: with chunks above preadMin, every stored chunk
// is found in the file at the offset fileOffset gives, and reads at any
// offset and length give the blob's bytes, through the file and, without
// it, through the memory map alike.
func TestCache_ReadAt_Pread(t *testing.T) {
	t.Parallel()
	const cs = 64 << 10
	c := newTestCache(t, func(cfg *Config) { cfg.ChunkSize, cfg.FlushSize = cs, 2*cs })
	if c.file == nil {
		t.Fatal("the cache file was not opened for reading")
	}
	data, d := blob(7, 5*cs+123)
	ingest(t, c, d, data, 50000)

	k, err := parseDigest(d)
	if err != nil {
		t.Fatal(err)
	}
	err = c.view(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks)
		for i := range uint32(6) {
			v := chunks.Get(chunkKey(k, i))
			off, ok := fileOffset(tx, v)
			if !ok {
				t.Fatalf("chunk %d: not found in the memory map", i)
			}
			got := make([]byte, len(v))
			if _, err := c.file.ReadAt(got, off); err != nil || !bytes.Equal(got, v) {
				t.Fatalf("chunk %d: the file at %d does not hold its bytes (%v)", i, off, err)
			}
		}
		if _, ok := fileOffset(tx, make([]byte, 10)); ok {
			t.Error("a heap slice was placed in the file")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	file := c.file
	for _, via := range []string{"file", "map"} {
		if via == "map" {
			c.file = nil
		}
		for range 200 {
			off := rng.IntN(len(data))
			p := make([]byte, rng.IntN(3*cs))
			n, _ := c.ReadAt(d, p, int64(off))
			if want := min(len(p), len(data)-off); n != want || !bytes.Equal(p[:n], data[off:off+n]) {
				t.Fatalf("via the %s: ReadAt(off %d, len %d) = %d bytes, want %d, or wrong bytes", via, off, len(p), n, want)
			}
		}
	}
	c.file = file
}
