package failover

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dpcache/dpcache/source"
)

// Document kinds passed to Options.Verify.
const (
	KindLatest   = "latest"
	KindManifest = "manifest"
)

// MaxResumes bounds how many times in a row one source's broken transfer
// is resumed before the next source is tried; each resume must follow
// progress (a source that breaks before sending a byte is left at once).
const MaxResumes = 3

// fetchBufSize is the read buffer of Chain.Fetch.
const fetchBufSize = 256 << 10

// Backoff is how long a source that failed waits before a Chain prefers
// it again: Initial after the first failure, doubling with each further
// one, at most Max. A success resets it.
type Backoff struct {
	// Initial is the first wait. Default 5 s.
	Initial time.Duration
	// Max caps the wait. Default 5 min.
	Max time.Duration
}

// Options tune a Chain. Zero fields take the defaults of
// DefaultChainOptions.
type Options struct {
	// ConnectTimeout bounds each source's answer: a whole document
	// request, and for a blob the request until the source answers.
	// Default 10 s, as Kaspersky Endpoint Security waits for one update
	// source.
	ConnectTimeout time.Duration
	// StallTimeout bounds any silence while a blob's bytes flow: a
	// transfer that delivers no byte for this long is left for the next
	// source, which resumes at the offset reached. It never bounds a long
	// transfer that keeps moving. Default 30 s (`--stall-timeout`).
	StallTimeout time.Duration
	// Backoff says how long a failed source is tried only after the
	// others.
	Backoff Backoff
	// Health, when set, is where failures are remembered, by source name:
	// Chains built over changing sets of sources (a DP's peers and
	// upstreams, one Chain per fetch) share one Health so that a failing
	// source stays in backoff across them. Nil: the Chain keeps its own.
	Health *Health
	// Verify, when set, checks each document a source returns (kind is
	// KindLatest, with version "", or KindManifest; s.Source names the
	// source) before the Chain accepts it: signature, product, serial
	// floor, expiry. A failure counts as
	// that source's failure and the next source is asked; a failure
	// wrapping ErrRetry first asks the same source once more (a
	// repository being republished can pair an old document with a new
	// signature for an instant). It may be called concurrently.
	Verify func(kind, product, version string, s source.Signed) error
	// Tier, when set, groups the sources: a source in backoff is tried
	// after the others of its tier, never after a later tier (a DP asks
	// every peer before the internet link, and upstream for the newest
	// latest.json before its peers, whatever their backoff). Tiers are
	// tried in increasing order; nil: one tier.
	Tier func(source.Source) int
	// Hint, when set, adds advice for the user to a failure in a
	// *Error's message ("check the network"), or "" for none.
	Hint func(error) string
	// Logger receives which source served and why others were skipped.
	// Default slog.Default().
	Logger *slog.Logger
}

// ErrAllFailed is wrapped by every *Error: no source could serve.
var ErrAllFailed = errors.New("every source failed")

// ErrRetry, wrapped by an error of Options.Verify, asks the Chain to
// ask the same source once more before the next one (see Retry).
var ErrRetry = errors.New("worth one more try")

// Retry marks err as worth one more request to the same source (it then
// wraps ErrRetry too), without changing its message.
func Retry(err error) error { return retryError{err} }

type retryError struct{ err error }

func (e retryError) Error() string   { return e.err.Error() }
func (e retryError) Unwrap() []error { return []error{e.err, ErrRetry} }

// DefaultChainOptions returns the defaults documented on Options.
func DefaultOptions() Options {
	return Options{
		ConnectTimeout: 10 * time.Second,
		StallTimeout:   30 * time.Second,
		Backoff:        Backoff{Initial: 5 * time.Second, Max: 5 * time.Minute},
	}
}

