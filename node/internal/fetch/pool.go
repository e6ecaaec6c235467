package fetch

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/mem"
)

// chunkPool holds the buffers blob chunks are sent from, and bounds the
// memory they take across all streams: a buffer is taken from a byte budget
// before it is filled and given back when gRPC has written and freed it.
// However many clients read at once, queued chunk buffers stay within the
// budget; streams wait their turn (FIFO) instead.
//
// gRPC does not free a message whose stream is cancelled halfway through
// writing it (the garbage collector reclaims it), so budget is tracked per
// stream (see streamBuffers) and whatever a stream still holds when its
// handler returns goes back to the budget then.
//
// Buffers are not cleared between uses: each is overwritten by a cache read
// before it is sent.
type chunkPool struct {
	size   int
	budget *semaphore.Weighted
	pool   sync.Pool
}

func newChunkPool(size int, budget int64) *chunkPool {
	p := &chunkPool{size: size, budget: semaphore.NewWeighted(max(budget, int64(size)))}
	p.pool.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return p
}

// stream returns the buffer source of one ReadBlob stream. Call done when
// the handler returns.
func (p *chunkPool) stream() *streamBuffers {
	return &streamBuffers{p: p, held: map[*[]byte]bool{}}
}

// streamBuffers is a mem.BufferPool for one stream's chunks; it is safe for
// concurrent use (gRPC frees buffers from its writer goroutine).
type streamBuffers struct {
	p    *chunkPool
	mu   sync.Mutex       // protects held
	held map[*[]byte]bool // buffers whose budget this stream still holds
}

var _ mem.BufferPool = (*streamBuffers)(nil)

// get waits for budget, then returns a buffer of length n <= the pool's
// size. Hand it to gRPC with mem.NewBuffer(b, s), or give it back with
// s.Put(b).
func (s *streamBuffers) get(ctx context.Context, n int) (*[]byte, error) {
	if err := s.p.budget.Acquire(ctx, int64(s.p.size)); err != nil {
		return nil, err
	}
	b := s.p.pool.Get().(*[]byte)
	*b = (*b)[:n]
	s.mu.Lock()
	s.held[b] = true
	s.mu.Unlock()
	return b, nil
}

// Get implements mem.BufferPool for completeness; chunks are taken with get,
// which honours the budget.
func (s *streamBuffers) Get(n int) *[]byte {
	b := make([]byte, n)
	return &b
}

// Put implements mem.BufferPool: gRPC calls it once a buffer is written.
func (s *streamBuffers) Put(b *[]byte) {
	if cap(*b) != s.p.size {
		return
	}
	s.mu.Lock()
	held := s.held[b]
	delete(s.held, b)
	s.mu.Unlock()
	if held {
		s.p.budget.Release(int64(s.p.size))
	}
	*b = (*b)[:s.p.size]
	s.p.pool.Put(b)
}

// done returns the budget of every buffer gRPC has not freed yet: the last
// chunks of a finished stream (about to be written) or those of a cancelled
// one (never to be freed).
func (s *streamBuffers) done() {
	s.mu.Lock()
	n := len(s.held)
	clear(s.held)
	s.mu.Unlock()
	if n > 0 {
		s.p.budget.Release(int64(n * s.p.size))
	}
}
