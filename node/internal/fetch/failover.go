package fetch

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// A blob fetch goes through the failover engine (failover.Chain.Fetch) over
// the blob's candidates; this file is what a DP adds: the cache writer as
// the engine's Sink (counting, rate-limiting and streaming the bytes to
// readers as they arrive), and a fetch's promotion when a forwarded
// request joins it.

// storeInterval is the longest a fetch keeps received bytes unstored.
const storeInterval = time.Second

// errPromoted ends an attempt that waited on a peer or owner when the fetch
// is promoted.
var errPromoted = errors.New("fetch promoted to serve a forwarded request")

// runFetch ingests f's blob from its candidates in order (see Router). A
// broken or stalled transfer resumes at its offset from the same or the
// next candidate; a blob whose digest does not match is discarded whole
// and fetched again from the next candidate, so resumed bytes from a bad
// source never survive, and the bad source is in backoff for the next
// fetches too.
func (fr *Fetcher) runFetch(ctx context.Context, f *fetch) error {
	log := fr.log.With("blob", f.digest, "size", f.size)
	if f.replica {
		log = log.With("replica", true)
	}
	w, err := fr.store.NewWriter(f.digest, f.size)
	if errors.Is(err, cache.ErrExists) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", f.digest, err)
	}
	f.setWriter(w)
	if off := w.Offset(); off > 0 {
		log.Info("resuming an interrupted ingest", "offset", off)
		f.progress(w.Flushed())
	}
	in := &ingest{fr: fr, f: f, w: w, lastStore: time.Now(), lastFlushed: w.Flushed()}
	in.kind.Store(-1)
	for {
		cands := fr.router.Candidates(f.digest, f.isForwarded())
		srcs := make([]source.Source, len(cands))
		in.kinds = make(map[source.Source]Kind, len(cands))
		for i, c := range cands {
			srcs[i] = c.Src
			in.kinds[c.Src] = c.Kind
		}
		kinds := in.kinds
		chain := failover.New(srcs, failover.Options{StallTimeout: fr.cfg.StallTimeout, Health: fr.health, Logger: fr.log,
			// A peer or owner in backoff is still asked before the
			// internet link: backoff reorders within a kind only.
			Tier: func(s source.Source) int { return int(kinds[s]) }})
		actx, cancel := context.WithCancelCause(ctx)
		in.ctx, in.cancel = actx, cancel
		done := make(chan struct{})
		if !f.isForwarded() {
			// A forwarded request joining the fetch must not wait on a peer
			// or owner that may be waiting on this DP: start over without
			// them, keeping the bytes (From does the same when the engine
			// moves to one later). A transfer from upstream goes on.
			go func() {
				select {
				case <-f.promoted:
					if k := Kind(in.kind.Load()); k == FromPeer || k == FromOwner {
						cancel(errPromoted)
					}
				case <-done:
				}
			}()
		}
		served, err := chain.Fetch(actx, f.digest, f.size, in)
		close(done)
		promoted := errors.Is(context.Cause(actx), errPromoted)
		cancel(nil)
		if err == nil {
			f.progress(f.size)
			if served != nil {
				log.Debug("blob ingested", "from", in.kinds[served].String(), "source", served.String())
			}
			return nil
		}
		if promoted && ctx.Err() == nil && !in.committed {
			log.Info("taking over the fetch for a forwarded request", "offset", in.w.Offset())
			continue
		}
		if !in.committed {
			in.w.Abort() // keep the stored chunks: the next request resumes there
		}
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("blob %s: %w: %v", f.digest, nodeerr.ErrUnavailable, ctx.Err())
		case errors.Is(err, failover.ErrAllFailed):
			sentinel := nodeerr.ErrUnavailable
			if errors.Is(err, source.ErrNotFound) {
				sentinel = nodeerr.ErrNotFound
			} else if errors.Is(err, source.ErrDataLoss) {
				sentinel = nodeerr.ErrDataLoss
			}
			return fmt.Errorf("blob %s: %w: %v", f.digest, sentinel, err)
		default:
			return fmt.Errorf("blob %s: %w", f.digest, err)
		}
	}
}