// Validate reports negative durations or a Max below Initial.
func (o Options) Validate() error {
	switch {
	case o.ConnectTimeout < 0:
		return fmt.Errorf("chain options: ConnectTimeout %v is negative: %w", o.ConnectTimeout, source.ErrBadOptions)
	case o.StallTimeout < 0:
		return fmt.Errorf("chain options: StallTimeout %v is negative: %w", o.StallTimeout, source.ErrBadOptions)
	case o.Backoff.Initial < 0 || o.Backoff.Max < 0:
		return fmt.Errorf("chain options: negative backoff %+v: %w", o.Backoff, source.ErrBadOptions)
	case o.Backoff.Initial > 0 && o.Backoff.Max > 0 && o.Backoff.Max < o.Backoff.Initial:
		return fmt.Errorf("chain options: Backoff.Max %v is below Backoff.Initial %v: %w", o.Backoff.Max, o.Backoff.Initial, source.ErrBadOptions)
	}
	return nil
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = d.ConnectTimeout
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = d.StallTimeout
	}
	o.Backoff = o.Backoff.withDefaults()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func (b Backoff) withDefaults() Backoff {
	d := DefaultOptions().Backoff
	if b.Initial <= 0 {
		b.Initial = d.Initial
	}
	if b.Max <= 0 {
		b.Max = max(d.Max, b.Initial)
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	return b
}

// Chain is the one failover engine: a source.Source that tries its sources in
// order, as an update task tries the update sources an administrator
// listed. The first that answers with a verified document, or with the
// blob, serves; every skipped source is logged (Warn) with the reason, and
// the one that served is logged (Info) and named in source.Signed.Source. When no
// source serves, the error is a *Error listing each.
//
// A source that failed (unreachable, timed out, silent mid-transfer, an
// HTTP 5xx, a bad signature, a corrupt blob) is put into backoff
// (Options.Backoff): until it ends, it is tried only after the
// others, never forgotten. "Not found", a source holding only part of a
// blob (source.ErrPartial), a DP refusing a request that looped back to it
// (source.ErrLoop), and the caller's own bad request are not failures of
// the source: the next is asked, and the order stays.
//
// Blobs are read with Blob (a reader, for relaying) or Fetch (into a
// caller's Sink, for storing). Either resumes a broken or stalled transfer
// at the byte reached: from the same source while it keeps making
// progress (up to 3 times in a row), then from the next sources in order.
//
// Chain is safe for concurrent use. It is cheap to build: a caller whose
// sources change (a DP's peers) builds one per request over a shared
// Health.
type Chain struct {
	srcs   []source.Source
	opts   Options
	log    *slog.Logger
	health *Health
}

// NewChain returns a Chain over srcs, tried in this order. Invalid opts
// (see Validate) are replaced by the defaults. Close closes the sources;
// a Chain built over sources the caller keeps needs no Close.
func New(srcs []source.Source, opts Options) *Chain {
	if opts.Validate() != nil {
		opts = Options{Verify: opts.Verify, Hint: opts.Hint, Health: opts.Health, Tier: opts.Tier, Logger: opts.Logger}
	}
	opts = opts.withDefaults()
	h := opts.Health
	if h == nil {
		h = NewHealth(opts.Backoff)
	}
	return &Chain{
		srcs:   append([]source.Source(nil), srcs...),
		opts:   opts,
		log:    opts.Logger.With("component", "source"),
		health: h,
	}
}

// Sources returns the chain's sources, in their configured order.
func (c *Chain) Sources() []source.Source { return append([]source.Source(nil), c.srcs...) }

// String implements source.Source: the sources' names, in order.
func (c *Chain) String() string {
	names := make([]string, len(c.srcs))
	for i, s := range c.srcs {
		names[i] = s.String()
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// Close implements source.Source: it closes every source.
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
	name    string
	gen     uint64
	waiting bool // in backoff
}

// order returns the sources to try: those not in backoff in their
// configured order, then those in backoff, soonest retry first.
func (c *Chain) order() []pick {
	names := make([]string, len(c.srcs))
	for i, s := range c.srcs {
		names[i] = s.String()
	}
	states := c.health.states(names)
	now := time.Now()
	picks := make([]pick, len(c.srcs))
	tier := make([]int, len(c.srcs))
	for i, st := range states {
		picks[i] = pick{i: i, name: names[i], gen: st.gen, waiting: now.Before(st.until)}
		if c.opts.Tier != nil {
			tier[i] = c.opts.Tier(c.srcs[i])
		}
	}
	// By tier; in a tier, the ready ones as configured, then those in
	// backoff, soonest retry first.
	sort.SliceStable(picks, func(a, b int) bool {
		pa, pb := picks[a], picks[b]
		switch {
		case tier[pa.i] != tier[pb.i]:
			return tier[pa.i] < tier[pb.i]
		case pa.waiting != pb.waiting:
			return !pa.waiting
		case pa.waiting:
			return states[pa.i].until.Before(states[pb.i].until)
		}
		return false
	})
	return picks
}

// blames reports whether err is the source's fault, to be remembered by
// backoff: not a missing file, not the caller's bad request, not a source
// that says it holds only part of a blob, not an offset past the end that
// every source would refuse alike, not a DP refusing a request that came
// back to it through a cycle of upstreams (the configuration's fault; the
// same DP serves other requests).
func blames(err error) bool {
	switch {
	case errors.Is(err, source.ErrNotFound), errors.Is(err, source.ErrInvalid), errors.Is(err, source.ErrPartial), errors.Is(err, errPastEnd),
		errors.Is(err, source.ErrLoop):
		return false
	}
	return true
}

// skipped logs why source p was left and records the failure.
func (c *Chain) skipped(p pick, what string, err error, next string) {
	attrs := []any{"what", what, "source", p.name, "error", err.Error(), "next", next}
	level := slog.LevelWarn
	switch {
	case errors.Is(err, source.ErrPartial):
		level = slog.LevelDebug
	case blames(err):
		attrs = append(attrs, "backoff", c.health.fail(p.name, p.gen))
	}
	c.log.Log(context.Background(), level, "update source skipped", attrs...)
}

// Failed records a failure of src that the caller saw outside the chain
// (its own read from the source, such as an agent's batched read of chunks),
// by the chain's rules: only a failure that is the source's fault puts it
// in backoff, so that the chain's next requests try it after the others.
func (c *Chain) Failed(src source.Source, err error) {
	if err != nil && blames(err) {
		c.health.failNow(src.String())
	}
}

// nextName names the source after position n of order, for logs.
func (c *Chain) nextName(order []pick, n int) string {
	if n+1 < len(order) {
		return order[n+1].name
	}
	return "none"
}

// Latest implements source.Source: the first verified latest.json.
func (c *Chain) Latest(ctx context.Context, product string) (source.Signed, error) {
	rel, err := source.LatestPath(product)
	if err != nil {
		return source.Signed{}, err
	}
	return c.document(ctx, KindLatest, product, "", rel, func(ctx context.Context, s source.Source) (source.Signed, error) {
		return s.Latest(ctx, product)
	})
}

// Manifest implements source.Source: the first verified manifest.json.
func (c *Chain) Manifest(ctx context.Context, product, version string) (source.Signed, error) {
	rel, err := source.ManifestPath(product, version)
	if err != nil {
		return source.Signed{}, err
	}
	return c.document(ctx, KindManifest, product, version, rel, func(ctx context.Context, s source.Source) (source.Signed, error) {
		return s.Manifest(ctx, product, version)
	})
}

func (c *Chain) document(ctx context.Context, kind, product, version, rel string, get func(context.Context, source.Source) (source.Signed, error)) (source.Signed, error) {
	order := c.order()
	fe := &Error{What: rel, hint: c.opts.Hint}
	var stale *staleOffer // the best document Verify called stale
	for n, p := range order {
		s := c.srcs[p.i]
		signed, err := c.askDocument(ctx, kind, product, version, rel, s, get)
		var se *staleError
		if err != nil && errors.As(err, &se) && (stale == nil || se.rank > stale.rank) {
			stale = &staleOffer{signed: signed, rank: se.rank}
		}
		if err == nil {
			c.health.succeed(p.name)
			level := slog.LevelDebug // a DP refreshes every minute: only a fallback is news
			if len(fe.Failures) > 0 {
				level = slog.LevelInfo
			}
			c.log.Log(ctx, level, "update source served", "what", rel, "source", signed.Source, "skipped", len(fe.Failures))
			return signed, nil
		}
		if ctx.Err() != nil {
			return source.Signed{}, fmt.Errorf("%s: %w while asking %s: %w", rel, source.ErrUnavailable, s, context.Cause(ctx))
		}
		if errors.Is(err, source.ErrInvalid) {
			return source.Signed{}, err
		}
		c.skipped(p, rel, err, c.nextName(order, n))
		fe.add(s.String(), err)
	}
	if stale != nil {
		c.log.Warn("no source offers a current document; using the newest stale one", "what", rel, "source", stale.signed.Source, "skipped", len(fe.Failures))
		stale.signed.Stale = true
		return stale.signed, nil
	}
	return source.Signed{}, fe
}

// staleOffer is a document Verify called stale, with its rank.
type staleOffer struct {
	signed source.Signed
	rank   uint64
}

// Stale marks an error of Options.Verify as a stale document (an expired
// latest.json: a frozen source or a forgotten mirror). The next source is
// tried; when none offers a document that verifies, the stale one of the
// highest rank (its serial) is returned after all, with Signed.Stale set,
// rather than an error: an air-gapped site updates from its mirror, and
// the caller says it is stale. The error's message is err's.
func Stale(err error, rank uint64) error { return &staleError{err: err, rank: rank} }

type staleError struct {
	err  error
	rank uint64
}

func (e *staleError) Error() string { return e.err.Error() }
func (e *staleError) Unwrap() error { return e.err }

// askDocument asks one source for a document within ConnectTimeout and
// verifies it, asking once more when verification says ErrRetry.
func (c *Chain) askDocument(ctx context.Context, kind, product, version, rel string, s source.Source, get func(context.Context, source.Source) (source.Signed, error)) (source.Signed, error) {
	for attempt := 0; ; attempt++ {
		sctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
		signed, err := get(sctx, s)
		timedOut := err != nil && sctx.Err() != nil && ctx.Err() == nil
		cancel()
		if timedOut {
			return source.Signed{}, fmt.Errorf("%w (no answer within %v)", err, c.opts.ConnectTimeout)
		}
		if err != nil {
			return signed, err
		}
		if signed.Source == "" {
			signed.Source = s.String()
		}
		if c.opts.Verify == nil {
			return signed, nil
		}
		verr := c.opts.Verify(kind, product, version, signed)
		if verr == nil {
			return signed, nil
		}
		if attempt == 0 && errors.Is(verr, ErrRetry) {
			continue
		}
		// The document itself is returned too: a stale one may still be
		// used when no source offers better (see Stale).
		return signed, fmt.Errorf("%s: %s: refused: %w", s, rel, verr)
	}
}

// errStalled cancels a source's blob transfer that went silent.
var errStalled = errors.New("stalled")

// errPastEnd marks an offset at or past a blob's end: every source would
// refuse it alike.
var errPastEnd = errors.New("offset past the end")

// Blob implements source.Source. The reader resumes a transfer that breaks (a
// connection cut, a source going silent for StallTimeout) at the current
// offset, from the same source while it makes progress, then from the next
// sources in order, so the bytes already read are never fetched again.
//
// From offset 0 the reader hashes what it delivers and, at the end,
// checks the SHA-256 against digest: on a mismatch the read returns an
// error wrapping source.ErrDataLoss (never io.EOF) and every source that
// delivered part of it goes into backoff, so the caller discards what it
// has and asks again from 0, and the chain then starts with another
// source. From an offset above 0 the chain cannot hash the bytes it never
// saw: the caller checks the digest (Fetch does it for its Sink).
//
// The reader has a Source() string method naming the source it reads
// from. It is not safe for concurrent use (one reader, one goroutine).
func (c *Chain) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	r, err := c.newTransfer(ctx, digest, offset, -1)
	if err != nil {
		return nil, err
	}
	if offset == 0 {
		r.hash = sha256.New()
	}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

// Sink is where Chain.Fetch stores a blob: a cache writer, a partial
// download file. Fetch calls it from one goroutine.
type Sink interface {
	// Offset is how many bytes of the blob the sink holds: the transfer
	// starts (or resumes) there.
	Offset() int64
	// Write appends the blob's next bytes. An error is the sink's own (a
	// full disk): Fetch stops at once and returns it, blaming no source.
	Write(p []byte) (int, error)
	// Verify checks the whole blob once the size's bytes are written. An
	// error wrapping source.ErrDataLoss means the bytes are corrupt: Fetch blames
	// the sources that delivered them, calls Reset and fetches the blob
	// again from the next source. Any other error stops Fetch.
	Verify() error
	// Reset discards every byte the sink holds (Offset becomes 0).
	Reset() error
}

// SourceSink is a Sink that wants to know which source the bytes come
// from (to count them, or rate-limit them): From is called before the
// first Write of each source's transfer.
type SourceSink interface {
	Sink
	From(source.Source)
}

// Fetch stores the blob named by digest, size bytes long, into sink,
// resuming at sink.Offset(): sources are tried in order, a broken or
// stalled transfer resumes at its offset (the same source while it makes
// progress, then the next), a source that sends more than size bytes or
// whose bytes fail sink.Verify is blamed, and the blob is then fetched
// again from byte 0 from the next source. It returns the source that
// completed the blob. When no source could, the error is a
// *Error; an error of the sink itself or of ctx is returned as it
// is (wrapped).
func (c *Chain) Fetch(ctx context.Context, digest string, size int64, sink Sink) (source.Source, error) {
	if size < 0 {
		return nil, fmt.Errorf("blob %s: negative size %d: %w", digest, size, source.ErrInvalid)
	}
	off := sink.Offset()
	if off > size {
		if err := sink.Reset(); err != nil {
			return nil, err
		}
		off = 0
	}
	r, err := c.newTransfer(ctx, digest, off, size)
	if err != nil {
		return nil, err
	}
	r.sink = sink
	defer r.Close()
	if off == size && size > 0 {
		// Every byte is there (an interrupted run): check them.
		err := r.verifySink()
		if err == nil {
			return nil, nil
		}
		if !errors.Is(err, source.ErrDataLoss) {
			return nil, err
		}
		r.c.log.Warn("discarding a partial download that does not verify", "what", r.rel, "error", err.Error())
		if err := sink.Reset(); err != nil {
			return nil, err
		}
		r.off, r.start = 0, 0
	}
	buf := make([]byte, fetchBufSize)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := sink.Write(buf[:n]); err != nil {
				return nil, err
			}
		}
		if rerr == io.EOF {
			return r.last, nil
		}
		if rerr != nil {
			var se *sinkError
			if errors.As(rerr, &se) {
				return nil, se.err
			}
			return nil, rerr
		}
	}
}

