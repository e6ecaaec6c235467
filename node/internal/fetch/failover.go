package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
)

// The failover loop of a blob fetch: runFetch tries the candidates in order
// (copyFrom, copyStream), resuming at the byte already stored.

// storeInterval is the longest a fetch keeps received bytes unstored.
const storeInterval = time.Second

// errPromoted ends an attempt that waited on a peer or owner when the fetch
// is promoted.
var errPromoted = errors.New("fetch promoted to serve a forwarded request")

// runFetch ingests f's blob from its candidates in order (see candidates).
// A broken transfer resumes at its offset from the next candidate; a blob
// whose digest does not match is discarded whole and fetched again from the
// next candidate, so resumed bytes from a bad source never survive.
func (fr *Fetcher) runFetch(ctx context.Context, f *fetch) error {
	log := fr.log.With("blob", f.digest, "size", f.size)
	w, err := fr.store.NewWriter(f.digest, f.size)
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
	cands := fr.router.Candidates(f.digest, f.isForwarded())
	for i := 0; i < len(cands); i++ {
		if ctx.Err() != nil {
			break
		}
		c := cands[i]
		err := fr.copyFrom(ctx, c, f, w)
		if errors.Is(err, errPromoted) {
			// Recompute without peers and owners, keep the bytes.
			log.Info("taking over the fetch for a forwarded request", "offset", w.Offset())
			cands, i = fr.router.Candidates(f.digest, f.isForwarded()), -1
			continue
		}
		if err == nil {
			if err = w.Commit(); err == nil {
				f.progress(f.size)
				log.Debug("blob ingested", "from", c.Kind.String(), "source", c.Src.String())
				return nil
			}
			if !errors.Is(err, cache.ErrDigestMismatch) {
				w.Abort()
				return fmt.Errorf("blob %s: %w", f.digest, err)
			}
			mismatch = true
			log.Warn("blob failed verification; discarded, trying the next source", "from", c.Kind.String(), "source", c.Src.String(), "err", err)
			errs = append(errs, fmt.Sprintf("%s: %v", c.Src, err))
			// Readers may have streamed the bad bytes: they fail on
			// DataLoss and retry. Start over from byte 0.
			if w, err = fr.store.NewWriter(f.digest, f.size); err != nil {
				return fmt.Errorf("blob %s: %w", f.digest, err)
			}
			f.restart()
			continue
		}
		if c.Kind == FromPartial {
			log.Debug("copied what a peer had", "source", c.Src.String(), "offset", w.Offset())
			continue
		}
		log.Warn("transfer failed; resuming from the next source", "from", c.Kind.String(), "source", c.Src.String(), "offset", w.Offset(), "err", err)
		errs = append(errs, err.Error())
	}
	w.Abort() // keep the stored chunks: the next request resumes there
	if ctx.Err() != nil {
		return fmt.Errorf("blob %s: %w: %v", f.digest, nodeerr.ErrUnavailable, ctx.Err())
	}
	if mismatch {
		return fmt.Errorf("blob %s: %w: %s", f.digest, nodeerr.ErrDataLoss, strings.Join(errs, "; "))
	}
	return nodeerr.FromSources("blob "+f.digest, errs)
}

// copyFrom copies the rest of f's blob from c into w, publishing progress.
// Waiting on a peer or owner ends with errPromoted when f is promoted.
func (fr *Fetcher) copyFrom(ctx context.Context, c Candidate, f *fetch, w *cache.Writer) error {
	if c.Kind == FromPeer || c.Kind == FromOwner {
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
		err := fr.copyStream(ctx, c, f, w)
		if errors.Is(context.Cause(ctx), errPromoted) {
			return errPromoted
		}
		return err
	}
	return fr.copyStream(ctx, c, f, w)
}

func (fr *Fetcher) copyStream(ctx context.Context, c Candidate, f *fetch, w *cache.Writer) error {
	r, err := c.Src.Blob(ctx, f.digest, w.Offset())
	if err != nil {
		return err
	}
	defer r.Close()
	counter := &fr.traffic.upstream
	if c.Kind != FromUpstream {
		counter = &fr.traffic.peer
	}
	bySource := fr.metrics.UpstreamBytes(c.Src) // nil for peers or without metrics
	buf := make([]byte, 256<<10)
	var limit Limiter // Config.Limiter: reads wait for their bytes' tokens
	if c.Kind == FromUpstream && fr.cfg.Limiter != nil {
		limit = fr.cfg.Limiter
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
				return fmt.Errorf("%s: blob %s: storing: %w", c.Src, f.digest, err)
			}
			lastStore = time.Now()
		}
		f.awaitPeers(ctx, w.Offset())
		nr, rerr := r.Read(buf)
		if nr > 0 && limit != nil {
			if err := limit.WaitN(ctx, nr); err != nil {
				return fmt.Errorf("%s: blob %s: waiting for the upstream rate limit: %w", c.Src, f.digest, err)
			}
		}
		if nr > 0 {
			counter.Add(int64(nr))
			if bySource != nil {
				bySource.Add(int64(nr))
			}
			if _, err := w.Write(buf[:nr]); err != nil {
				return fmt.Errorf("%s: blob %s: storing: %w", c.Src, f.digest, err)
			}
			f.received(buf[:nr], w.Offset(), w.Flushed())
		}
		if rerr == io.EOF {
			if w.Offset() < f.size {
				return fmt.Errorf("%s: blob %s: stream ended at byte %d of %d: %w", c.Src, f.digest, w.Offset(), f.size, io.ErrUnexpectedEOF)
			}
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return nil
}
