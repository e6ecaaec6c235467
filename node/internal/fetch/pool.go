package fetch

import (
	"context"
	"sync"
	"time"

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
//
// A client that stops reading (a frozen process, a laptop put to sleep
// mid-download) leaves the buffers gRPC has queued for it unwritten until
// keepalive ends its connection, minutes later; enough of them would hold
// the whole budget and stall every other stream. So a stream whose buffers
// have not been written for the stall timeout gives their budget back
// (reclaimStalled, run by a stream that waits for budget); the buffers stay
// referenced by gRPC, and the memory of such stalled buffers is bounded by
// the budget itself: at most twice the budget is ever queued.
type chunkPool struct {
	size   int
	budget *semaphore.Weighted
	pool   sync.Pool
	stall  time.Duration // no buffer of a stream written for this long: it stalled

	mu        sync.Mutex // guards streams and overdraft; taken before a stream's mu
	streams   map[*streamBuffers]struct{}
	overdraft int64 // bytes of stalled buffers whose budget was given back
	limit     int64 // the most overdraft allowed: the budget
}

func newChunkPool(size int, budget int64, stall time.Duration) *chunkPool {
	budget = max(budget, int64(size))
	p := &chunkPool{size: size, budget: semaphore.NewWeighted(budget), stall: stall, limit: budget,
		streams: map[*streamBuffers]struct{}{}}
	p.pool.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return p
}

// stream returns the buffer source of one ReadBlob stream. Call done when
// the handler returns.
func (p *chunkPool) stream() *streamBuffers {
	s := &streamBuffers{p: p, held: map[*[]byte]bool{}, stalled: map[*[]byte]bool{}}
	p.mu.Lock()
	p.streams[s] = struct{}{}
	p.mu.Unlock()
	return s
}

// reclaimStalled gives back the budget of the buffers of every stream none
// of whose buffers gRPC has written since stall before now, within the
// overdraft limit. It returns the number of streams reclaimed.
func (p *chunkPool) reclaimStalled(now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for s := range p.streams {
		s.mu.Lock()
		bytes := int64(len(s.held) * p.size)
		if bytes == 0 || now.Sub(s.last) < p.stall || p.overdraft+bytes > p.limit {
			s.mu.Unlock()
			continue
		}
		for b := range s.held {
			s.stalled[b] = true
		}
		clear(s.held)
		s.mu.Unlock()
		p.overdraft += bytes
		p.budget.Release(bytes)
		n++
	}
	return n
}

// settle counts n stalled buffers as gone (written at last, or their
// stream ended).
func (p *chunkPool) settle(n int) {
	if n == 0 {
		return
	}
	p.mu.Lock()
	p.overdraft -= int64(n * p.size)
	p.mu.Unlock()
}

// streamBuffers is a mem.BufferPool for one stream's chunks; it is safe for
// concurrent use (gRPC frees buffers from its writer goroutine).
type streamBuffers struct {
	p       *chunkPool
	mu      sync.Mutex       // protects the fields below
	held    map[*[]byte]bool // buffers whose budget this stream still holds
	stalled map[*[]byte]bool // buffers whose budget was given back while unwritten
	last    time.Time        // when a buffer was last taken or written
}

var _ mem.BufferPool = (*streamBuffers)(nil)

// get waits for budget, then returns a buffer of length n <= the pool's
// size. Hand it to gRPC with mem.NewBuffer(b, s), or give it back with
// s.Put(b).
//
// While it waits, every quarter of the stall timeout it gives back the
// budget of stalled streams (chunkPool.reclaimStalled).
func (s *streamBuffers) get(ctx context.Context, n int) (*[]byte, error) {
	size := int64(s.p.size)
	for !s.p.budget.TryAcquire(size) {
		wctx, cancel := context.WithTimeout(ctx, max(s.p.stall/4, time.Millisecond))
		err := s.p.budget.Acquire(wctx, size)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.p.reclaimStalled(time.Now())
	}
	b := s.p.pool.Get().(*[]byte)
	*b = (*b)[:n]
	s.mu.Lock()
	s.held[b] = true
	s.last = time.Now()
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
	held, stalled := s.held[b], s.stalled[b]
	delete(s.held, b)
	delete(s.stalled, b)
	if held {
		s.last = time.Now()
	}
	s.mu.Unlock()
	switch {
	case held:
		s.p.budget.Release(int64(s.p.size))
	case stalled:
		s.p.settle(1)
	}
	*b = (*b)[:s.p.size]
	s.p.pool.Put(b)
}

// done returns the budget of every buffer gRPC has not freed yet: the last
// chunks of a finished stream (about to be written) or those of a cancelled
// one (never to be freed).
//
// The buffers of a stalled stream are not counted any more either: gRPC
// drops them with the stream.
func (s *streamBuffers) done() {
	s.p.mu.Lock()
	delete(s.p.streams, s)
	s.p.mu.Unlock()
	s.mu.Lock()
	n, stalled := len(s.held), len(s.stalled)
	clear(s.held)
	clear(s.stalled)
	s.mu.Unlock()
	if n > 0 {
		s.p.budget.Release(int64(n * s.p.size))
	}
	s.p.settle(stalled)
}