// sinkError carries an error of the Sink through the transfer unchanged.
type sinkError struct{ err error }

func (e *sinkError) Error() string { return e.err.Error() }
func (e *sinkError) Unwrap() error { return e.err }

// transfer is one blob read through the chain: the reader of Blob, and
// the engine of Fetch.
type transfer struct {
	c      *Chain
	ctx    context.Context
	digest string
	rel    string
	size   int64 // -1: unknown (Blob); Fetch knows it
	start  int64 // the offset asked for
	off    int64 // blob offset of the next byte
	hash   hash.Hash
	sink   Sink // Fetch's
	order  []pick
	pos    int // index in order of the current source

	resumes   int   // resumes of the current source
	sinceOpen int64 // bytes delivered since the current source was opened
	atEOF     bool  // the current source ended; finish on the next Read
	total     int   // breaks, all sources
	cur       io.ReadCloser
	curCtx    context.Context // the current transfer's context
	cancel    context.CancelCauseFunc
	timer     *time.Timer
	told      bool            // the sink was told the current source
	delivered map[string]bool // sources (names) that delivered bytes
	retracted map[string]bool // sources that took back what they sent (see broke)
	last      source.Source   // the source that completed the blob
	fe        *Error          // why sources were left
	err       error           // sticky: io.EOF, or the final error
}

