package fetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// Config tunes a Fetcher.
type Config struct {
	// ServeChunk is the size of the messages a blob is streamed in.
	ServeChunk int
	// ServeMemory bounds the chunk buffers queued for sending, across all
	// streams.
	ServeMemory int64
	// Limiter, when set, bounds the bytes read from upstream sources (not
	// from peers) by the download task's fetches: those started with a
	// context marked by source.WithBackground, until a request without
	// the mark (an endpoint's, prefetch's) joins them.
	Limiter Limiter
	// StallTimeout is how long a transfer may deliver no byte before the
	// fetch moves to the next candidate (failover.Options), and how long a
	// reader may leave its queued chunks unwritten before their budget
	// goes to other streams (pool.go). 0: the default, 30 s.
	StallTimeout time.Duration
	// Health remembers failed sources (peers and upstreams) across
	// fetches, and across the DP's document requests when shared. Nil: the
	// Fetcher keeps its own.
	Health *failover.Health
	// Logger receives the fetches' logs. Default slog.Default().
	Logger *slog.Logger
}

// Limiter is a token bucket of bytes (a *rate.Limiter).
type Limiter interface {
	// WaitN waits until n bytes may be read.
	WaitN(ctx context.Context, n int) error
	// Burst is the most bytes one WaitN may ask for.
	Burst() int
}

// Store is the part of the cache fetches write and streams read
// (*cache.Cache implements it).
type Store interface {
	Stat(digest string) (int64, error)
	Blob(digest string) (cache.BlobInfo, error)
	NewWriter(digest string, size int64) (*cache.Writer, error)
	ReadAt(digest string, p []byte, off int64) (int, error)
	ReadPendingAt(digest string, p []byte, off int64) (int, error)
}

// Sizes knows the blobs that verified manifests name: the DP fetches no
// other (it is not an open proxy).
type Sizes interface {
	BlobSize(digest string) (int64, bool)
}

// Router lists where a blob is read from, in order (peers and owners of the
// site, the site's other fetchers, then upstream). A forwarded fetch must
// not be routed to peers or owners: it must not wait on a DP that may be
// waiting on it.
type Router interface {
	Candidates(digest string, forwarded bool) []Candidate
}

// Pins keeps retention off the blobs being read.
type Pins interface {
	StartReading(ctx context.Context, digest string) (release func(), err error)
}

// Metrics counts what has no state to read at scrape time. Its methods must
// work on a nil receiver (metrics disabled).
type Metrics interface {
	CacheRequest(hit bool)
	UpstreamBytes(src source.Source) *atomic.Int64
}

// Candidate is one place a blob fetch may read from.
type Candidate struct {
	Src  source.Source
	Kind Kind
}

// Kind says what a Candidate is.
type Kind int

// Kinds of candidates, in the order they are tried.
const (
	FromPeer     Kind = iota // a DP of the site that holds the blob whole
	FromOwner                // the blob's owner in the site, which fetches it upstream once for all
	FromPartial              // a DP of the site fetching it: the bytes it has now
	FromUpstream             // the configured upstream sources, in order
)

func (k Kind) String() string {
	return [...]string{"peer", "owner", "partial", "upstream"}[k]
}

// Traffic is a snapshot of the byte counters.
type Traffic struct {
	Upstream, Peer, Served int64
}

// Fetcher runs one fetch per blob at a time and streams blobs to readers:
// whole from the cache, else from the fetch in flight as its bytes arrive.
type Fetcher struct {
	cfg     Config
	log     *slog.Logger
	health  *failover.Health // failed sources, shared with the DP's documents
	store   Store
	sizes   Sizes
	router  Router
	pins    Pins
	metrics Metrics
	pool    *chunkPool
	// changed is called (from the fetch's goroutine) when a fetch starts
	// or ends, so the cluster can learn what this DP is fetching.
	changed func()

	ctx context.Context // the fetches' lifetime
	wg  sync.WaitGroup  // fetches in flight

	traffic struct {
		upstream atomic.Int64 // bytes read from upstream sources
		peer     atomic.Int64 // bytes read from peer DPs
		served   atomic.Int64 // blob bytes sent to callers
	}

	mu      sync.Mutex        // protects the fields below
	fetches map[string]*fetch // blob fetches in flight, by digest
	closed  bool
}

