package dpcachev1

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"testing"

	"google.golang.org/grpc/mem"
)

func TestClass(t *testing.T) {
	t.Parallel()
	tests := []struct{ n, want int }{
		{0, 0}, {1, 0}, {4095, 0}, {4096, 0},
		{4097, 1}, {8192, 1}, {8193, 2},
		{1<<20 - 1, 8}, {1 << 20, 8}, {1<<20 + 1, 9},
		{16<<20 - 1, 12}, {16 << 20, 12},
		{16<<20 + 1, -1}, {1 << 30, -1},
	}
	for _, tt := range tests {
		if got := class(tt.n); got != tt.want {
			t.Errorf("class(%d) = %d, want %d", tt.n, got, tt.want)
		}
	}
}

// TestBufferPool_Get: a buffer of exactly the asked length, from a
// power-of-two class up to 16 MiB, allocated exactly above.
func TestBufferPool_Get(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 7, 4095, 4096, 4097, 8191, 8192, 8193, 65537, 1<<20 - 1, 1 << 20, 1<<20 + 1, 3<<20 + 5, 16<<20 - 1, 16 << 20, 16<<20 + 1, 20<<20 + 3} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			b := BufferPool.Get(n)
			if b == nil {
				t.Fatal("Get returned nil")
			}
			if len(*b) != n {
				t.Fatalf("Get(%d): length %d", n, len(*b))
			}
			c := cap(*b)
			switch {
			case n > 16<<20:
				if c != n {
					t.Errorf("Get(%d): capacity %d, want exactly %d above the largest class", n, c, n)
				}
			default:
				want := 4096
				if n > 4096 {
					want = 1 << bits.Len(uint(n-1))
				}
				if c != want {
					t.Errorf("Get(%d): capacity %d, want the smallest power of two >= max(n, 4096)", n, c)
				}
			}
			// The whole capacity is usable.
			full := (*b)[:c]
			full[0], full[c-1] = 1, 2
			BufferPool.Put(b)
		})
	}
}

// TestBufferPool_Reuse: a buffer put back is handed out again for any size
// of its class (sync.Pool gives no guarantee for one attempt, and the race
// detector drops some Puts on purpose: try a few times).
func TestBufferPool_Reuse(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ put, get int }{{5000, 8192}, {8192, 4097}, {4096, 1}, {16 << 20, 9<<20 + 1}, {1 << 20, 1<<20 - 3}} {
		t.Run(fmt.Sprintf("%d then %d", tt.put, tt.get), func(t *testing.T) {
			t.Parallel()
			for range 100 {
				b := BufferPool.Get(tt.put)
				*b = (*b)[:1] // users may shrink it before Put
				BufferPool.Put(b)
				c := BufferPool.Get(tt.get)
				if len(*c) != tt.get {
					t.Fatalf("Get(%d) after a Put: length %d", tt.get, len(*c))
				}
				if c == b {
					BufferPool.Put(c)
					return
				}
				BufferPool.Put(c)
			}
			t.Errorf("a %d-byte buffer put back was never handed out for Get(%d) in 100 tries", tt.put, tt.get)
		})
	}
}

// TestBufferPool_PutForeign: buffers that do not fit a class (not a power of
// two, too small, too large) are dropped, never handed out for a size they
// cannot hold.
func TestBufferPool_PutForeign(t *testing.T) {
	t.Parallel()
	foreign := []*[]byte{}
	for _, c := range []int{0, 100, 4095, 5000, 12288, 32 << 20} {
		b := make([]byte, c)
		foreign = append(foreign, &b)
	}
	for range 50 {
		for _, b := range foreign {
			BufferPool.Put(b)
		}
		for _, n := range []int{1, 4096, 5001, 8192, 12289, 16 << 20} {
			b := BufferPool.Get(n)
			if len(*b) != n || cap(*b) < n {
				t.Fatalf("Get(%d) after foreign Puts: length %d, capacity %d", n, len(*b), cap(*b))
			}
			for _, f := range foreign {
				if b == f {
					t.Fatalf("Get(%d) handed out a foreign buffer of capacity %d", n, cap(*f))
				}
			}
			BufferPool.Put(b)
		}
	}
}

// TestBufferPool_Concurrent: no buffer is ever handed to two users at once.
func TestBufferPool_Concurrent(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				n := 1 + (g*7919+i*104729)%(300<<10)
				b := BufferPool.Get(n)
				mark := byte(g + 1)
				(*b)[0], (*b)[n-1] = mark, mark
				for range bits.OnesCount(uint(i)) {
					runtime.Gosched()
					if (*b)[0] != mark || (*b)[n-1] != mark {
						t.Errorf("goroutine %d: a buffer in use was handed to someone else", g)
						return
					}
				}
				BufferPool.Put(b)
			}
		})
	}
	wg.Wait()
}

// TestBufferPool_WithMemBuffer: the pool works behind mem.NewBuffer, as the
// transport uses it: freeing the last reference puts the buffer back.
func TestBufferPool_WithMemBuffer(t *testing.T) {
	t.Parallel()
	for range 100 {
		b := BufferPool.Get(10_000)
		buf := mem.NewBuffer(b, BufferPool)
		part := buf.Slice(10, 20)
		buf.Free()
		if part.Len() != 10 {
			t.Fatalf("slice length %d", part.Len())
		}
		part.Free()
		c := BufferPool.Get(10_000)
		reused := c == b
		BufferPool.Put(c)
		if reused {
			return
		}
	}
	t.Error("a buffer freed through mem.Buffer never came back from the pool")
}
