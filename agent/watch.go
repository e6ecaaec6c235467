package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/dpcache/dpcache/source"
)

// Watcher is a source that announces new versions (a DP: source.GRPC).
type Watcher interface {
	// WatchLatest streams the signed latest.json of each version the DP
	// announces, its current one first, until ctx ends or the stream
	// breaks; wait then says why (nil when ctx ended).
	WatchLatest(ctx context.Context, product string) (<-chan source.Signed, func() error, error)
	String() string
}

// WatchConfig tunes Watch.
type WatchConfig struct {
	// Jitter is the upper bound of the random delay before each update, so
	// that the endpoints of a site do not all start at once. Default 0.
	Jitter time.Duration
	// Retry is the delay before watching again once every DP failed in
	// turn; it doubles up to a minute. Default 1s.
	Retry time.Duration
	// Poll is the fallback to push: this often (plus a random 0-10%) the
	// watcher updates from Config.Sources even without an announcement,
	// and goes back to the first DP when it watches another. Default 10
	// minutes.
	Poll time.Duration
	// Result, when set, receives the outcome of every update run that an
	// announcement started, and of every poll that installed something.
	// It is called from Watch's goroutine.
	Result func(*Result, error)
	// Discover, when set, asks again which sources to use (`update
	// --watch --discover`: the DPs of the site, which change as DPs join
	// and leave). Watch calls it at every poll and whenever every DP it
	// watches failed in turn; what it returns replaces Config.Sources and
	// the DPs watched. On an error (or no DP among the sources) Watch keeps
	// the sources it has. It is called from Watch's goroutine, which then
	// uses none of the sources it replaced: the function owns them.
	Discover func(context.Context) ([]source.Source, error)
}

// discoverTimeout bounds one WatchConfig.Discover call.
const discoverTimeout = 30 * time.Second

// DefaultPoll is WatchConfig.Poll's default.
const DefaultPoll = 10 * time.Minute

// errBackToFirst ends the watch of a DP other than the first when the
// poll comes: the first (the nearest) may be back.
var errBackToFirst = errors.New("back to the first DP")

// Watch keeps the product current. It watches the first source of
// cfg.Sources that announces versions (a DP; see Watcher) and updates
// whenever it announces a version newer than the one installed (the first
// announcement is the DP's current latest), after a random delay within
// Jitter. When that DP's watch breaks or cannot start (the DP is down, or
// frozen and found dead by keepalive), it moves to the next DP of
// cfg.Sources, in order; once every DP failed in turn it waits Retry
// (doubling up to a minute) and starts again from the first. Every Poll it
// also updates from cfg.Sources (in order, failing over), in case an
// announcement was missed, and returns to the first DP. Announcements are
// verified before they are acted on; an update that fails is retried at
// the next announcement, switch or poll. A re-signed latest.json (`dpcache
// resign`: the installed version under a higher serial, with a new expiry)
// starts one run, which installs nothing and reports the endpoint up to
// date. While the product is held after
// a Rollback, Watch keeps running: each newer announcement is logged and
// answered by an Update that returns (and reports) StatusHeld. Watch
// returns nil when ctx ends, and an error when no source announces
// versions.
func Watch(ctx context.Context, cfg Config, wc WatchConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ws, names := watchers(cfg.Sources)
	if len(ws) == 0 {
		return fmt.Errorf("watch %s: no source is a distribution point (give a grpc:// source): %w", cfg.Product, ErrInvalidConfig)
	}
	if wc.Retry <= 0 {
		wc.Retry = time.Second
	}
	if wc.Poll <= 0 {
		wc.Poll = DefaultPoll
	}
	s := &watchRun{cfg: cfg, wc: wc, ws: ws, log: cfg.logger()}
	s.log.Info("watching for new versions", "dps", names, "poll", wc.Poll, "jitter", wc.Jitter)
	s.poll = time.NewTimer(jittered(wc.Poll))
	defer s.poll.Stop()
	return s.run(ctx)
}

// watchers returns the sources of srcs that announce versions (DPs), and
// their names.
func watchers(srcs []source.Source) ([]Watcher, []string) {
	var ws []Watcher
	var names []string
	for _, s := range srcs {
		if w, ok := s.(Watcher); ok {
			ws = append(ws, w)
			names = append(names, w.String())
		}
	}
	return ws, names
}

// rediscover replaces the sources with those WatchConfig.Discover gives,
// if set; it reports whether the DPs watched changed.
func (s *watchRun) rediscover(ctx context.Context) bool {
	if s.wc.Discover == nil {
		return false
	}
	dctx, cancel := context.WithTimeout(ctx, discoverTimeout)
	defer cancel()
	srcs, err := s.wc.Discover(dctx)
	if err == nil && len(srcs) > 0 {
		ws, names := watchers(srcs)
		if len(ws) > 0 {
			changed := !slices.Equal(ws, s.ws)
			if changed {
				s.log.Info("the site's DPs changed; watching them", "dps", names)
			}
			s.cfg.Sources, s.ws = srcs, ws
			return changed
		}
		err = errors.New("it lists no DP")
	}
	if ctx.Err() == nil {
		s.log.Warn("could not ask which DPs to use; keeping the last list", "err", err)
	}
	return false
}