func (c *Chain) newTransfer(ctx context.Context, digest string, offset, size int64) (*transfer, error) {
	rel, err := source.BlobPath(digest)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("blob %s: negative offset %d: %w", digest, offset, source.ErrInvalid)
	}
	return &transfer{c: c, ctx: ctx, digest: digest, rel: rel, size: size, start: offset, off: offset,
		order: c.order(), delivered: map[string]bool{}, fe: &Error{What: rel, hint: c.opts.Hint}}, nil
}

// source.Source names the source the reader reads from (or read last).
func (r *transfer) Source() string {
	if r.pos < len(r.order) {
		return r.order[r.pos].name
	}
	return ""
}

func (r *transfer) src() source.Source { return r.c.srcs[r.order[r.pos].i] }

// open opens the current source at r.off, moving down the order until one
// answers within ConnectTimeout.
func (r *transfer) open() error {
	d := r.c.opts.ConnectTimeout
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
			r.cur, r.curCtx, r.cancel, r.timer, r.told, r.sinceOpen = rc, actx, cancel, timer, false, 0
			return nil
		}
		stalled := context.Cause(actx) == errStalled
		cancel(nil)
		if r.ctx.Err() != nil {
			return fmt.Errorf("%s: %w while asking %s: %w", r.rel, source.ErrUnavailable, s, context.Cause(r.ctx))
		}
		if errors.Is(err, source.ErrInvalid) {
			return err
		}
		if stalled {
			err = fmt.Errorf("%s: %s: %w: no answer within %v", s, r.rel, source.ErrUnavailable, d)
		}
		if r.off > 0 && r.size < 0 && errors.Is(err, source.ErrDataLoss) && strings.Contains(err.Error(), "past the end") {
			err = fmt.Errorf("%w: %w", errPastEnd, err)
		}
		r.leave(err)
	}
	return r.fe.done()
}

