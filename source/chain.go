package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// Document kinds passed to ChainOptions.Verify.
const (
	KindLatest   = "latest"
	KindManifest = "manifest"
)

// Backoff is how long a source that failed waits before the Chain prefers
// it again: Initial after the first failure, doubling with each further
// one, at most Max. A success resets it.
type Backoff struct {
	// Initial is the first wait. Default 5 s.
	Initial time.Duration
	// Max caps the wait. Default 5 min.
	Max time.Duration
}

// ChainOptions tune a Chain. Zero fields take the defaults of
// DefaultChainOptions.
type ChainOptions struct {
	// PerSourceTimeout bounds each source's answer: a whole document
	// request, and for a blob the connection and its first bytes, then
	// any silence while reading (no byte for this long moves to the next
	// source). It never bounds a long transfer that keeps moving. Default
	// 10 s, as Kaspersky Endpoint Security waits for one update source.
	PerSourceTimeout time.Duration
	// Backoff says how long a failed source is tried only after the
	// others.
	Backoff Backoff
	// Verify, when set, checks each document a source returns (kind is
	// KindLatest, with version "", or KindManifest) before the Chain
	// accepts it. A failure (a bad or missing signature) counts as that
	// source's failure: the next source is asked. It may be called
	// concurrently.
	Verify func(kind, product, version string, s Signed) error
	// Logger receives which source served and why others were skipped.
	// Default slog.Default().
	Logger *slog.Logger
}

// DefaultChainOptions returns the defaults documented on ChainOptions.
func DefaultChainOptions() ChainOptions {
	return ChainOptions{
		PerSourceTimeout: 10 * time.Second,
		Backoff:          Backoff{Initial: 5 * time.Second, Max: 5 * time.Minute},
	}
}

// Validate reports negative durations or a Max below Initial.
func (o ChainOptions) Validate() error {
	switch {
	case o.PerSourceTimeout < 0:
		return fmt.Errorf("chain options: PerSourceTimeout %v is negative: %w", o.PerSourceTimeout, ErrBadOptions)
	case o.Backoff.Initial < 0 || o.Backoff.Max < 0:
		return fmt.Errorf("chain options: negative backoff %+v: %w", o.Backoff, ErrBadOptions)
	case o.Backoff.Initial > 0 && o.Backoff.Max > 0 && o.Backoff.Max < o.Backoff.Initial:
		return fmt.Errorf("chain options: Backoff.Max %v is below Backoff.Initial %v: %w", o.Backoff.Max, o.Backoff.Initial, ErrBadOptions)
	}
	return nil
}

