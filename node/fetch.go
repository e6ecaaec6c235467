package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/dpcache/dpcache/cache"
)

// fetch is one blob being ingested. Every request for the blob while it is
// in flight reads the chunks already stored, then waits for more: the
// site's link carries the blob once, and bytes reach callers as they arrive.
type fetch struct {
	digest string
	size   int64

	mu        sync.Mutex // protects the fields below
	gen       int        // bumped when stored bytes are discarded (digest mismatch)
	flushed   int64      // bytes readable with cache.ReadPendingAt
	written   int64      // bytes received; [flushed, written) are in tail
	tail      []byte     // bytes [tailStart, written), kept until stored
	tailStart int64
	done      bool          // the fetch ended; err says how
	err       error         // nil: the blob is whole in the cache
	changed   chan struct{} // closed and replaced on every change
	forwarded bool          // serving a forwarded request: never ask peers or owners
	promoted  chan struct{} // closed when forwarded becomes true after the start

	// DPs of the site streaming this fetch (it is their owner): the fetch
	// keeps at most maxPeerLead ahead of them, so that if this DP dies
	// mid-fetch they hold nearly every byte it took from upstream.
	peers     map[int]*peerPos
	peerSeq   int
	peerMoved chan struct{} // closed and replaced when a peer advances or leaves
}

// peerPos is how far a peer DP has streamed a fetch.
type peerPos struct {
	pos   int64
	moved time.Time
}