// leave moves to the next source, logging why and recording the failure.
func (r *transfer) leave(err error) {
	r.c.skipped(r.order[r.pos], r.rel, fmt.Errorf("%w (at byte %d)", err, r.off), r.c.nextName(r.order, r.pos))
	r.fe.add(r.order[r.pos].name, err)
	r.pos++
	r.resumes = 0
}

// drop releases the current transfer.
func (r *transfer) drop() {
	if r.cur == nil {
		return
	}
	r.timer.Stop()
	r.cur.Close()
	r.cancel(nil)
	r.cur = nil
}

func (r *transfer) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.ctx.Err() != nil {
			// Sources that read local files do not watch ctx.
			r.drop()
			r.err = fmt.Errorf("%s: %w at byte %d: %w", r.rel, source.ErrUnavailable, r.off, context.Cause(r.ctx))
			return 0, r.err
		}
		if r.atEOF {
			// The source's last bytes were returned by the previous Read
			// (and are in the sink): check the whole now.
			r.atEOF = false
			if err := r.finish(); err != nil {
				return 0, err
			}
			continue
		}
		if r.cur == nil {
			if err := r.open(); err != nil {
				r.err = err
				return 0, err
			}
		}
		if r.sink != nil && !r.told {
			r.told = true
			if ss, ok := r.sink.(SourceSink); ok {
				ss.From(r.src())
			}
		}
		if r.size >= 0 && int64(len(p)) > r.size-r.off+1 {
			// One byte more than is left shows a source that sends too
			// much without reading it all.
			p = p[:r.size-r.off+1]
		}
		// Any silence of StallTimeout while the caller waits for bytes
		// cancels the transfer.
		r.timer.Reset(r.c.opts.StallTimeout)
		n, err := r.cur.Read(p)
		r.timer.Stop()
		if r.size >= 0 && r.off+int64(n) > r.size {
			r.corrupt(fmt.Errorf("%w: more than the blob's %d bytes", source.ErrDataLoss, r.size))
			continue
		}
		if n > 0 {
			if r.hash != nil {
				r.hash.Write(p[:n])
			}
			r.off += int64(n)
			r.sinceOpen += int64(n)
			r.delivered[r.order[r.pos].name] = true
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && r.size >= 0 && r.off < r.size:
			err = fmt.Errorf("%s: %s: stream ended at byte %d of %d: %w", r.src(), r.rel, r.off, r.size, io.ErrUnexpectedEOF)
		case err == io.EOF && n > 0:
			r.atEOF = true
			return n, nil
		case err == io.EOF:
			if err := r.finish(); err != nil {
				return 0, err
			}
			continue
		}
		r.broke(err)
		if n > 0 || r.err != nil {
			return n, r.err
		}
	}
}

