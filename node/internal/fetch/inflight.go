package fetch

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpcache/dpcache/cache"
)

// fetch is one blob being ingested. Every request for the blob while it is
// in flight reads the chunks already stored, then the bytes the cache
// writer holds in memory until it stores them (its write-behind queue), then
// waits for more: the site's link carries the blob once, and bytes reach
// callers as they arrive, however far the disk lags.
type fetch struct {
	digest string
	size   int64

	mu        sync.Mutex    // protects the fields below
	gen       int           // bumped when stored bytes are discarded (digest mismatch)
	flushed   int64         // bytes readable with cache.ReadPendingAt (or more: see snapshot)
	written   int64         // bytes received; [flushed, written) are in w's memory
	w         *cache.Writer // the writer of this generation (nil before it exists)
	done      bool          // the fetch ended; err says how
	err       error         // nil: the blob is whole in the cache
	changed   chan struct{} // closed and replaced on every change
	forwarded bool          // serving a forwarded request: never ask peers or owners
	replica   bool          // started by Replicate: a copy of the owner's upstream fetch
	promoted  chan struct{} // closed when forwarded becomes true after the start

	// The upstream rate limit (Config.Limiter) applies to a fetch the
	// download task started (background, see source.WithBackground) while
	// its flag is set and no other request has joined it (unlimited).
	background *atomic.Bool
	unlimited  atomic.Bool

	// DPs of the site streaming this fetch (it is their owner, or they
	// replicate it): the fetch keeps at most peerLead(size) ahead of them,
	// so that if this DP dies mid-fetch they hold nearly every byte it took
	// from upstream.
	peers     map[int]*peerPos
	peerSeq   int
	peerMoved chan struct{} // closed and replaced when a peer advances or leaves
}

// rateLimited reports whether the upstream rate limit applies to f now.
func (f *fetch) rateLimited() bool {
	return f.background != nil && f.background.Load() && !f.unlimited.Load()
}

// unlimit lifts the upstream rate limit from f for good: a request that is
// not the download task's waits for it.
func (f *fetch) unlimit() { f.unlimited.Store(true) }

// peerPos is how far a peer DP has streamed a fetch.
type peerPos struct {
	pos   int64
	moved time.Time
}

// Backpressure from peer DPs: how far the owner may read ahead of the
// slowest of them (see peerLead), and how long a peer may make no progress
// before it is no longer waited for (a stalled peer must not stall the
// site's fetch).
const (
	minPeerLead  = 1 << 20
	maxPeerLead  = 4 << 20
	peerStallCap = 2 * time.Second
)

// peerLead is how far a fetch of a size-byte blob may read ahead of the
// peers streaming it: 2% of the blob, within [minPeerLead, maxPeerLead].
// The lead is what the site fetches twice if this DP dies mid-fetch, so it
// is bounded relative to the blob (the goal: losing a DP costs at most
// 1.05x the version); minPeerLead keeps several chunks in flight to a
// follower so that it does not slow the fetch of a small blob.
func peerLead(size int64) int64 {
	return min(max(size/50, minPeerLead), maxPeerLead)
}

// addPeer registers a peer DP streaming from pos; removePeer undoes it.
func (f *fetch) addPeer(pos int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.peers == nil {
		f.peers, f.peerMoved = map[int]*peerPos{}, make(chan struct{})
	}
	f.peerSeq++
	f.peers[f.peerSeq] = &peerPos{pos, time.Now()}
	return f.peerSeq
}

func (f *fetch) movePeer(id int, pos int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.peers[id]; p != nil {
		p.pos, p.moved = pos, time.Now()
		close(f.peerMoved)
		f.peerMoved = make(chan struct{})
	}
}

func (f *fetch) removePeer(id int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.peers[id]; ok {
		delete(f.peers, id)
		close(f.peerMoved)
		f.peerMoved = make(chan struct{})
	}
}

// awaitPeers waits until every peer DP that is making progress is within
// peerLead(f.size) of off.
func (f *fetch) awaitPeers(ctx context.Context, off int64) {
	lead := peerLead(f.size)
	for {
		f.mu.Lock()
		var behind bool
		now := time.Now()
		for _, p := range f.peers {
			if off-p.pos > lead && now.Sub(p.moved) < peerStallCap {
				behind = true
				break
			}
		}
		moved := f.peerMoved
		f.mu.Unlock()
		if !behind {
			return
		}
		t := time.NewTimer(peerStallCap)
		select {
		case <-moved:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() != nil {
			return
		}
	}
}

// fetchState is a snapshot of a fetch.
type fetchState struct {
	gen              int
	flushed, written int64
	done             bool
	err              error
	changed          <-chan struct{} // closed at the next change
}

// snapshot returns the fetch's state. Its flushed counts what the writer
// has stored by now: the writer stores behind the fetch, and a byte it has
// stored is no longer in its memory.
func (f *fetch) snapshot() fetchState {
	f.mu.Lock()
	defer f.mu.Unlock()
	flushed := f.flushed
	if f.w != nil {
		flushed = max(flushed, min(f.w.Flushed(), f.written))
	}
	return fetchState{f.gen, flushed, f.written, f.done, f.err, f.changed}
}

// setWriter records the cache writer of the current generation, whose
// memory readers read the bytes not stored yet from.
func (f *fetch) setWriter(w *cache.Writer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w = w
}

// received records bytes written to the cache but maybe not stored yet:
// readers get them at once from the writer's memory.
func (f *fetch) received(written, flushed int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.written = written
	if flushed > f.flushed {
		f.flushed = flushed
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// readTail copies bytes from pos that are received but not stored yet (in
// the writer's memory) into p; 0 when pos is not in memory (stored
// meanwhile, or the writer has finished).
func (f *fetch) readTail(p []byte, pos int64) int {
	f.mu.Lock()
	w := f.w
	f.mu.Unlock()
	if w == nil {
		return 0
	}
	return w.ReadBufferedAt(p, pos)
}

func (f *fetch) isForwarded() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forwarded
}

// promote marks the fetch as serving a forwarded request: if it is waiting
// on a peer or owner, it stops and fetches upstream itself (two DPs that
// briefly disagree about the owner must not wait on each other).
func (f *fetch) promote() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.forwarded {
		f.forwarded = true
		close(f.promoted)
	}
}

// restart records that the stored bytes were discarded and that w writes
// the blob from byte 0: readers that sent any of the old bytes must fail
// rather than continue with good bytes after bad.
func (f *fetch) restart(w *cache.Writer) {
	f.mu.Lock()
	f.gen++
	f.flushed, f.written, f.w = 0, 0, w
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *fetch) progress(flushed int64) {
	f.mu.Lock()
	if flushed > f.flushed {
		f.flushed = flushed
		close(f.changed)
		f.changed = make(chan struct{})
	}
	f.mu.Unlock()
}

func (f *fetch) finish(err error) {
	f.mu.Lock()
	f.done, f.err = true, err
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}