// ingest is a fetch's cache writer as the failover engine's Sink: what is
// written is counted (upstream or peer), rate-limited when it comes from
// upstream, stored, and handed at once to the readers streaming the
// fetch. The engine calls it from one goroutine.
type ingest struct {
	fr          *Fetcher
	f           *fetch
	w           *cache.Writer
	ctx         context.Context
	kinds       map[source.Source]Kind // the candidates' kinds
	kind        atomic.Int64           // the Kind delivering now (-1: none yet)
	cancel      context.CancelCauseFunc
	counter     *atomic.Int64 // where its bytes are counted
	bySource    *atomic.Int64 // its per-upstream counter (nil: none)
	limit       Limiter       // the upstream rate limit, for upstream sources (see fetch.rateLimited)
	lastStore   time.Time     // when the writer last stored bytes, as far as Write saw
	lastFlushed int64         // the writer's Flushed then
	committed   bool          // Verify ran Commit
}

// From implements failover.SourceSink.
func (in *ingest) From(src source.Source) {
	k := in.kinds[src]
	in.kind.Store(int64(k))
	if (k == FromPeer || k == FromOwner) && in.f.isForwarded() && in.cancel != nil {
		in.cancel(errPromoted) // promoted: never wait on a peer or owner now
	}
	in.counter, in.bySource, in.limit = &in.fr.traffic.peer, nil, nil
	if k == FromUpstream {
		in.counter = &in.fr.traffic.upstream
		in.bySource = in.fr.metrics.UpstreamBytes(src)
		in.limit = in.fr.cfg.Limiter
	}
}

func (in *ingest) Offset() int64 { return in.w.Offset() }

func (in *ingest) Write(p []byte) (int, error) {
	if in.limit != nil && in.f.rateLimited() {
		for rest := len(p); rest > 0; {
			n := min(rest, in.limit.Burst())
			if err := in.limit.WaitN(in.ctx, n); err != nil {
				return 0, fmt.Errorf("waiting for the upstream rate limit: %w", err)
			}
			rest -= n
		}
	}
	in.counter.Add(int64(len(p)))
	if in.bySource != nil {
		in.bySource.Add(int64(len(p)))
	}
	if _, err := in.w.Write(p); err != nil {
		return 0, fmt.Errorf("storing: %w", err)
	}
	flushed := in.w.Flushed()
	in.f.received(in.w.Offset(), flushed)
	// Readers get bytes from the writer's memory at once; what is stored
	// survives a crash and is where a restarted DP resumes. The cache
	// stores in large batches behind this goroutine for speed; on a slow
	// link, store at least every storeInterval.
	if now := time.Now(); flushed != in.lastFlushed {
		in.lastStore, in.lastFlushed = now, flushed
	} else if now.Sub(in.lastStore) > storeInterval {
		if err := in.w.Flush(); err != nil {
			return 0, fmt.Errorf("storing: %w", err)
		}
		in.lastStore, in.lastFlushed = time.Now(), in.w.Flushed()
	}
	// The peers streaming this fetch may not fall too far behind.
	in.f.awaitPeers(in.ctx, in.w.Offset())
	return len(p), nil
}

// Verify commits the blob: the cache checks its size and SHA-256.
func (in *ingest) Verify() error {
	in.committed = true
	err := in.w.Commit()
	if errors.Is(err, cache.ErrDigestMismatch) {
		return fmt.Errorf("%w: %w", source.ErrDataLoss, err)
	}
	return err
}

// Reset starts the blob over from byte 0 (after corrupt bytes): readers
// that streamed them fail with DataLoss and ask again.
func (in *ingest) Reset() error {
	if !in.committed {
		if err := in.w.Discard(); err != nil {
			return fmt.Errorf("discarding the corrupt bytes: %w", err)
		}
	}
	w, err := in.fr.store.NewWriter(in.f.digest, in.f.size)
	if err != nil {
		return err
	}
	in.w, in.committed, in.lastFlushed = w, false, w.Flushed()
	in.f.restart(w)
	return nil
}