func (o ChainOptions) withDefaults() ChainOptions {
	d := DefaultChainOptions()
	if o.PerSourceTimeout <= 0 {
		o.PerSourceTimeout = d.PerSourceTimeout
	}
	if o.Backoff.Initial <= 0 {
		o.Backoff.Initial = d.Backoff.Initial
	}
	if o.Backoff.Max <= 0 {
		o.Backoff.Max = max(d.Backoff.Max, o.Backoff.Initial)
	}
	if o.Backoff.Max < o.Backoff.Initial {
		o.Backoff.Max = o.Backoff.Initial
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Chain is a Source that tries its sources in order, as an update task
// tries the update sources an administrator listed: the first that answers
// with a verified document, or with the blob, serves; every skipped source
// is logged (Warn) with the reason, and the one that served is logged
// (Info) and named in Signed.Source.
//
// A source that failed (unreachable, timed out, an HTTP 5xx, a bad
// signature, a corrupt blob, a transfer that broke) is put into backoff
// (ChainOptions.Backoff): until it ends, it is tried only after the
// others, never forgotten. "Not found" is not a failure of the source: the
// next is asked, and the order stays.
//
// A blob's reader resumes a broken transfer at the byte reached, once from
// the same source, then from the next ones; it hashes a blob read from
// offset 0 and checks the SHA-256 at the end (see Blob).
//
// Chain is safe for concurrent use.
type Chain struct {
	srcs []Source
	opts ChainOptions
	log  *slog.Logger

	mu     sync.Mutex // guards health
	health []health
}

// health is one source's backoff state.
type health struct {
	failures int       // consecutive failures
	until    time.Time // tried only after the others until then
	gen      uint64    // changes with every recorded failure or success
}

// NewChain returns a Chain over srcs, tried in this order. Invalid opts
// (see Validate) are replaced by the defaults. The Chain owns the sources:
// Close closes them.
func NewChain(srcs []Source, opts ChainOptions) *Chain {
	if opts.Validate() != nil {
		opts = ChainOptions{Verify: opts.Verify, Logger: opts.Logger}
	}
	opts = opts.withDefaults()
	return &Chain{
		srcs:   append([]Source(nil), srcs...),
		opts:   opts,
		log:    opts.Logger.With("component", "source"),
		health: make([]health, len(srcs)),
	}
}

// Sources returns the chain's sources, in their configured order.
func (c *Chain) Sources() []Source { return append([]Source(nil), c.srcs...) }

// String implements Source: the sources' names, in order.
func (c *Chain) String() string {
	names := make([]string, len(c.srcs))
	for i, s := range c.srcs {
		names[i] = s.String()
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// Close implements Source: it closes every source.
func (c *Chain) Close() error {
	var errs []error
	for _, s := range c.srcs {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// pick is a source to try, with the health generation seen when the order
// was made.
type pick struct {
	i       int
	gen     uint64
	waiting bool // in backoff
}

// order returns the sources to try: those not in backoff in their
// configured order, then those in backoff, soonest retry first.
func (c *Chain) order() []pick {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var ready, waiting []pick
	for i, h := range c.health {
		p := pick{i: i, gen: h.gen}
		if now.Before(h.until) {
			p.waiting = true
			waiting = append(waiting, p)
		} else {
			ready = append(ready, p)
		}
	}
	sort.SliceStable(waiting, func(a, b int) bool {
		return c.health[waiting[a].i].until.Before(c.health[waiting[b].i].until)
	})
	return append(ready, waiting...)
}

// fail records a failure of source i seen by an attempt that started at
// generation gen; failures of attempts that started before the last
// recorded change count once (a burst of concurrent requests to a dead
// source is one failure). It returns the backoff.
func (c *Chain) fail(i int, gen uint64) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &c.health[i]
	if gen == h.gen {
		h.failures++
		h.gen++
		d := c.opts.Backoff.Initial
		for n := 1; n < h.failures && d < c.opts.Backoff.Max; n++ {
			d *= 2
		}
		h.until = time.Now().Add(min(d, c.opts.Backoff.Max))
	}
	return time.Until(h.until).Round(time.Millisecond)
}

// failNow records a failure of source i regardless of when it was tried.
func (c *Chain) failNow(i int) time.Duration {
	c.mu.Lock()
	gen := c.health[i].gen
	c.mu.Unlock()
	return c.fail(i, gen)
}

// succeed clears source i's backoff.
func (c *Chain) succeed(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &c.health[i]
	if h.failures > 0 || !h.until.IsZero() {
		h.failures, h.until = 0, time.Time{}
		h.gen++
	}
}

// blames reports whether err is the source's fault, to be remembered by
// backoff: not a missing file, not the caller's bad request, not an
// offset past the end that every source would refuse alike.
func blames(err error, offset int64) bool {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrInvalid):
		return false
	case offset > 0 && errors.Is(err, ErrDataLoss) && strings.Contains(err.Error(), "past the end"):
		return false
	}
	return true
}

// skipped logs why source p was left and records the failure.
func (c *Chain) skipped(p pick, what string, err error, next string, offset int64) {
	s := c.srcs[p.i]
	attrs := []any{"what", what, "source", s.String(), "error", err.Error(), "next", next}
	if blames(err, offset) {
		attrs = append(attrs, "backoff", c.fail(p.i, p.gen))
	}
	c.log.Warn("update source skipped", attrs...)
}

// nextName names the source after position n of order, for logs.
func (c *Chain) nextName(order []pick, n int) string {
	if n+1 < len(order) {
		return c.srcs[order[n+1].i].String()
	}
	return "none"
}

// allFailed is the error when no source served: ErrNotFound if every
// source said so, ErrUnavailable otherwise; each source's reason follows.
func (c *Chain) allFailed(what string, errs []error) error {
	if len(errs) == 0 {
		return fmt.Errorf("%s: no update source configured: %w", what, ErrUnavailable)
	}
	sentinel := ErrNotFound
	reasons := make([]string, len(errs))
	for i, err := range errs {
		if !errors.Is(err, ErrNotFound) {
			sentinel = ErrUnavailable
		}
		reasons[i] = err.Error()
	}
	return fmt.Errorf("%s: %w from all %d sources: %s", what, sentinel, len(errs), strings.Join(reasons, "; "))
}

// Latest implements Source: the first verified latest.json.
func (c *Chain) Latest(ctx context.Context, product string) (Signed, error) {
	rel, err := latestPath(product)
	if err != nil {
		return Signed{}, err
	}
	return c.document(ctx, KindLatest, product, "", rel, func(ctx context.Context, s Source) (Signed, error) {
		return s.Latest(ctx, product)
	})
}

// Manifest implements Source: the first verified manifest.json.
func (c *Chain) Manifest(ctx context.Context, product, version string) (Signed, error) {
	rel, err := manifestPath(product, version)
	if err != nil {
		return Signed{}, err
	}
	return c.document(ctx, KindManifest, product, version, rel, func(ctx context.Context, s Source) (Signed, error) {
		return s.Manifest(ctx, product, version)
	})
}

func (c *Chain) document(ctx context.Context, kind, product, version, rel string, get func(context.Context, Source) (Signed, error)) (Signed, error) {
	order := c.order()
	var errs []error
	for n, p := range order {
		s := c.srcs[p.i]
		sctx, cancel := context.WithTimeout(ctx, c.opts.PerSourceTimeout)
		signed, err := get(sctx, s)
		timedOut := err != nil && sctx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil && c.opts.Verify != nil {
			if verr := c.opts.Verify(kind, product, version, signed); verr != nil {
				err = fmt.Errorf("%s: %s: %w: it does not verify: %w", s, rel, ErrDataLoss, verr)
			}
		}
		if err == nil {
			c.succeed(p.i)
			if signed.Source == "" {
				signed.Source = s.String()
			}
			c.log.Info("update source served", "what", rel, "source", signed.Source, "skipped", len(errs))
			return signed, nil
		}
		if ctx.Err() != nil {
			return Signed{}, fmt.Errorf("%s: %w while asking %s: %w", rel, ErrUnavailable, s, ctx.Err())
		}
		if errors.Is(err, ErrInvalid) {
			return Signed{}, err
		}
		if timedOut {
			err = fmt.Errorf("%w (no answer within the per-source timeout, %v)", err, c.opts.PerSourceTimeout)
		}
		c.skipped(p, rel, err, c.nextName(order, n), 0)
		errs = append(errs, err)
	}
	return Signed{}, c.allFailed(rel, errs)
}

// errStalled cancels a source's blob transfer that went silent.
var errStalled = errors.New("stalled")

// Blob implements Source. The reader resumes a transfer that breaks (a
// connection cut, a source going silent for PerSourceTimeout) at the
// current offset, once from the same source, then from the next sources
// in order, so the bytes already read are never fetched again.
//
// From offset 0 the reader hashes what it delivers and, at the end,
// checks the SHA-256 against digest: on a mismatch the read returns an
// error wrapping ErrDataLoss (never io.EOF) and every source that
// delivered part of it goes into backoff, so the caller discards what it
// has and asks again from 0, and the chain then starts with another
// source. From an offset above 0 the chain cannot hash the bytes it never
// saw: the caller checks the digest.
//
// The reader has a Source() string method naming the source it reads
// from. It is not safe for concurrent use (one reader, one goroutine).
func (c *Chain) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	rel, err := blobPath(digest)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("source: blob %s: negative offset %d: %w", digest, offset, ErrInvalid)
	}
	r := &chainBlob{c: c, ctx: ctx, digest: digest, rel: rel, start: offset, off: offset, order: c.order(), delivered: map[int]bool{}}
	if offset == 0 {
		r.hash = sha256.New()
	}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

// chainBlob is the reader Chain.Blob returns.
type chainBlob struct {
	c      *Chain
	ctx    context.Context
	digest string
	rel    string
	start  int64 // the offset asked for
	off    int64 // blob offset of the next byte
	hash   hash.Hash
	order  []pick
	pos    int // index in order of the current source

	resumed   bool // the current source was reopened after a break
	resumes   int  // reopenings, all sources
	cur       io.ReadCloser
	curCtx    context.Context // the current transfer's context
	cancel    context.CancelCauseFunc
	timer     *time.Timer
	delivered map[int]bool // sources (indices) that delivered bytes
	errs      []error      // why sources were left
	err       error        // sticky: io.EOF, or the final error
}

// Source names the source the reader reads from (or read last).
func (r *chainBlob) Source() string {
	if r.pos < len(r.order) {
		return r.c.srcs[r.order[r.pos].i].String()
	}
	return ""
}

func (r *chainBlob) src() Source { return r.c.srcs[r.order[r.pos].i] }

// open opens the current source at r.off, moving down the order until one
// answers within PerSourceTimeout.
func (r *chainBlob) open() error {
	d := r.c.opts.PerSourceTimeout
	for r.pos < len(r.order) {
		s := r.src()
		actx, cancel := context.WithCancelCause(r.ctx)
		timer := time.AfterFunc(d, func() { cancel(errStalled) })
		rc, err := s.Blob(actx, r.digest, r.off)
		if !timer.Stop() && err == nil {
			rc.Close() // the timeout fired as the answer came
			err = context.Cause(actx)
		}
		if err == nil {
			r.cur, r.curCtx, r.cancel, r.timer = rc, actx, cancel, timer
			return nil
		}
		stalled := context.Cause(actx) == errStalled
		cancel(nil)
		if r.ctx.Err() != nil {
			return fmt.Errorf("%s: %w while asking %s: %w", r.rel, ErrUnavailable, s, r.ctx.Err())
		}
		if errors.Is(err, ErrInvalid) {
			return err
		}
		if stalled {
			err = fmt.Errorf("%s: %s: %w: no answer within %v", s, r.rel, ErrUnavailable, d)
		}
		r.leave(err)
	}
	return r.c.allFailed(r.rel, r.errs)
}

// leave moves to the next source, logging why and recording the failure.
func (r *chainBlob) leave(err error) {
	r.c.skipped(r.order[r.pos], r.rel, fmt.Errorf("%w (at byte %d)", err, r.off), r.c.nextName(r.order, r.pos), r.off)
	r.errs = append(r.errs, err)
	r.pos++
	r.resumed = false
}

// drop releases the current transfer.
func (r *chainBlob) drop() {
	if r.cur == nil {
		return
	}
	r.timer.Stop()
	r.cur.Close()
	r.cancel(nil)
	r.cur = nil
}

func (r *chainBlob) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.cur == nil {
			if err := r.open(); err != nil {
				r.err = err
				return 0, err
			}
		}
		// Any silence of PerSourceTimeout while the caller waits for bytes
		// cancels the transfer.
		r.timer.Reset(r.c.opts.PerSourceTimeout)
		n, err := r.cur.Read(p)
		r.timer.Stop()
		if n > 0 {
			if r.hash != nil {
				r.hash.Write(p[:n])
			}
			r.off += int64(n)
			r.delivered[r.order[r.pos].i] = true
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF:
			return n, r.finish()
		}
		r.broke(err)
		if n > 0 || r.err != nil {
			return n, r.err
		}
	}
}