// watchRun is one Watch: the DPs it may watch, in order, and the poll
// timer. Only Watch's goroutine uses it.
type watchRun struct {
	cfg  Config
	wc   WatchConfig
	ws   []Watcher
	log  *slog.Logger
	poll *time.Timer
	// acted is the highest serial a successful run acted on: a DP
	// re-announces a re-signed latest.json (`dpcache resign`: the
	// installed version under a higher serial) at every reconnection,
	// and it must start one run, not one per reconnection.
	acted uint64
}

func (s *watchRun) run(ctx context.Context) error {
	i, failed, retry := 0, 0, s.wc.Retry
	for {
		if i >= len(s.ws) { // the DPs changed at a poll
			i = 0
		}
		w := s.ws[i]
		heard, err := s.watch(ctx, w, i > 0)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, source.ErrInvalid):
			return fmt.Errorf("watch %s on %s: %w", s.cfg.Product, w, err)
		case errors.Is(err, errBackToFirst):
			s.log.Info("back to the first DP", "from", w.String(), "to", s.ws[0].String())
			i, failed, retry = 0, 0, s.wc.Retry
			continue
		}
		if heard {
			failed, retry = 0, s.wc.Retry
		}
		failed++
		if failed < len(s.ws) {
			next := (i + 1) % len(s.ws)
			s.log.Warn("lost the DP's announcements; watching the next DP", "dp", w.String(), "next", s.ws[next].String(), "err", err)
			i = next
			continue
		}
		s.log.Warn("no DP announces versions; watching again from the first", "dp", w.String(), "in", retry, "err", err)
		if !s.sleep(ctx, retry) {
			return nil
		}
		s.rediscover(ctx) // the site may have other DPs now
		i, failed, retry = 0, 0, min(2*retry, time.Minute)
	}
}

// watch follows w's announcements until its stream breaks (heard says
// whether it announced anything), ctx ends, or the poll comes while w is
// not the first DP (notFirst): then errBackToFirst.
func (s *watchRun) watch(ctx context.Context, w Watcher, notFirst bool) (heard bool, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	updates, wait, err := w.WatchLatest(wctx, s.cfg.Product)
	if err != nil {
		return false, err
	}
	s.log.Info("watching a DP", "dp", w.String())
	for {
		select {
		case sig, ok := <-updates:
			if !ok {
				return heard, wait()
			}
			heard = true
			s.announced(ctx, w, sig)
		case <-s.poll.C:
			s.pollNow(ctx)
			if notFirst || s.ws[0] != w {
				cancel()
				_ = wait()
				return heard, errBackToFirst
			}
		case <-ctx.Done():
			cancel()
			_ = wait()
			return heard, ctx.Err()
		}
	}
}

// announced updates when sig, announced by w, names a version newer than
// the one installed.
func (s *watchRun) announced(ctx context.Context, w Watcher, sig source.Signed) {
	l, err := s.cfg.Trust.VerifyLatest(sig.Data, sig.Signature)
	if err != nil {
		s.log.Warn("ignoring an announcement that does not verify", "dp", w.String(), "err", err)
		return
	}
	if m, err := Installed(s.cfg.Dir, s.cfg.Product); err == nil && m.Serial >= l.Serial || l.Serial <= s.acted {
		return
	}
	if h, err := Held(s.cfg.Dir, s.cfg.Product); err == nil && h != nil {
		// Nothing to download: Update says held, and reports it.
		s.log.Info("held after a rollback; not updating until `dpcache unhold`", "held", h.Version,
			"announced", l.Version, "serial", l.Serial)
		res, err := Update(ctx, s.cfg)
		if s.wc.Result != nil && ctx.Err() == nil {
			s.wc.Result(res, err)
		}
		return
	}
	if sleepJitter(ctx, s.wc.Jitter) != nil {
		return
	}
	s.log.Info("new version announced; updating", "dp", w.String(), "version", l.Version, "serial", l.Serial)
	res, err := Update(ctx, s.cfg)
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		s.acted = max(s.acted, res.Serial)
	}
	if err != nil {
		s.log.Warn("update after an announcement failed; retrying at the next announcement or poll", "version", l.Version, "err", err)
	}
	if s.wc.Result != nil {
		s.wc.Result(res, err)
	}
}

// pollNow updates from the sources, as a fallback to announcements, and
// re-arms the poll timer. It reports a result only when it installed
// something.
func (s *watchRun) pollNow(ctx context.Context) {
	defer s.poll.Reset(jittered(s.wc.Poll))
	if sleepJitter(ctx, s.wc.Jitter) != nil {
		return
	}
	s.rediscover(ctx)
	res, err := Update(ctx, s.cfg)
	if err == nil {
		s.acted = max(s.acted, res.Serial)
	}
	switch {
	case ctx.Err() != nil:
	case err != nil:
		s.log.Warn("poll: update failed; retrying at the next announcement or poll", "err", err)
	case (res.Status == StatusUpdated || res.FilesChanged > 0) && s.wc.Result != nil:
		s.wc.Result(res, nil)
	}
}

// sleep waits d, or less when the poll comes (it polls then); false when
// ctx ended.
func (s *watchRun) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.poll.C:
		s.pollNow(ctx)
		return ctx.Err() == nil
	case <-ctx.Done():
		return false
	}
}

// jittered lengthens d by a random 0-10%.
func jittered(d time.Duration) time.Duration {
	return d + rand.N(d/10+1)
}

func sleepJitter(ctx context.Context, jitter time.Duration) error {
	if jitter <= 0 {
		return ctx.Err()
	}
	return sleep(ctx, rand.N(jitter))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
