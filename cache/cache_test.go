package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	ok := DefaultConfig()
	ok.Path = "x.db"
	tests := []struct {
		name string
		mod  func(*Config)
		want error
	}{
		{"default", func(*Config) {}, nil},
		{"no path", func(c *Config) { c.Path = "" }, ErrInvalid},
		{"zero chunk", func(c *Config) { c.ChunkSize = 0 }, ErrInvalid},
		{"huge chunk", func(c *Config) { c.ChunkSize = 1 << 30 }, ErrInvalid},
		{"negative flush", func(c *Config) { c.FlushSize = -1 }, ErrInvalid},
		{"bad freelist", func(c *Config) { c.FreelistType = "tree" }, ErrInvalid},
		{"array freelist", func(c *Config) { c.FreelistType = FreelistArray }, nil},
		{"negative mmap", func(c *Config) { c.InitialMmapSize = -1 }, ErrInvalid},
		{"negative alloc", func(c *Config) { c.AllocSize = -1 }, ErrInvalid},
		{"negative timeout", func(c *Config) { c.OpenTimeout = -time.Second }, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := ok
			tt.mod(&cfg)
			if err := cfg.Validate(); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Validate() = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	t.Parallel()
	good := strings.Repeat("0123456789abcdef", 4)
	tests := []struct {
		in string
		ok bool
	}{
		{good, true},
		{strings.ToUpper(good), false},
		{good[:63], false},
		{good + "0", false},
		{strings.Repeat("g", 64), false},
		{"", false},
	}
	for _, tt := range tests {
		_, err := parseDigest(tt.in)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("parseDigest(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
	}
}

func TestCache_Roundtrip(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	const cs = 4 << 10
	tests := []struct {
		size, step int
	}{
		{0, 1}, {1, 1}, {cs - 1, 7}, {cs, cs}, {cs + 1, 1000}, {2 * cs, 3 * cs},
		{3*cs + 7, 1}, {5*cs + 123, cs + 1}, {17 * cs, 64 << 10}, {100003, 4097},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("size=%d/step=%d", tt.size, tt.step), func(t *testing.T) {
			t.Parallel()
			data, d := blob(uint64(i), tt.size)
			if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Stat before ingest = %v, want ErrNotFound", err)
			}
			ingest(t, c, d, data, tt.step)
			size, err := c.Stat(d)
			if err != nil || size != int64(tt.size) {
				t.Fatalf("Stat = %d, %v; want %d", size, err, tt.size)
			}
			for _, step := range []int{1 << 20, cs, 999} {
				if got := readAll(t, c, d, step); !bytes.Equal(got, data) {
					t.Fatalf("read back %d bytes in steps of %d: content differs", len(got), step)
				}
			}
			if _, err := c.NewWriter(d, int64(tt.size)); !errors.Is(err, ErrExists) {
				t.Fatalf("NewWriter on a whole blob = %v, want ErrExists", err)
			}
			if n := chunkCount(t, c, d); n != (tt.size+cs-1)/cs {
				t.Fatalf("%d chunks stored, want %d", n, (tt.size+cs-1)/cs)
			}
		})
	}
}

func TestCache_ReadAt_OddOffsets(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	const cs = 4 << 10
	data, d := blob(1, 3*cs+100)
	ingest(t, c, d, data, 5000)
	size := int64(len(data))
	tests := []struct {
		off    int64
		n      int
		wantN  int
		wantEF bool
	}{
		{0, 1, 1, false},
		{1, cs, cs, false},
		{cs - 1, 2, 2, false},
		{cs - 3, 2*cs + 6, 2*cs + 6, false},
		{size - 1, 1, 1, false},
		{size - 1, 2, 1, true},
		{size - 100, 4096, 100, true},
		{size, 1, 0, true},
		{size + 10, 1, 0, true},
		{0, int(size) + 1, int(size), true},
		{17, 0, 0, false},
	}
	for _, tt := range tests {
		p := make([]byte, tt.n)
		n, err := c.ReadAt(d, p, tt.off)
		if n != tt.wantN || (err == io.EOF) != tt.wantEF || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(off %d, len %d) = %d, %v; want %d, eof=%v", tt.off, tt.n, n, err, tt.wantN, tt.wantEF)
			continue
		}
		if tt.off < size && !bytes.Equal(p[:n], data[tt.off:tt.off+int64(n)]) {
			t.Errorf("ReadAt(off %d, len %d): wrong bytes", tt.off, tt.n)
		}
	}
	if _, err := c.ReadAt(d, make([]byte, 1), -1); !errors.Is(err, ErrInvalid) {
		t.Errorf("ReadAt(-1) = %v, want ErrInvalid", err)
	}
	if _, err := c.ReadAt("nothex", make([]byte, 1), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("ReadAt(bad digest) = %v, want ErrInvalid", err)
	}
	_, other := blob(2, 10)
	if _, err := c.ReadAt(other, make([]byte, 1), 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadAt(absent) = %v, want ErrNotFound", err)
	}
}

