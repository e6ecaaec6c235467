package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// The download task ("download updates to the repository"): the products
// of Config.Products are kept current before any endpoint asks, every
// Config.PrefetchInterval (plus up to 10% at random), inside
// Config.UpstreamWindow when one is set. AdminService.Prefetch runs it now
// for one product and streams the progress of the version completion.

// Window is a daily period, in local time, during which the download task
// may start fetching from upstream. The zero Window is always open.
type Window struct {
	// From and To are offsets from midnight, [0, 24h). From > To crosses
	// midnight ("22:00-06:00"). From == To only in the zero Window.
	From, To time.Duration
}

// ParseWindow parses "HH:MM-HH:MM" (local time; the end is excluded; an
// end before the start crosses midnight, as in "22:00-06:00"). "" is the
// zero Window (always open).
func ParseWindow(s string) (Window, error) {
	if s == "" {
		return Window{}, nil
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Window{}, fmt.Errorf("upstream window %q: want HH:MM-HH:MM, e.g. 22:00-06:00: %w", s, ErrInvalid)
	}
	from, err := parseClock(a)
	if err != nil {
		return Window{}, fmt.Errorf("upstream window %q: start: %w", s, err)
	}
	to, err := parseClock(b)
	if err != nil {
		return Window{}, fmt.Errorf("upstream window %q: end: %w", s, err)
	}
	if from == to {
		return Window{}, fmt.Errorf("upstream window %q: starts and ends at the same time (omit it to allow fetches at any time): %w", s, ErrInvalid)
	}
	return Window{From: from, To: to}, nil
}

// parseClock parses "HH:MM" (00:00 to 23:59; "24:00" is midnight).
func parseClock(s string) (time.Duration, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("%q is not a time of day HH:MM: %w", s, ErrInvalid)
	}
	return (time.Duration(hh)*time.Hour + time.Duration(mm)*time.Minute) % (24 * time.Hour), nil
}

// IsZero reports whether w is the zero Window (always open).
func (w Window) IsZero() bool { return w.From == w.To }

// String returns w as ParseWindow reads it ("" for the zero Window).
func (w Window) String() string {
	if w.IsZero() {
		return ""
	}
	f := func(d time.Duration) string { return fmt.Sprintf("%02d:%02d", int(d.Hours()), int(d.Minutes())%60) }
	return f(w.From) + "-" + f(w.To)
}

// sinceMidnight is t's wall-clock time of day in its location.
func sinceMidnight(t time.Time) time.Duration {
	h, m, s := t.Clock()
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second + time.Duration(t.Nanosecond())
}

// Contains reports whether t (in its own location) is inside w.
func (w Window) Contains(t time.Time) bool {
	if w.IsZero() {
		return true
	}
	c := sinceMidnight(t)
	if w.From < w.To {
		return w.From <= c && c < w.To
	}
	return c >= w.From || c < w.To
}

// untilOpen returns how long from t until w opens; 0 when it is open.
func (w Window) untilOpen(t time.Time) time.Duration {
	if w.Contains(t) {
		return 0
	}
	d := w.From - sinceMidnight(t)
	if d < 0 {
		d += 24 * time.Hour
	}
	return d
}

// newUpstreamLimiter returns the token bucket of Config.UpstreamRate, or
// nil when unlimited. Its burst (the largest read taken at once) is an
// eighth of a second's budget, between 4 KiB and 256 KiB.
func newUpstreamLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	burst := int(min(max(bytesPerSecond/8, 4<<10), 256<<10))
	return rate.NewLimiter(rate.Limit(bytesPerSecond), burst)
}

// jittered lengthens d by a random 0-10%, so that the DPs of a site do not
// all ask upstream at the same moment.
func jittered(d time.Duration) time.Duration {
	return d + rand.N(d/10+1)
}

// joinWait bounds how long the download task's first run waits for the
// DP to join its cluster: before that, it would not know the site's owners
// and would fetch everything itself.
const joinWait = 10 * time.Second