// broke handles a transfer that failed mid-way: the caller's end stops
// everything; otherwise the same source is asked once more from r.off,
// then the next.
func (r *chainBlob) broke(err error) {
	s := r.src()
	stalled := context.Cause(r.curCtx) == errStalled
	r.drop()
	if r.ctx.Err() != nil {
		r.err = fmt.Errorf("%s: %w at byte %d from %s: %w", r.rel, ErrUnavailable, r.off, s, r.ctx.Err())
		return
	}
	if stalled {
		err = fmt.Errorf("%s: %s: %w: no data for %v", s, r.rel, ErrUnavailable, r.c.opts.PerSourceTimeout)
	}
	if errors.Is(err, ErrInvalid) {
		r.err = err
		return
	}
	if !r.resumed {
		r.resumed = true
		r.resumes++
		r.c.log.Warn("update source transfer broke, resuming from the same source",
			"what", r.rel, "source", s.String(), "offset", r.off, "error", err.Error())
		return
	}
	r.resumes++
	r.leave(err)
}

// finish checks the digest at the end of the blob.
func (r *chainBlob) finish() error {
	s := r.src()
	r.drop()
	if r.hash != nil {
		if sum := hex.EncodeToString(r.hash.Sum(nil)); sum != r.digest {
			var blamed []string
			for i := range r.delivered {
				r.c.failNow(i)
				blamed = append(blamed, r.c.srcs[i].String())
			}
			sort.Strings(blamed)
			r.err = fmt.Errorf("%s: %w: the %d bytes received (from %s) have SHA-256 %s: discard them and fetch the blob again from the start",
				r.rel, ErrDataLoss, r.off, strings.Join(blamed, ", "), sum)
			r.c.log.Warn("update source delivered a corrupt blob", "what", r.rel, "sources", strings.Join(blamed, ", "), "sha256", sum)
			return r.err
		}
	}
	r.c.succeed(r.order[r.pos].i)
	r.err = io.EOF
	level := slog.LevelDebug
	if len(r.errs) > 0 || r.resumes > 0 {
		level = slog.LevelInfo
	}
	r.c.log.Log(r.ctx, level, "update source served", "what", r.rel, "source", s.String(),
		"skipped", len(r.errs), "resumes", r.resumes, "bytes", r.off-r.start, "verified", r.hash != nil)
	return io.EOF
}

// Close implements io.Closer: it ends the transfer in progress.
func (r *chainBlob) Close() error {
	r.drop()
	if r.err == nil {
		r.err = errors.New("source: read after Close")
	}
	return nil
}