func TestWriter_Commit_DigestMismatch(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(3, 5*4096+10)
	bad := bytes.Clone(data)
	bad[len(bad)-1] ^= 1
	w, err := c.NewWriter(d, int64(len(bad)))
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, bad, 3000)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if w.Flushed() == 0 {
		t.Fatal("no chunk flushed before Commit; the test must cover stored pending chunks")
	}
	if err := w.Commit(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
	}
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after mismatch = %v, want ErrNotFound", err)
	}
	if _, err := c.Blob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Blob after mismatch = %v, want ErrNotFound (pending gone)", err)
	}
	if _, err := c.ReadPendingAt(d, make([]byte, 10), 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadPendingAt after mismatch = %v, want ErrNotFound", err)
	}
	if n := chunkCount(t, c, d); n != 0 {
		t.Fatalf("%d chunks left after mismatch", n)
	}
	if err := w.Commit(); !errors.Is(err, ErrWriterDone) {
		t.Fatalf("second Commit = %v, want ErrWriterDone", err)
	}
	if _, err := w.Write([]byte{1}); !errors.Is(err, ErrWriterDone) {
		t.Fatalf("Write after Commit = %v, want ErrWriterDone", err)
	}
	// The digest is free again and a correct ingest succeeds.
	ingest(t, c, d, data, 4096)
	if got := readAll(t, c, d, 1<<20); !bytes.Equal(got, data) {
		t.Fatal("content differs after re-ingest")
	}
}

