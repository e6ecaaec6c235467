package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/source"
)

// fetch is one blob being ingested from upstream. Every request for the
// blob while it is in flight reads the chunks already stored, then waits for
// more: the site's link carries the blob once, and bytes reach callers as
// they arrive.
type fetch struct {
	digest string
	size   int64

	mu      sync.Mutex    // protects the fields below
	gen     int           // bumped when stored bytes are discarded (digest mismatch)
	flushed int64         // bytes readable with cache.ReadPendingAt
	done    bool          // the fetch ended; err says how
	err     error         // nil: the blob is whole in the cache
	changed chan struct{} // closed and replaced on every change
}

// state returns a snapshot and a channel closed at the next change.
func (f *fetch) state() (gen int, flushed int64, done bool, err error, changed <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, f.flushed, f.done, f.err, f.changed
}

// restart records that the stored bytes were discarded: readers that sent
// any of them must fail rather than continue with good bytes after bad.
func (f *fetch) restart() {
	f.mu.Lock()
	f.gen++
	f.flushed = 0
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

// blobSize returns the size of a blob named by a verified manifest.
func (n *Node) blobSize(digest string) (int64, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	size, ok := n.known[digest]
	return size, ok
}

// acquire returns the in-flight fetch of digest, starting one if needed, or
// nil when the blob is already whole in the cache. Blobs that no verified
// manifest names are NotFound: the DP is not an open proxy.
func (n *Node) acquire(digest string) (*fetch, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if f, ok := n.fetches[digest]; ok {
		return f, nil
	}
	// Under n.mu: a fetch leaves the map only after its blob is whole, so
	// checking the cache here cannot miss a blob that just completed.
	if _, err := n.cache.Stat(digest); err == nil {
		return nil, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return nil, fmt.Errorf("blob %s: %w", digest, err)
	}
	size, ok := n.known[digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w: no manifest this DP knows names it (fetch the manifest first)", digest, ErrNotFound)
	}
	if n.closed || n.bg.Err() != nil {
		return nil, fmt.Errorf("blob %s: %w: the DP is shutting down", digest, ErrUnavailable)
	}
	f := &fetch{digest: digest, size: size, changed: make(chan struct{})}
	n.fetches[digest] = f
	n.bgWG.Add(1)
	go func() {
		defer n.bgWG.Done()
		err := n.runFetch(n.bg, f)
		n.mu.Lock()
		delete(n.fetches, digest)
		n.mu.Unlock()
		f.finish(err)
	}()
	return f, nil
}

// ensureBlob returns once digest is whole in the cache.
func (n *Node) ensureBlob(ctx context.Context, digest string) error {
	f, err := n.acquire(digest)
	if err != nil || f == nil {
		return err
	}
	for {
		_, _, done, err, changed := f.state()
		if done {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// runFetch ingests f's blob from the upstream sources in order. A broken
// transfer resumes at its offset from the same or the next source; a blob
// whose digest does not match is discarded whole and fetched again from the
// next source, so resumed bytes from a bad source never survive.
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
	for _, src := range n.upstream {
		if ctx.Err() != nil {
			break
		}
		err := n.copyFrom(ctx, src, f, w)
		if err == nil {
			err = w.Commit()
			if err == nil {
				f.progress(f.size)
				log.Debug("blob ingested", "source", src.String())
				return nil
			}
			if errors.Is(err, cache.ErrDigestMismatch) {
				log.Warn("upstream blob failed verification; discarded, trying the next source", "source", src.String(), "err", err)
				errs = append(errs, fmt.Sprintf("%s: %v", src, err))
				// Readers may have streamed the bad bytes: they fail on
				// DataLoss and retry. Start over from byte 0.
				if w, err = n.cache.NewWriter(f.digest, f.size); err != nil {
					return fmt.Errorf("blob %s: %w", f.digest, err)
				}
				f.restart()
				continue
			}
			w.Abort()
			return fmt.Errorf("blob %s: %w", f.digest, err)
		}
		log.Warn("upstream transfer failed; resuming from the next source", "source", src.String(), "offset", w.Offset(), "err", err)
		errs = append(errs, err.Error())
	}
	w.Abort() // keep the stored chunks: the next request resumes there
	if ctx.Err() != nil {
		return fmt.Errorf("blob %s: %w: %v", f.digest, ErrUnavailable, ctx.Err())
	}
	mismatch := false
	for _, e := range errs {
		if strings.Contains(e, cache.ErrDigestMismatch.Error()) {
			mismatch = true
		}
	}
	if mismatch {
		return fmt.Errorf("blob %s: %w: %s", f.digest, ErrDataLoss, strings.Join(errs, "; "))
	}
	return upstreamError("blob "+f.digest, errs)
}

// copyFrom copies the rest of f's blob from src into w, publishing progress.
func (n *Node) copyFrom(ctx context.Context, src source.Source, f *fetch, w *cache.Writer) error {
	r, err := src.Blob(ctx, f.digest, w.Offset())
	if err != nil {
		return err
	}
	defer r.Close()
	buf := make([]byte, 256<<10)
	for w.Offset() < f.size {
		nr, rerr := r.Read(buf)
		if nr > 0 {
			n.traffic.upstream.Add(int64(nr))
			if _, err := w.Write(buf[:nr]); err != nil {
				return fmt.Errorf("%s: blob %s: storing: %w", src, f.digest, err)
			}
			f.progress(w.Flushed())
		}
		if rerr == io.EOF {
			if w.Offset() < f.size {
				return fmt.Errorf("%s: blob %s: stream ended at byte %d of %d: %w", src, f.digest, w.Offset(), f.size, io.ErrUnexpectedEOF)
			}
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	return nil
}