// broke handles a transfer that failed mid-way: the caller's end stops
// everything; a source that went silent, or that holds only part of the
// blob, is left at once; otherwise the same source is asked again from
// r.off while each attempt makes progress, up to MaxResumes times, then
// the next.
func (r *transfer) broke(err error) {
	s := r.src()
	stalled := context.Cause(r.curCtx) == errStalled
	progressed := r.sinceOpen > 0
	r.drop()
	if r.ctx.Err() != nil {
		r.err = fmt.Errorf("%s: %w at byte %d from %s: %w", r.rel, source.ErrUnavailable, r.off, s, context.Cause(r.ctx))
		return
	}
	if errors.Is(err, source.ErrInvalid) {
		r.err = err
		return
	}
	r.total++
	if stalled {
		r.leave(fmt.Errorf("%s: %s: %w: no data for %v", s, r.rel, source.ErrUnavailable, r.c.opts.StallTimeout))
		return
	}
	if errors.Is(err, source.ErrDataLoss) && r.sink != nil && r.off > 0 {
		// The source itself says the bytes it sent were corrupt: a DP
		// relaying a bad peer's bytes, which discards them and fetches
		// the blob again. Start over from byte 0 at the same source, once;
		// a second time, the source is blamed like any corrupt one.
		if r.retracted[s.String()] {
			r.corrupt(err)
			return
		}
		if r.retracted == nil {
			r.retracted = map[string]bool{}
		}
		r.retracted[s.String()] = true
		r.c.log.Warn("update source took back the bytes it sent; reading the blob again from the start",
			"what", r.rel, "source", s.String(), "offset", r.off, "error", err.Error())
		if rerr := r.sink.Reset(); rerr != nil {
			r.err = &sinkError{rerr}
			return
		}
		r.off, r.start, r.delivered = 0, 0, map[string]bool{}
		r.resumes = 0
		return
	}
	if progressed && !errors.Is(err, source.ErrPartial) && r.resumes < MaxResumes {
		r.resumes++
		r.c.log.Warn("update source transfer broke, resuming from the same source",
			"what", r.rel, "source", s.String(), "offset", r.off, "error", err.Error())
		return
	}
	r.leave(err)
}

// corrupt handles bytes that cannot be the blob (cause, wrapping
// source.ErrDataLoss, says why): the
// sources that delivered them are blamed and named in the error, and the
// transfer starts over from byte 0 at the next source (Fetch), or ends
// with the error (Blob).
func (r *transfer) corrupt(cause error) {
	r.drop()
	var blamed []string
	for name := range r.delivered {
		r.c.health.failNow(name)
		blamed = append(blamed, name)
	}
	sort.Strings(blamed)
	from := strings.Join(blamed, ", ")
	err := fmt.Errorf("%s: %w (from %s)", r.rel, cause, from)
	r.c.log.Warn("update source delivered a corrupt blob", "what", r.rel, "sources", from, "error", cause.Error())
	if r.sink == nil {
		r.err = fmt.Errorf("%w: discard them and fetch the blob again from the start", err)
		return
	}
	if rerr := r.sink.Reset(); rerr != nil {
		r.err = &sinkError{rerr}
		return
	}
	r.fe.add(r.order[r.pos].name, err)
	r.off, r.start, r.delivered = 0, 0, map[string]bool{}
	r.pos++
	r.resumes = 0
	if r.pos >= len(r.order) {
		r.err = r.fe.done()
	}
}

// finish checks the blob at its end: the hash of a Blob read from 0, the
// Sink's Verify for Fetch.
func (r *transfer) finish() error {
	s := r.src()
	r.drop()
	if r.hash != nil {
		if sum := hex.EncodeToString(r.hash.Sum(nil)); sum != r.digest {
			r.corrupt(fmt.Errorf("%w: the %d bytes received have SHA-256 %s", source.ErrDataLoss, r.off, sum))
			return r.err
		}
	}
	if r.sink != nil {
		if err := r.verifySink(); err != nil {
			if !errors.Is(err, source.ErrDataLoss) {
				r.err = &sinkError{err}
				return r.err
			}
			r.corrupt(err)
			if r.err != nil {
				return r.err
			}
			return nil // the next Read starts over at the next source
		}
	}
	r.c.health.succeed(r.order[r.pos].name)
	r.last = s
	r.err = io.EOF
	level := slog.LevelDebug
	if len(r.fe.Failures) > 0 || r.total > 0 {
		level = slog.LevelInfo
	}
	r.c.log.Log(r.ctx, level, "update source served", "what", r.rel, "source", s.String(),
		"skipped", len(r.fe.Failures), "resumes", r.total, "bytes", r.off-r.start, "verified", r.hash != nil || r.sink != nil)
	return io.EOF
}