// TestWriter_Commit_DigestMismatch_Anywhere flips one byte wherever it
// lands (a batch hashed and stored behind Write, the batch in flight at
// Commit, the bytes Commit stores itself) and checks that Commit refuses the
// blob, and accepts it when nothing is flipped.
func TestWriter_Commit_DigestMismatch_Anywhere(t *testing.T) {
	t.Parallel()
	data, d := blob(4, 9*4096+123)
	for _, tc := range []struct {
		name  string
		flip  int // -1: none
		piece int
	}{
		{"intact", -1, 1000},
		{"intact-big-writes", -1, 20000},
		{"first-byte", 0, 1000},
		{"first-batch-end", 8<<10 - 1, 3000},
		{"middle-batch", 4*4096 + 7, 5000},
		{"last-full-chunk", 8*4096 + 1, 4096},
		{"remainder", len(data) - 1, 3000},
		{"one-write", 5 * 4096, len(data)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newTestCache(t)
			in := bytes.Clone(data)
			if tc.flip >= 0 {
				in[tc.flip] ^= 0x80
			}
			w, err := c.NewWriter(d, int64(len(in)))
			if err != nil {
				t.Fatal(err)
			}
			writeAll(t, w, in, tc.piece)
			err = w.Commit()
			if tc.flip < 0 {
				if err != nil {
					t.Fatalf("Commit = %v", err)
				}
				if got := readAll(t, c, d, 1<<20); !bytes.Equal(got, data) {
					t.Fatal("content differs")
				}
				return
			}
			if !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
			}
			if _, err := c.Blob(d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Blob after mismatch = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestWriter_SizeMismatch(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(4, 3*4096+5)

	t.Run("too large", func(t *testing.T) {
		w, err := c.NewWriter(d, int64(len(data))-1)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Discard()
		if n, err := w.Write(data); !errors.Is(err, ErrTooLarge) || n != 0 {
			t.Fatalf("Write past size = %d, %v; want 0, ErrTooLarge", n, err)
		}
		if w.Offset() != 0 {
			t.Fatalf("Offset = %d after a refused write", w.Offset())
		}
	})
	t.Run("short commit keeps pending", func(t *testing.T) {
		w, err := c.NewWriter(d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		writeAll(t, w, data[:2*4096+1], 4096)
		if err := w.Commit(); !errors.Is(err, ErrSizeMismatch) {
			t.Fatalf("short Commit = %v, want ErrSizeMismatch", err)
		}
		if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Stat after short commit = %v", err)
		}
		w2, err := c.NewWriter(d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if w2.Offset() != 2*4096 {
			t.Fatalf("resume Offset = %d, want %d", w2.Offset(), 2*4096)
		}
		writeAll(t, w2, data[w2.Offset():], 100)
		if err := w2.Commit(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("different announced size restarts", func(t *testing.T) {
		data, d := blob(5, 3*4096)
		w, _ := c.NewWriter(d, 999999)
		writeAll(t, w, data[:2*4096], 4096)
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		w, err := c.NewWriter(d, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if w.Offset() != 0 {
			t.Fatalf("Offset = %d, want 0: a pending blob of another size must not be resumed", w.Offset())
		}
		writeAll(t, w, data, 4096)
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		if _, err := c.NewWriter(d, -2); !errors.Is(err, ErrInvalid) {
			t.Fatalf("NewWriter(size -2) = %v", err)
		}
		if _, err := c.NewWriter(d, 1<<62); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("NewWriter(size 2^62) = %v", err)
		}
	})
}

func TestWriter_SizeUnknown(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(6, 4*4096+77)
	w, err := c.NewWriter(d, SizeUnknown)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, data[:2*4096+10], 1000)
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	// Resume with the size now known.
	w, err = c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != 2*4096 || w.Size() != int64(len(data)) {
		t.Fatalf("resume: Offset %d Size %d", w.Offset(), w.Size())
	}
	writeAll(t, w, data[w.Offset():], 1000)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, d, 3000); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

func TestWriter_Resume_AfterAbort(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(7, 10*4096+321)
	w, err := c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, data[:5*4096+100], 1500)
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("second Abort = %v, want nil", err)
	}
	bi, err := c.Blob(d)
	if err != nil || bi.Whole || bi.Writing || bi.Stored != 5*4096 || bi.Size != int64(len(data)) {
		t.Fatalf("Blob after Abort = %+v, %v", bi, err)
	}
	if p, err := c.PendingBlobs(); err != nil || len(p) != 1 || p[0].Digest != d {
		t.Fatalf("PendingBlobs = %+v, %v", p, err)
	}
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat of a pending blob = %v, want ErrNotFound", err)
	}

	w, err = c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != 5*4096 || w.Flushed() != 5*4096 {
		t.Fatalf("resumed Offset %d Flushed %d, want %d", w.Offset(), w.Flushed(), 5*4096)
	}
	writeAll(t, w, data[w.Offset():], 777)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, d, 4096); !bytes.Equal(got, data) {
		t.Fatal("content differs after resume")
	}
	if p, _ := c.PendingBlobs(); len(p) != 0 {
		t.Fatalf("PendingBlobs after commit = %+v", p)
	}
}

func TestWriter_Resume_AfterReopen(t *testing.T) {
	t.Parallel()
	cfg := testConfig(filepath.Join(t.TempDir(), "cache.db"))
	data, d := blob(8, 9*4096+5)
	c := mustOpen(t, cfg)
	w, err := c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, data[:6*4096+50], 4096) // never committed nor aborted
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	flushed := w.Flushed()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[6*4096+50 : 9*4096]); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close = %v, want ErrClosed", err)
	}

	// Reopen with another chunk size: the pending blob keeps its own.
	cfg.ChunkSize = 8 << 10
	c = mustOpen(t, cfg)
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat of a pending blob after reopen = %v", err)
	}
	w, err = c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != flushed || flushed == 0 {
		t.Fatalf("resumed at %d, want %d (> 0)", w.Offset(), flushed)
	}
	writeAll(t, w, data[w.Offset():], 3333)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, d, 5000); !bytes.Equal(got, data) {
		t.Fatal("content differs after resume")
	}
}