// prefetchLoop is the download task: at start (once the DP has joined its
// cluster) and every Config.PrefetchInterval, it checks upstream for a
// newer latest of each configured product and completes it. Outside
// Config.UpstreamWindow it starts nothing and waits for the window.
func (n *Node) prefetchLoop(ctx context.Context) {
	if len(n.cfg.Products) == 0 {
		return
	}
	n.waitJoined(ctx, joinWait)
	w := n.cfg.UpstreamWindow
	for {
		wait := jittered(n.cfg.PrefetchInterval)
		now := time.Now()
		if w.Contains(now) {
			for _, p := range n.cfg.Products {
				if ctx.Err() != nil {
					return
				}
				n.refresh(ctx, p)
			}
		} else {
			// A second past the opening, to be inside it.
			opens := w.untilOpen(now) + time.Second
			wait = min(wait, opens)
			n.log.Info("download task: outside the upstream window; waiting", "window", w.String(), "next_check_in", wait.Round(time.Second))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// waitJoined returns once the DP sees another member of its cluster, or
// after max, or at once when it has no cluster to join.
func (n *Node) waitJoined(ctx context.Context, max time.Duration) {
	if n.gossip == nil || len(n.cfg.Join) == 0 {
		return
	}
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	for {
		changed := n.gossip.Changed()
		if len(n.gossip.Live("")) > 1 {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// versionJob is one version completion in flight (startVersion). Its
// progress is read by AdminService.Prefetch.
type versionJob struct {
	product, version string
	serial           uint64
	done             chan struct{} // closed when the job ends; err then says how
	err              error         // written before done is closed

	mu    sync.Mutex      // protects the fields below
	blobs []manifest.File // the version's blobs in fetch order; nil until its manifest is known
	whole map[string]bool // blobs held whole, by digest
}

func newVersionJob(product string, l *manifest.Latest) *versionJob {
	return &versionJob{product: product, version: l.Version, serial: l.Serial, done: make(chan struct{}), whole: map[string]bool{}}
}

// setBlobs records the version's blobs and which of them the cache
// already holds whole.
func (j *versionJob) setBlobs(c *cache.Cache, blobs []manifest.File) {
	whole := make(map[string]bool, len(blobs))
	for _, f := range blobs {
		if _, err := c.Stat(f.SHA256); err == nil {
			whole[f.SHA256] = true
		}
	}
	j.mu.Lock()
	j.blobs = blobs
	for d := range whole {
		j.whole[d] = true
	}
	j.mu.Unlock()
}

func (j *versionJob) blobDone(digest string) {
	j.mu.Lock()
	j.whole[digest] = true
	j.mu.Unlock()
}

func (j *versionJob) finish(err error) {
	j.err = err
	close(j.done)
}

// missing returns the blobs of the job not held whole yet.
func (j *versionJob) missing() []manifest.File {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []manifest.File
	for _, f := range j.blobs {
		if !j.whole[f.SHA256] {
			out = append(out, f)
		}
	}
	return out
}

// fetchOrder returns m's distinct blobs with those of databases files
// first (when the upstream budget is short, antivirus bases matter most),
// then those of modules, each group in manifest order.
func fetchOrder(m *manifest.Manifest) (databases, modules []manifest.File) {
	db := map[string]bool{}
	for _, f := range m.Files {
		if f.Component == manifest.ComponentDatabases {
			db[f.SHA256] = true
		}
	}
	for _, f := range m.Blobs() {
		if db[f.SHA256] {
			databases = append(databases, f)
		} else {
			modules = append(modules, f)
		}
	}
	return databases, modules
}

// progress describes j now: blobs and bytes held whole, plus the bytes
// received so far of the blobs being fetched.
func (n *Node) progress(j *versionJob) *pb.PrefetchResponse {
	j.mu.Lock()
	blobs := slices.Clone(j.blobs)
	whole := make(map[string]bool, len(j.whole))
	for d := range j.whole {
		whole[d] = true
	}
	j.mu.Unlock()
	p := &pb.PrefetchResponse{Product: j.product, Version: j.version, Serial: j.serial, BlobsTotal: uint64(len(blobs))}
	for _, f := range blobs {
		p.BytesTotal += uint64(f.Size)
		if whole[f.SHA256] {
			p.BlobsDone++
			p.BytesDone += uint64(f.Size)
		} else if got, ok := n.fetcher.Received(f.SHA256); ok {
			p.BytesDone += uint64(got)
		}
	}
	return p
}

// prefetchNow runs the download task for product now, whatever the
// upstream window: it asks upstream for the latest and starts completing
// it when it is newer than the version held. It returns the completion,
// or nil with the version held when that is already upstream's latest.
func (n *Node) prefetchNow(ctx context.Context, product string) (*versionJob, cache.Version, error) {
	if err := manifest.ValidName(product); err != nil {
		return nil, cache.Version{}, fmt.Errorf("product %q: %w: %v", product, ErrInvalid, err)
	}
	n.addProduct(product)
	ul, err := n.upstreamLatest(ctx, product, 0)
	if err != nil {
		return nil, cache.Version{}, err
	}
	held, err := n.cache.LatestVersion(product)
	switch {
	case err == nil && held.Serial >= ul.latest.Serial:
		if held.Serial > ul.latest.Serial {
			n.log.Warn("prefetch: upstream offers a lower serial than held; keeping what is held", "product", product, "upstream_serial", ul.latest.Serial, "held_serial", held.Serial)
		}
		return nil, held, nil
	case err != nil && !errors.Is(err, cache.ErrNotFound):
		return nil, cache.Version{}, fmt.Errorf("product %s: %w", product, err)
	}
	j := n.startVersion(product, ul)
	if j == nil {
		return nil, cache.Version{}, fmt.Errorf("product %s: %w: the DP is shutting down", product, ErrUnavailable)
	}
	return j, cache.Version{}, nil
}

// prefetchTick is how often Prefetch looks at a completion's progress; a
// message is sent only when it changed.
const prefetchTick = 200 * time.Millisecond

// Prefetch runs the download task for a product now and streams the
// progress of its newest version until it is held whole (done set).
func (s *adminServer) Prefetch(req *pb.PrefetchRequest, stream grpc.ServerStreamingServer[pb.PrefetchResponse]) error {
	n := s.n
	ctx := stream.Context()
	j, held, err := n.prefetchNow(ctx, req.GetProduct())
	if err != nil {
		return toStatus(err)
	}
	if j == nil {
		return stream.Send(&pb.PrefetchResponse{
			Product: held.Product, Version: held.Version, Serial: held.Serial,
			BlobsTotal: uint64(len(held.Blobs)), BlobsDone: uint64(len(held.Blobs)),
			BytesTotal: uint64(held.Size), BytesDone: uint64(held.Size), Done: true,
		})
	}
	tick := time.NewTicker(prefetchTick)
	defer tick.Stop()
	var last *pb.PrefetchResponse
	for {
		p := n.progress(j)
		if !proto.Equal(p, last) {
			if err := stream.Send(p); err != nil {
				return err
			}
			last = p
		}
		select {
		case <-j.done:
			if j.err != nil {
				return toStatus(j.err)
			}
			v, err := n.cache.LatestVersion(j.product)
			if err != nil || v.Serial < j.serial {
				return status.Errorf(codes.Unavailable, "%s %s: the completion ended but the version is not held whole (%v); run prefetch again", j.product, j.version, err)
			}
			p := n.progress(j)
			if p.BlobsTotal == 0 { // completed by an earlier job
				p.BlobsTotal, p.BlobsDone = uint64(len(v.Blobs)), uint64(len(v.Blobs))
				p.BytesTotal, p.BytesDone = uint64(v.Size), uint64(v.Size)
			}
			p.Done = true
			return stream.Send(p)
		case <-tick.C:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