// stallOrDefault is d, or failover's default stall timeout when d <= 0.
func stallOrDefault(d time.Duration) time.Duration {
	if d <= 0 {
		return failover.DefaultOptions().StallTimeout
	}
	return d
}

// New returns a Fetcher whose fetches run until ctx ends or Stop. changed,
// which must not block for long, is called when a fetch starts or ends.
func New(ctx context.Context, cfg Config, store Store, sizes Sizes, router Router, pins Pins, metrics Metrics, changed func()) *Fetcher {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if changed == nil {
		changed = func() {}
	}
	if cfg.Health == nil {
		cfg.Health = failover.NewHealth(failover.Backoff{})
	}
	return &Fetcher{
		cfg: cfg, log: cfg.Logger, health: cfg.Health, store: store, sizes: sizes, router: router, pins: pins, metrics: metrics,
		pool: newChunkPool(cfg.ServeChunk, cfg.ServeMemory, stallOrDefault(cfg.StallTimeout)), changed: changed, ctx: ctx, fetches: map[string]*fetch{},
	}
}

// Stop refuses new fetches and waits for those in flight to end (cancel
// the context given to New first, or they run to completion). Safe to call
// twice.
func (fr *Fetcher) Stop() {
	fr.mu.Lock()
	fr.closed = true
	fr.mu.Unlock()
	fr.wg.Wait()
}

// Traffic returns the byte counters since start.
func (fr *Fetcher) Traffic() Traffic {
	return Traffic{Upstream: fr.traffic.upstream.Load(), Peer: fr.traffic.peer.Load(), Served: fr.traffic.served.Load()}
}

// AddServed counts blob bytes sent to a caller by other means (the HTTP
// repository's whole-blob path).
func (fr *Fetcher) AddServed(n int64) { fr.traffic.served.Add(n) }

// InFlight returns the digests being fetched, sorted.
func (fr *Fetcher) InFlight() []string {
	fr.mu.Lock()
	ds := make([]string, 0, len(fr.fetches))
	for d := range fr.fetches {
		ds = append(ds, d)
	}
	fr.mu.Unlock()
	sort.Strings(ds)
	return ds
}

// Fetching reports whether digest is being fetched.
func (fr *Fetcher) Fetching(digest string) bool {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.fetches[digest] != nil
}

// Received returns the bytes of digest received so far (at most its size)
// while it is being fetched; false when no fetch of it is running.
func (fr *Fetcher) Received(digest string) (int64, bool) {
	fr.mu.Lock()
	f := fr.fetches[digest]
	fr.mu.Unlock()
	if f == nil {
		return 0, false
	}
	st := f.snapshot()
	if st.done {
		return 0, false
	}
	return min(max(st.written, 0), f.size), true
}

// Acquire is acquire for callers that only need to know whether the blob
// is whole now, and its size.
func (fr *Fetcher) Acquire(ctx context.Context, digest string, forwarded bool) (whole bool, size int64, err error) {
	f, size, err := fr.acquire(ctx, digest, forwarded)
	return f == nil, size, err
}

// acquire returns the in-flight fetch of digest, starting one if needed, or
// nil when the blob is already whole in the cache. Blobs that no verified
// manifest names are NotFound: the DP is not an open proxy. A forwarded
// request promotes the fetch it joins. A fetch started now lives as long
// as the Fetcher, and its requests to upstream DPs carry ctx's chain of
// DPs (source.Via): a request whose chain holds this DP never gets here
// (the gRPC edge refuses it), so no request joins a fetch that waits on
// the request itself.
func (fr *Fetcher) acquire(ctx context.Context, digest string, forwarded bool) (f *fetch, size int64, err error) {
	return fr.start(ctx, digest, forwarded, 0)
}