func TestWriter_Resume_DamagedPending(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(9, 6*4096)
	w, _ := c.NewWriter(d, int64(len(data)))
	writeAll(t, w, data[:4*4096], 4096)
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	// Truncate a stored chunk behind the cache's back.
	k, _ := parseDigest(d)
	err := c.update(false, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).Put(chunkKey(k, 2), []byte("short"))
	})
	if err != nil {
		t.Fatal(err)
	}
	w, err = c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Offset() != 0 {
		t.Fatalf("Offset = %d, want 0: a damaged pending blob starts over", w.Offset())
	}
	writeAll(t, w, data, 4096)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, d, 4096); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
}

func TestWriter_Resume_CorruptedPendingBytes(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(10, 6*4096)
	w, _ := c.NewWriter(d, int64(len(data)))
	writeAll(t, w, data[:4*4096], 4096)
	_ = w.Abort()
	// Flip a bit of a stored chunk: the re-hash at resume carries it into the
	// final digest, so Commit refuses the blob.
	k, _ := parseDigest(d)
	bad := bytes.Clone(data[4096 : 2*4096])
	bad[10] ^= 0x80
	if err := c.update(false, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).Put(chunkKey(k, 1), bad)
	}); err != nil {
		t.Fatal(err)
	}
	w, err := c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, data[w.Offset():], 4096)
	if err := w.Commit(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit over corrupted stored bytes = %v, want ErrDigestMismatch", err)
	}
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat = %v", err)
	}
}

func TestWriter_Busy(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(11, 3*4096)
	w, err := c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewWriter(d, int64(len(data))); !errors.Is(err, ErrBusy) {
		t.Fatalf("second NewWriter = %v, want ErrBusy", err)
	}
	if err := c.DeleteBlob(d); !errors.Is(err, ErrBusy) {
		t.Fatalf("DeleteBlob during a write = %v, want ErrBusy", err)
	}
	if bi, err := c.Blob(d); err != nil || !bi.Writing {
		t.Fatalf("Blob during a write = %+v, %v", bi, err)
	}
	_, other := blob(12, 10)
	w2, err := c.NewWriter(other, 10)
	if err != nil {
		t.Fatalf("NewWriter of another digest = %v", err)
	}
	_ = w2.Discard()
	writeAll(t, w, data[:4096], 4096)
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	w, err = c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatalf("NewWriter after Abort = %v", err)
	}
	if err := w.Discard(); err != nil {
		t.Fatal(err)
	}
	if err := w.Discard(); !errors.Is(err, ErrWriterDone) {
		t.Fatalf("second Discard = %v", err)
	}
	if _, err := c.Blob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Blob after Discard = %v, want ErrNotFound", err)
	}
	if n := chunkCount(t, c, d); n != 0 {
		t.Fatalf("%d chunks left after Discard", n)
	}
}

// TestWriter_ReadBufferedAt reads a blob while it is written, as a fetch's
// readers do: every byte below Offset is stored (ReadPendingAt, below
// Flushed) or in memory (ReadBufferedAt), whatever the loop is doing, with
// several batches queued behind the writer.
func TestWriter_ReadBufferedAt(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, func(cfg *Config) { cfg.WriteBehind = 3 * cfg.FlushSize })
	data, d := blob(15, 40*4096+333)
	w, err := c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if n := w.ReadBufferedAt(make([]byte, 10), 0); n != 0 {
		t.Fatalf("ReadBufferedAt before any Write = %d, want 0", n)
	}
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		p := make([]byte, 5000)
		for pos := int64(0); pos < int64(len(data)); {
			select {
			case <-done:
				return
			default:
			}
			flushed, written := w.Flushed(), w.Offset()
			var n int
			switch {
			case pos < flushed:
				n, err = c.ReadPendingAt(d, p[:min(int64(len(p)), flushed-pos)], pos)
				if errors.Is(err, io.EOF) { // whole meanwhile
					err = nil
				}
				if err != nil {
					errc <- fmt.Errorf("ReadPendingAt(%d): %w", pos, err)
					return
				}
			case pos < written:
				n = w.ReadBufferedAt(p, pos) // 0: stored meanwhile, look again
				if int64(n) > written-pos && w.Offset() == written {
					errc <- fmt.Errorf("ReadBufferedAt(%d) = %d bytes, past Offset %d", pos, n, written)
					return
				}
			}
			if !bytes.Equal(p[:n], data[pos:pos+int64(n)]) {
				errc <- fmt.Errorf("bytes at %d differ", pos)
				return
			}
			pos += int64(n)
			if n == 0 {
				runtime.Gosched()
			}
		}
	}()
	writeAll(t, w, data, 1500)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := w.ReadBufferedAt(make([]byte, 10), 0); n != 0 {
		t.Fatalf("ReadBufferedAt after Commit = %d, want 0", n)
	}
}