func (r *transfer) verifySink() error { return r.sink.Verify() }

// Close implements io.Closer: it ends the transfer in progress.
func (r *transfer) Close() error {
	r.drop()
	if r.err == nil {
		r.err = errors.New("read after Close")
	}
	return nil
}

// Health remembers which sources failed, by name (source.Source.String()), and
// until when each is in backoff. A Chain has its own unless
// Options.Health gives one to share. Safe for concurrent use; it
// remembers at most maxHealth sources, forgetting first those not in
// backoff, so it stays small. Status tells operators how each source fares.
type Health struct {
	backoff Backoff

	mu sync.Mutex // guards m
	m  map[string]*health
}

// health is one source's backoff state.
type health struct {
	failures int       // consecutive failures
	until    time.Time // tried only after the others until then
	gen      uint64    // changes with every recorded failure or success
	errors   uint64    // every failure blamed on the source, for operators
	failing  time.Time // the first of the consecutive failures; zero after a success
	ok       time.Time // the last success
}

// SourceStatus is what a Health knows of one source, for operators: the
// metrics and status page of a DP.
type SourceStatus struct {
	// Errors counts every failure blamed on the source (refused
	// connections, timeouts, stalls, corrupt or unverifiable content;
	// not "not found").
	Errors uint64
	// FailingSince is the first of the source's consecutive failures; zero
	// when its last attempt succeeded, or it never failed.
	FailingSince time.Time
	// LastOK is when the source last served a document or a whole blob;
	// zero if never.
	LastOK time.Time
}

// Status returns what h knows of the named source (the zero SourceStatus for
// one it never saw).
func (h *Health) Status(name string) SourceStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.m[name]
	if s == nil {
		return SourceStatus{}
	}
	return SourceStatus{Errors: s.errors, FailingSince: s.failing, LastOK: s.ok}
}

// maxHealth bounds how many failing sources a Health remembers.
const maxHealth = 4096

// NewHealth returns an empty Health with the given backoff (zero fields
// take the defaults).
func NewHealth(b Backoff) *Health {
	return &Health{backoff: b.withDefaults(), m: map[string]*health{}}
}

// states returns each named source's state (the zero state for a source
// never failed).
func (h *Health) states(names []string) []health {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]health, len(names))
	for i, n := range names {
		if s := h.m[n]; s != nil {
			out[i] = *s
		}
	}
	return out
}

// fail records a failure of the named source seen by an attempt that
// started at generation gen; failures of attempts that started before the
// last recorded change count once (a burst of concurrent requests to a
// dead source is one failure). It returns the backoff.
func (h *Health) fail(name string, gen uint64) time.Duration { return h.record(name, gen, false) }

// failNow records a failure of the named source whenever the attempt
// started (corrupt content is its fault however many saw it).
func (h *Health) failNow(name string) { h.record(name, 0, true) }

func (h *Health) record(name string, gen uint64, always bool) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.m[name]
	if s == nil {
		if len(h.m) >= maxHealth {
			h.forgetLocked()
		}
		s = &health{}
		h.m[name] = s
	}
	s.errors++
	if s.failing.IsZero() {
		s.failing = time.Now()
	}
	if always || gen == s.gen {
		s.failures++
		s.gen++
		d := h.backoff.Initial
		for n := 1; n < s.failures && d < h.backoff.Max; n++ {
			d *= 2
		}
		s.until = time.Now().Add(min(d, h.backoff.Max))
	}
	return time.Until(s.until).Round(time.Millisecond)
}

// succeed clears the named source's backoff.
func (h *Health) succeed(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.m[name]
	if s == nil {
		if len(h.m) >= maxHealth {
			h.forgetLocked()
		}
		s = &health{}
		h.m[name] = s
	}
	s.failures, s.until, s.failing, s.ok = 0, time.Time{}, time.Time{}, time.Now()
	s.gen++
}

// Backoff returns until when the named source is in backoff (the zero
// time when it is not).
func (h *Health) Backoff(name string) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.m[name]; s != nil && time.Now().Before(s.until) {
		return s.until
	}
	return time.Time{}
}

// forgetLocked drops the sources whose backoff has ended, or, if none,
// the one that ends soonest.
func (h *Health) forgetLocked() {
	now := time.Now()
	var soonest string
	for n, s := range h.m {
		if !now.Before(s.until) {
			delete(h.m, n)
		} else if soonest == "" || s.until.Before(h.m[soonest].until) {
			soonest = n
		}
	}
	if len(h.m) >= maxHealth {
		delete(h.m, soonest)
	}
}

// Failure is why one source could not serve.
type Failure struct {
	Source string // the source's String()
	Err    error
}

