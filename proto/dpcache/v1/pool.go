package dpcachev1

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// BufferPool is a mem.BufferPool of power-of-two size classes (4 KiB to
// 16 MiB) that, unlike gRPC's default pool, does not clear buffers on Get:
// clearing every received frame's buffer and every blob chunk cost about a
// tenth of a DP's CPU when serving. Every user overwrites the bytes it gets
// (the transport reads a frame into it, the server reads a chunk from the
// cache into it) before anything reads them.
//
// Use it with experimental.BufferPool on servers and
// experimental.WithBufferPool on clients. Safe for concurrent use.
var BufferPool mem.BufferPool = newDirtyPool()

const (
	minClass = 12 // 4 KiB
	maxClass = 24 // 16 MiB
)

type dirtyPool struct {
	classes [maxClass - minClass + 1]sync.Pool
}

func newDirtyPool() *dirtyPool {
	p := &dirtyPool{}
	for i := range p.classes {
		size := 1 << (minClass + i)
		p.classes[i].New = func() any {
			b := make([]byte, size)
			return &b
		}
	}
	return p
}

// class returns the index of the smallest class holding n bytes, or -1.
func class(n int) int {
	if n <= 1<<minClass {
		return 0
	}
	c := bits.Len(uint(n-1)) - minClass
	if c >= len(dirtyPool{}.classes) {
		return -1
	}
	return c
}

// Get returns a buffer of length n.
func (p *dirtyPool) Get(n int) *[]byte {
	c := class(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	b := p.classes[c].Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

// Put returns a buffer obtained from Get.
func (p *dirtyPool) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minClass || c&(c-1) != 0 || c > 1<<maxClass {
		return
	}
	*b = (*b)[:c]
	p.classes[bits.Len(uint(c))-1-minClass].Put(b)
}