func TestCache_ReadPendingAt(t *testing.T) {
	t.Parallel()
	c := newTestCache(t, func(cfg *Config) { cfg.FlushSize = 4096 })
	data, d := blob(13, 5*4096+100)
	w, err := c.NewWriter(d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 3000)
	if n, err := c.ReadPendingAt(d, p, 0); n != 0 || err != nil {
		t.Fatalf("ReadPendingAt before any chunk = %d, %v; want 0, nil", n, err)
	}
	progress := w.Progress()
	writeAll(t, w, data[:4096+10], 4096+10)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-progress:
	default:
		t.Fatal("Progress not signalled after a chunk was stored")
	}
	if w.Flushed() != 4096 || w.Offset() != 4096+10 {
		t.Fatalf("Flushed %d Offset %d", w.Flushed(), w.Offset())
	}
	// Below Flushed: served. Across it: cut at Flushed. Above: nothing yet.
	n, err := c.ReadPendingAt(d, p, 100)
	if n != 3000 || err != nil || !bytes.Equal(p[:n], data[100:3100]) {
		t.Fatalf("ReadPendingAt(100) = %d, %v", n, err)
	}
	n, err = c.ReadPendingAt(d, p, 4000)
	if n != 96 || err != nil || !bytes.Equal(p[:n], data[4000:4096]) {
		t.Fatalf("ReadPendingAt(4000) = %d, %v; want 96, nil", n, err)
	}
	if n, err = c.ReadPendingAt(d, p, 4096); n != 0 || err != nil {
		t.Fatalf("ReadPendingAt(4096) = %d, %v; want 0, nil", n, err)
	}
	if _, err := c.ReadAt(d, p, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt of a pending blob = %v, want ErrNotFound", err)
	}
	writeAll(t, w, data[w.Offset():], 999)
	done := w.Progress()
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	<-done
	select {
	case <-w.Progress():
	default:
		t.Fatal("Progress of a finished writer must be closed")
	}
	// Once whole, ReadPendingAt reads like ReadAt.
	n, err = c.ReadPendingAt(d, p, int64(len(data))-50)
	if n != 50 || err != io.EOF || !bytes.Equal(p[:n], data[len(data)-50:]) {
		t.Fatalf("ReadPendingAt at the end of a whole blob = %d, %v; want 50, EOF", n, err)
	}
	_, other := blob(14, 1)
	if _, err := c.ReadPendingAt(other, p, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadPendingAt(absent) = %v", err)
	}
}