// start is acquire; a fetch it starts for a blob that Sizes does not know
// takes the size replica (> 0) and is a replica (see Replicate), else the
// blob is NotFound.
func (fr *Fetcher) start(ctx context.Context, digest string, forwarded bool, replica int64) (f *fetch, size int64, err error) {
	// The common case, a whole blob, needs no lock: a whole blob stays
	// whole (eviction spares blobs being read).
	if size, err := fr.store.Stat(digest); err == nil {
		return nil, size, nil
	}
	known, ok := fr.sizes.BlobSize(digest) // before fr.mu: Sizes has its own lock
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if f, ok := fr.fetches[digest]; ok {
		if forwarded {
			f.promote()
		}
		if source.Background(ctx) == nil && replica == 0 {
			f.unlimit() // an endpoint, a peer's endpoint or prefetch waits for it
		}
		return f, f.size, nil
	}
	// Under fr.mu: a fetch leaves the map only after its blob is whole, so
	// checking the cache here cannot miss a blob that just completed.
	if size, err := fr.store.Stat(digest); err == nil {
		return nil, size, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return nil, 0, fmt.Errorf("blob %s: %w", digest, err)
	}
	size = known
	if !ok && replica > 0 {
		size = replica
	} else if !ok {
		return nil, 0, fmt.Errorf("blob %s: %w: no manifest this DP knows names it (fetch the manifest first)", digest, nodeerr.ErrNotFound)
	}
	if fr.closed || fr.ctx.Err() != nil {
		return nil, 0, fmt.Errorf("blob %s: %w: the DP is shutting down", digest, nodeerr.ErrUnavailable)
	}
	f = &fetch{digest: digest, size: size, changed: make(chan struct{}), forwarded: forwarded, promoted: make(chan struct{}), replica: replica > 0, background: source.Background(ctx)}
	if forwarded {
		close(f.promoted)
	}
	fr.fetches[digest] = f
	fr.wg.Add(1)
	fctx := source.CarryVia(fr.ctx, ctx)
	go func() {
		defer fr.wg.Done()
		fr.changed()
		err := fr.runFetch(fctx, f)
		fr.mu.Lock()
		delete(fr.fetches, digest)
		fr.mu.Unlock()
		f.finish(err)
		fr.changed()
	}()
	return f, size, nil
}

// EnsureBlob returns once digest is whole in the cache.
func (fr *Fetcher) EnsureBlob(ctx context.Context, digest string) error {
	return fr.ensure(ctx, digest, false, 0)
}

// Replicate is EnsureBlob for a blob that the site's owner is fetching
// from upstream and this DP copies as the bytes arrive (in-flight
// replication: the Router lists the owner first, and the owner keeps its
// lead on this DP bounded), so that the owner's loss costs the site little:
// this DP then holds nearly every byte the owner took, and resumes upstream
// at its own offset. size is the blob's size as the owner announced it,
// used only when no verified manifest this DP knows names the blob (the
// owner is a live DP of the site; the bytes are checked against the digest
// all the same). The bytes count as peer traffic while they come from a
// DP. A request for the blob meanwhile joins the replica.
func (fr *Fetcher) Replicate(ctx context.Context, digest string, size int64) error {
	if size <= 0 {
		return fmt.Errorf("blob %s: replica of size %d: %w", digest, size, nodeerr.ErrInvalid)
	}
	return fr.ensure(ctx, digest, false, size)
}

// ensure is EnsureBlob; replica > 0 makes it Replicate. forwarded is that
// of the request it serves (a peer DP's: never wait on peers or owners).
func (fr *Fetcher) ensure(ctx context.Context, digest string, forwarded bool, replica int64) error {
	release, err := fr.pins.StartReading(ctx, digest) // retention leaves it alone meanwhile
	if err != nil {
		return err
	}
	defer release()
	f, _, err := fr.start(ctx, digest, forwarded, replica)
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

// ServeBudgetIdle reports whether the whole serving budget
// (Config.ServeMemory) is free now: no chunk buffer is queued for sending.
func (fr *Fetcher) ServeBudgetIdle() bool {
	if fr.pool.budget.TryAcquire(fr.cfg.ServeMemory) {
		fr.pool.budget.Release(fr.cfg.ServeMemory)
		return true
	}
	return false
}