// Error reports that no source served: each source tried, in
// order, and why it failed. errors.Is(err, source.ErrNotFound) holds only when
// every source said not found; otherwise source.ErrUnavailable holds, and so does
// any sentinel that a source's error wraps (source.ErrDataLoss, a signature
// error, a lower serial…).
type Error struct {
	// What was asked: a repository path ("av/latest.json",
	// "blobs/sha256/…"), or what the caller set.
	What     string
	Failures []Failure
	// Advice, when set, says what the user can do; it ends the message
	// (for example "check the product name" when every source said not
	// found).
	Advice string
	hint   func(error) string
}

func (e *Error) add(src string, err error) {
	e.Failures = append(e.Failures, Failure{Source: src, Err: err})
}

// done returns e as the error of a failover that ended.
func (e *Error) done() error { return e }

// notFound reports whether every source said not found.
func (e *Error) notFound() bool {
	for _, f := range e.Failures {
		if !errors.Is(f.Err, source.ErrNotFound) {
			return false
		}
	}
	return len(e.Failures) > 0
}

// Error says on one line what was asked, from which sources, and why it
// failed, each cause once: when every source failed alike ("not found",
// the same refusal) the cause is said once and the sources are listed
// with it; otherwise each source is named with its own cause. Advice, when
// set, ends the line.
func (e *Error) Error() string {
	if len(e.Failures) == 0 {
		return fmt.Sprintf("%s: no update source configured", e.What)
	}
	var b strings.Builder
	n := len(e.Failures)
	srcs := make([]string, n)
	reasons := make([]string, n)
	same := true
	for i, f := range e.Failures {
		srcs[i] = f.Source
		reasons[i] = e.reason(f)
		same = same && reasons[i] == reasons[0]
	}
	switch {
	case e.notFound() && n == 1:
		fmt.Fprintf(&b, "%s: not found on %s", e.What, srcs[0])
	case e.notFound():
		fmt.Fprintf(&b, "%s: not found on any of %d sources (%s)", e.What, n, strings.Join(srcs, ", "))
	case n == 1:
		fmt.Fprintf(&b, "%s: %s: %s", e.What, srcs[0], reasons[0])
	case same:
		fmt.Fprintf(&b, "%s: every source failed alike (%s): %s", e.What, strings.Join(srcs, ", "), reasons[0])
	default:
		fmt.Fprintf(&b, "%s: every source failed: ", e.What)
		for i := range e.Failures {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(srcs[i] + ": " + reasons[i])
		}
	}
	if h := e.hintOnce(); h != "" {
		b.WriteString("; " + h)
	}
	if e.Advice != "" {
		b.WriteString("; " + e.Advice)
	}
	return b.String()
}

// reason is why f's source failed, without what every failure repeats:
// the source's name, what was asked, and a leading "not found" or
// "source unavailable" (the headline says that every source failed).
func (e *Error) reason(f Failure) string {
	msg := f.Err.Error()
	msg = strings.TrimPrefix(msg, f.Source+": ")
	msg = strings.TrimPrefix(msg, e.What+": ")
	for _, s := range []error{source.ErrUnavailable, source.ErrNotFound} {
		if errors.Is(f.Err, s) {
			msg = strings.TrimPrefix(msg, s.Error()+": ")
		}
	}
	// "dial tcp 10.0.0.1:80: connect: connection refused": the source's
	// name already says where.
	msg = dialPrefix.ReplaceAllString(msg, "")
	if msg == "" {
		msg = f.Err.Error()
	}
	return msg
}

// dialPrefix matches what net.OpError puts before the cause of a failed
// dial: "dial tcp 10.0.0.1:80: connect: ".
var dialPrefix = regexp.MustCompile(`\bdial (tcp|udp|unix)[46]? \S+: (connect: )?`)

// hintOnce is the advice of Options.Hint for the failures, each distinct
// hint once, in order ("" when every source said not found: Advice says
// what to do then).
func (e *Error) hintOnce() string {
	if e.hint == nil || e.notFound() {
		return ""
	}
	var hints []string
	for _, f := range e.Failures {
		if h := e.hint(f.Err); h != "" && !slices.Contains(hints, h) {
			hints = append(hints, h)
		}
	}
	return strings.Join(hints, "; ")
}

// Unwrap returns ErrAllFailed, and source.ErrNotFound when every source said not
// found, else source.ErrUnavailable and every failure that is not a mere "not
// found".
func (e *Error) Unwrap() []error {
	if e.notFound() {
		return []error{ErrAllFailed, source.ErrNotFound}
	}
	out := []error{ErrAllFailed, source.ErrUnavailable}
	for _, f := range e.Failures {
		if !errors.Is(f.Err, source.ErrNotFound) {
			out = append(out, f.Err)
		}
	}
	return out
}

// Order names the sources in the order the chain would try them now:
// those not in backoff as configured, then those in backoff, soonest
// retry first.
func (c *Chain) Order() []string {
	var out []string
	for _, p := range c.order() {
		out = append(out, p.name)
	}
	return out
}