func TestCache_Versions(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	a, da := blob(20, 5000)
	b, db := blob(21, 100)
	_ = b
	ingest(t, c, da, a, 4096)

	// db is absent, then pending: both incomplete.
	v := Version{Product: "prod", Version: "1.0", Serial: 1, Blobs: []string{da, db}, Size: 5100}
	err := c.PutVersion(v)
	if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), db) {
		t.Fatalf("PutVersion with a missing blob = %v, want ErrIncomplete naming %s", err, db)
	}
	w, _ := c.NewWriter(db, 100)
	writeAll(t, w, b[:50], 50)
	if err := c.PutVersion(v); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("PutVersion with a pending blob = %v, want ErrIncomplete", err)
	}
	writeAll(t, w, b[50:], 50)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LatestVersion("prod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LatestVersion with none = %v", err)
	}
	if err := c.PutVersion(v); err != nil {
		t.Fatal(err)
	}
	v3 := Version{Product: "prod", Version: "3.0", Serial: 3, Blobs: []string{da}, Size: 5000}
	v2 := Version{Product: "prod", Version: "2.0", Serial: 2, Blobs: []string{db}, Size: 100}
	for _, v := range []Version{v3, v2, {Product: "other", Version: "9", Serial: 9}} {
		if err := c.PutVersion(v); err != nil {
			t.Fatal(err)
		}
	}
	vs, err := c.Versions("prod")
	if err != nil || len(vs) != 3 || vs[0].Serial != 1 || vs[1].Serial != 2 || vs[2].Serial != 3 {
		t.Fatalf("Versions = %+v, %v", vs, err)
	}
	if vs[0].Added.IsZero() || len(vs[0].Blobs) != 2 || vs[0].Size != 5100 {
		t.Fatalf("Versions[0] = %+v", vs[0])
	}
	latest, err := c.LatestVersion("prod")
	if err != nil || latest.Version != "3.0" {
		t.Fatalf("LatestVersion = %+v, %v", latest, err)
	}
	if ps, err := c.Products(); err != nil || len(ps) != 2 || ps[0] != "other" || ps[1] != "prod" {
		t.Fatalf("Products = %v, %v", ps, err)
	}
	// Re-recording a version under a new serial replaces it.
	v2.Serial = 4
	if err := c.PutVersion(v2); err != nil {
		t.Fatal(err)
	}
	if latest, _ := c.LatestVersion("prod"); latest.Version != "2.0" {
		t.Fatalf("LatestVersion after re-record = %+v", latest)
	}
	if vs, _ := c.Versions("prod"); len(vs) != 3 {
		t.Fatalf("Versions after re-record = %+v", vs)
	}
	// Unreferenced: none (both blobs referenced).
	if u, err := c.Unreferenced(); err != nil || len(u) != 0 {
		t.Fatalf("Unreferenced = %+v, %v", u, err)
	}
	// Deleting a blob drops the versions that reference it.
	if err := c.DeleteBlob(db); err != nil {
		t.Fatal(err)
	}
	vs, _ = c.Versions("prod")
	if len(vs) != 1 || vs[0].Version != "3.0" {
		t.Fatalf("Versions after DeleteBlob = %+v", vs)
	}
	if err := c.DeleteVersion("prod", "3.0"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVersion("prod", "3.0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteVersion = %v", err)
	}
	if u, err := c.Unreferenced(); err != nil || len(u) != 1 || u[0].Digest != da {
		t.Fatalf("Unreferenced = %+v, %v", u, err)
	}
	if err := c.PutVersion(Version{Product: "bad/name", Version: "1"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutVersion(bad name) = %v", err)
	}
	if err := c.PutVersion(Version{Product: "p", Version: "1", Blobs: []string{"xyz"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutVersion(bad digest) = %v", err)
	}
}

// "." and ".." are path elements, never product or version names: the
// cache refuses them as manifest.ValidName does (it used to accept them).
func TestCache_PutVersion_DotNames(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	for _, v := range []Version{
		{Product: ".", Version: "1"},
		{Product: "..", Version: "1"},
		{Product: "p", Version: "."},
		{Product: "p", Version: ".."},
	} {
		if err := c.PutVersion(v); !errors.Is(err, ErrInvalid) {
			t.Errorf("PutVersion(%q, %q) = %v, want ErrInvalid", v.Product, v.Version, err)
		}
	}
	if _, err := c.Versions(".."); !errors.Is(err, ErrInvalid) {
		t.Errorf("Versions(\"..\") = %v, want ErrInvalid", err)
	}
	if err := c.PutVersion(Version{Product: "p", Version: "..."}); err != nil {
		t.Errorf(`PutVersion("p", "...") = %v, want ok`, err)
	}
}

func TestCache_Documents(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	if _, _, err := c.Document("prod/latest.json"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Document(absent) = %v", err)
	}
	tests := []struct{ path, data, sig string }{
		{"prod/latest.json", `{"serial":1}`, "sig1"},
		{"prod/1.0/manifest.json", `{"files":[]}`, ""},
		{"prod/empty.json", "", "s"},
	}
	for _, tt := range tests {
		if err := c.PutDocument(tt.path, []byte(tt.data), []byte(tt.sig)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tests {
		data, sig, err := c.Document(tt.path)
		if err != nil || string(data) != tt.data || string(sig) != tt.sig {
			t.Fatalf("Document(%s) = %q, %q, %v", tt.path, data, sig, err)
		}
	}
	if err := c.PutDocument("prod/latest.json", []byte("v2"), []byte("sig2")); err != nil {
		t.Fatal(err)
	}
	if data, sig, _ := c.Document("prod/latest.json"); string(data) != "v2" || string(sig) != "sig2" {
		t.Fatalf("replaced document = %q %q", data, sig)
	}
	if err := c.DeleteDocument("prod/latest.json"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteDocument("prod/latest.json"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteDocument = %v", err)
	}
	if err := c.PutDocument("", nil, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutDocument(empty path) = %v", err)
	}
}

func TestCache_Records(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	if err := c.Records("endpoints", func(string, []byte) error { t.Fatal("called"); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := c.PutRecord("endpoints", fmt.Sprintf("ep%d/prod", i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutRecord("endpoints", "ep1/prod", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteRecord("endpoints", "ep4/prod"); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	err := c.Records("endpoints", func(k string, v []byte) error {
		got[k] = string(v)
		// fn runs outside the transaction: it may write.
		return c.PutRecord("seen", k, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got["ep1/prod"] != "new" || got["ep0/prod"] != "\x00" {
		t.Fatalf("Records = %q", got)
	}
	stop := errors.New("stop")
	if err := c.Records("endpoints", func(string, []byte) error { return stop }); err != stop {
		t.Fatalf("Records with fn error = %v", err)
	}
}

func TestCache_Stats(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	a, da := blob(30, 10000)
	ingest(t, c, da, a, 4096)
	b, db := blob(31, 3*4096)
	w, _ := c.NewWriter(db, int64(len(b)))
	writeAll(t, w, b[:2*4096+1], 4096)
	_ = w.Abort()
	if err := c.PutVersion(Version{Product: "p", Version: "1", Serial: 1, Blobs: []string{da}, Size: 10000}); err != nil {
		t.Fatal(err)
	}
	s, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Blobs: 1, Bytes: 10000, Pending: 1, PendingBytes: 2 * 4096, Versions: 1, FileSize: s.FileSize}
	if s != want || s.FileSize <= 0 {
		t.Fatalf("Stats = %+v, want %+v", s, want)
	}
}

func TestCache_Verify(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(40, 5*4096)
	ingest(t, c, d, data, 4096)
	if err := c.Verify(d); err != nil {
		t.Fatalf("Verify of a good blob = %v", err)
	}
	if err := c.PutVersion(Version{Product: "p", Version: "1", Blobs: []string{d}}); err != nil {
		t.Fatal(err)
	}
	k, _ := parseDigest(d)
	bad := bytes.Clone(data[:4096])
	bad[0] ^= 1
	if err := c.update(false, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).Put(chunkKey(k, 0), bad)
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(d); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Verify of a rotten blob = %v, want ErrDigestMismatch", err)
	}
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after failed Verify = %v", err)
	}
	if vs, _ := c.Versions("p"); len(vs) != 0 {
		t.Fatalf("version kept after its blob failed Verify: %+v", vs)
	}
}

func TestCache_DeleteBlob(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(50, 7*4096+1)
	ingest(t, c, d, data, 4096)
	if err := c.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after delete = %v", err)
	}
	if n := chunkCount(t, c, d); n != 0 {
		t.Fatalf("%d chunks left", n)
	}
	if err := c.DeleteBlob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteBlob = %v", err)
	}
	// A pending blob can be deleted too.
	w, _ := c.NewWriter(d, int64(len(data)))
	writeAll(t, w, data[:3*4096], 4096)
	_ = w.Abort()
	if err := c.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Blob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Blob after deleting a pending blob = %v", err)
	}
}

func TestCache_Close(t *testing.T) {
	t.Parallel()
	c := newTestCache(t)
	data, d := blob(60, 100)
	ingest(t, c, d, data, 100)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	checks := map[string]error{}
	_, checks["Stat"] = c.Stat(d)
	_, checks["ReadAt"] = c.ReadAt(d, make([]byte, 1), 0)
	_, checks["NewWriter"] = c.NewWriter(d, 100)
	checks["PutDocument"] = c.PutDocument("a", nil, nil)
	_, checks["Stats"] = c.Stats()
	checks["PutRecord"] = c.PutRecord("a", "b", nil)
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}

func TestOpen_Errors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a bbolt file "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(testConfig(garbage)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open(garbage) = %v, want ErrCorrupt", err)
	}

	cfg := testConfig(filepath.Join(dir, "locked.db"))
	c := mustOpen(t, cfg)
	_ = c
	cfg.OpenTimeout = 50 * time.Millisecond
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("Open of a locked file = %v, want a lock error", err)
	}

	if _, err := Open(testConfig(filepath.Join(dir, "missing", "dir", "x.db"))); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
	if _, err := Open(Config{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Open(Config{}) = %v", err)
	}
}