// Backpressure from peer DPs: how far the owner may read ahead of the
// slowest of them, and how long a peer may make no progress before it is
// no longer waited for (a stalled peer must not stall the site's fetch).
const (
	maxPeerLead  = 4 << 20
	peerStallCap = 2 * time.Second
)

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
// maxPeerLead of off.
func (f *fetch) awaitPeers(ctx context.Context, off int64) {
	for {
		f.mu.Lock()
		var behind bool
		now := time.Now()
		for _, p := range f.peers {
			if off-p.pos > maxPeerLead && now.Sub(p.moved) < peerStallCap {
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

func (f *fetch) snapshot() fetchState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fetchState{f.gen, f.flushed, f.written, f.done, f.err, f.changed}
}

// maxTail bounds the bytes a fetch keeps in memory for its readers while
// they are not stored yet; past it, readers wait for the store.
const maxTail = 32 << 20

// received records bytes written to the cache but maybe not stored yet, so
// that readers get them at once, and drops what is now stored.
func (f *fetch) received(b []byte, written, flushed int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if written-int64(len(b)) != f.tailStart+int64(len(f.tail)) || len(f.tail)+len(b) > maxTail {
		// Not contiguous (a restart) or too much: start a new tail.
		f.tail, f.tailStart = f.tail[:0], written-int64(len(b))
	}
	f.tail = append(f.tail, b...)
	f.written = written
	if flushed > f.tailStart {
		drop := min(flushed-f.tailStart, int64(len(f.tail)))
		f.tail = f.tail[:copy(f.tail, f.tail[drop:])]
		f.tailStart += drop
	}
	if flushed > f.flushed {
		f.flushed = flushed
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// readTail copies bytes from pos that are held in memory into p.
func (f *fetch) readTail(p []byte, pos int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pos < f.tailStart || pos >= f.tailStart+int64(len(f.tail)) {
		return 0
	}
	return copy(p, f.tail[pos-f.tailStart:])
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

// restart records that the stored bytes were discarded: readers that sent
// any of them must fail rather than continue with good bytes after bad.
func (f *fetch) restart() {
	f.mu.Lock()
	f.gen++
	f.flushed, f.written = 0, 0
	f.tail, f.tailStart = nil, 0
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

// acquire returns the in-flight fetch of digest, starting one if needed, or
// nil when the blob is already whole in the cache. Blobs that no verified
// manifest names are NotFound: the DP is not an open proxy. A forwarded
// request promotes the fetch it joins.
func (n *Node) acquire(digest string, forwarded bool) (f *fetch, size int64, err error) {
	// The common case, a whole blob, needs no lock: a whole blob stays
	// whole (eviction spares blobs being read).
	if size, err := n.cache.Stat(digest); err == nil {
		return nil, size, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if f, ok := n.fetches[digest]; ok {
		if forwarded {
			f.promote()
		}
		return f, f.size, nil
	}
	// Under n.mu: a fetch leaves the map only after its blob is whole, so
	// checking the cache here cannot miss a blob that just completed.
	if size, err := n.cache.Stat(digest); err == nil {
		return nil, size, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return nil, 0, fmt.Errorf("blob %s: %w", digest, err)
	}
	size, ok := n.known[digest]
	if !ok {
		return nil, 0, fmt.Errorf("blob %s: %w: no manifest this DP knows names it (fetch the manifest first)", digest, ErrNotFound)
	}
	if n.closed || n.bg.Err() != nil {
		return nil, 0, fmt.Errorf("blob %s: %w: the DP is shutting down", digest, ErrUnavailable)
	}
	f = &fetch{digest: digest, size: size, changed: make(chan struct{}), forwarded: forwarded, promoted: make(chan struct{})}
	if forwarded {
		close(f.promoted)
	}
	n.fetches[digest] = f
	n.bgWG.Add(1)
	go func() {
		defer n.bgWG.Done()
		n.publishFetching()
		err := n.runFetch(n.bg, f)
		n.mu.Lock()
		delete(n.fetches, digest)
		n.mu.Unlock()
		f.finish(err)
		n.publishFetching()
	}()
	return f, size, nil
}

// ensureBlob returns once digest is whole in the cache.
func (n *Node) ensureBlob(ctx context.Context, digest string) error {
	release, err := n.pins.StartReading(ctx, digest) // retention leaves it alone meanwhile
	if err != nil {
		return err
	}
	defer release()
	f, _, err := n.acquire(digest, false)
	if err != nil || f == nil {
		return err
	}
	for {
		st := f.snapshot()
		if st.done {
			return st.err
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// storeInterval is the longest a fetch keeps received bytes unstored.
const storeInterval = time.Second

// errPromoted ends an attempt that waited on a peer or owner when the fetch
// is promoted.
var errPromoted = errors.New("fetch promoted to serve a forwarded request")

// runFetch ingests f's blob from its candidates in order (see candidates).
// A broken transfer resumes at its offset from the next candidate; a blob
// whose digest does not match is discarded whole and fetched again from the
// next candidate, so resumed bytes from a bad source never survive.
func (n *Node) runFetch(ctx context.Context, f *fetch) error {
	log := n.log.With("blob", f.digest, "size", f.size)
	w, err := n.cache.NewWriter(f.digest, f.size)
	if errors.Is(err, cache.ErrExists) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", f.digest, err)
	}
	if off := w.Offset(); off > 0 {
		log.Info("resuming an interrupted ingest", "offset", off)
		f.progress(w.Flushed())
	}
	var errs []string
	mismatch := false
	cands := n.candidates(f)
	for i := 0; i < len(cands); i++ {
		if ctx.Err() != nil {
			break
		}
		c := cands[i]
		err := n.copyFrom(ctx, c, f, w)
		if errors.Is(err, errPromoted) {
			// Recompute without peers and owners, keep the bytes.
			log.Info("taking over the fetch for a forwarded request", "offset", w.Offset())
			cands, i = n.candidates(f), -1
			continue
		}
		if err == nil {
			if err = w.Commit(); err == nil {
				f.progress(f.size)
				log.Debug("blob ingested", "from", c.kind.String(), "source", c.src.String())
				return nil
			}
			if !errors.Is(err, cache.ErrDigestMismatch) {
				w.Abort()
				return fmt.Errorf("blob %s: %w", f.digest, err)
			}
			mismatch = true
			log.Warn("blob failed verification; discarded, trying the next source", "from", c.kind.String(), "source", c.src.String(), "err", err)
			errs = append(errs, fmt.Sprintf("%s: %v", c.src, err))
			// Readers may have streamed the bad bytes: they fail on
			// DataLoss and retry. Start over from byte 0.
			if w, err = n.cache.NewWriter(f.digest, f.size); err != nil {
				return fmt.Errorf("blob %s: %w", f.digest, err)
			}
			f.restart()
			continue
		}
		if c.kind == fromPartial {
			log.Debug("copied what a peer had", "source", c.src.String(), "offset", w.Offset())
			continue
		}
		log.Warn("transfer failed; resuming from the next source", "from", c.kind.String(), "source", c.src.String(), "offset", w.Offset(), "err", err)
		errs = append(errs, err.Error())
	}
	w.Abort() // keep the stored chunks: the next request resumes there
	if ctx.Err() != nil {
		return fmt.Errorf("blob %s: %w: %v", f.digest, ErrUnavailable, ctx.Err())
	}
	if mismatch {
		return fmt.Errorf("blob %s: %w: %s", f.digest, ErrDataLoss, strings.Join(errs, "; "))
	}
	return upstreamError("blob "+f.digest, errs)
}

// copyFrom copies the rest of f's blob from c into w, publishing progress.
// Waiting on a peer or owner ends with errPromoted when f is promoted.
func (n *Node) copyFrom(ctx context.Context, c candidate, f *fetch, w *cache.Writer) error {
	if c.kind == fromPeer || c.kind == fromOwner {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-f.promoted:
				cancel(errPromoted)
			case <-ctx.Done():
			}
		}()
		err := n.copyStream(ctx, c, f, w)
		if errors.Is(context.Cause(ctx), errPromoted) {
			return errPromoted
		}
		return err
	}
	return n.copyStream(ctx, c, f, w)
}

func (n *Node) copyStream(ctx context.Context, c candidate, f *fetch, w *cache.Writer) error {
	r, err := c.src.Blob(ctx, f.digest, w.Offset())
	if err != nil {
		return err
	}
	defer r.Close()
	counter := &n.traffic.upstream
	if c.kind != fromUpstream {
		counter = &n.traffic.peer
	}
	bySource := n.metrics.UpstreamBytes(c.src) // nil for peers or without metrics
	buf := make([]byte, 256<<10)
	var limit upstreamLimiter // Config.UpstreamRate: reads wait for their bytes' tokens
	if c.kind == fromUpstream && n.limiter != nil {
		limit = n.limiter
		buf = buf[:min(len(buf), limit.Burst())]
	}
	lastStore := time.Now()
	for w.Offset() < f.size {
		// Readers get bytes from memory at once; what is stored survives a
		// crash and is where a restarted DP resumes. The cache stores in
		// large batches for speed; on a slow link, store at least every
		// storeInterval.
		if time.Since(lastStore) > storeInterval {
			if err := w.Flush(); err != nil {
				return fmt.Errorf("%s: blob %s: storing: %w", c.src, f.digest, err)
			}
			lastStore = time.Now()
		}
		f.awaitPeers(ctx, w.Offset())
		nr, rerr := r.Read(buf)
		if nr > 0 && limit != nil {
			if err := limit.WaitN(ctx, nr); err != nil {
				return fmt.Errorf("%s: blob %s: waiting for the upstream rate limit: %w", c.src, f.digest, err)
			}
		}
		if nr > 0 {
			counter.Add(int64(nr))
			if bySource != nil {
				bySource.Add(int64(nr))
			}
			if _, err := w.Write(buf[:nr]); err != nil {
				return fmt.Errorf("%s: blob %s: storing: %w", c.src, f.digest, err)
			}
			f.received(buf[:nr], w.Offset(), w.Flushed())
		}
		if rerr == io.EOF {
			if w.Offset() < f.size {
				return fmt.Errorf("%s: blob %s: stream ended at byte %d of %d: %w", c.src, f.digest, w.Offset(), f.size, io.ErrUnexpectedEOF)
			}
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return nil
}

// upstreamLimiter is the token bucket of Config.UpstreamRate (a
// *rate.Limiter); tests wrap it to see what is charged.
type upstreamLimiter interface {
	// WaitN waits until n bytes may be read.
	WaitN(ctx context.Context, n int) error
	// Burst is the most bytes one WaitN may ask for.
	Burst() int
}
