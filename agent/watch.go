package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/dpcache/dpcache/source"
)

// Watcher is a source that announces new versions (a DP: source.GRPC).
type Watcher interface {
	WatchLatest(ctx context.Context, product string) (<-chan source.Signed, func() error, error)
	String() string
}

// WatchConfig tunes Watch.
type WatchConfig struct {
	// Jitter is the upper bound of the random delay before each update, so
	// that the endpoints of a site do not all start at once. Default 0.
	Jitter time.Duration
	// Retry is the first delay before reconnecting a broken watch; it
	// doubles up to a minute. Default 1s.
	Retry time.Duration
	// Result, when set, receives the outcome of every update run.
	Result func(*Result, error)
}

// Watch keeps the product current: it updates whenever w announces a
// version newer than the one installed (the first announcement is the DP's
// current latest), after a random delay within Jitter. A broken watch is
// re-established with backoff. It returns nil when ctx ends. Announcements
// are verified before they are acted on; an update that fails is retried at
// the next announcement or reconnection.
//
// A re-signed latest.json (`dpcache resign`: the installed version under a
// higher serial, with a new expiry) is announced too; it starts one run,
// which installs nothing and reports the endpoint up to date (no longer
// stale) to the DP. The serial of each successful run is remembered, so
// that the DP's re-announcement of it on a reconnection starts no run.
func Watch(ctx context.Context, cfg Config, w Watcher, wc WatchConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if wc.Retry <= 0 {
		wc.Retry = time.Second
	}
	log := cfg.logger().With("component", "agent", "product", cfg.Product, "watch", w.String())
	retry := wc.Retry
	var acted uint64 // the highest serial a successful run acted on
	for ctx.Err() == nil {
		updates, wait, err := w.WatchLatest(ctx, cfg.Product)
		if err == nil {
			for s := range updates {
				retry = wc.Retry
				l, err := cfg.Trust.VerifyLatest(s.Data, s.Signature)
				if err != nil {
					log.Warn("ignoring an announcement that does not verify", "err", err)
					continue
				}
				if m, err := Installed(cfg.Dir, cfg.Product); err == nil && m.Serial >= l.Serial || l.Serial <= acted {
					continue
				}
				if err := sleepJitter(ctx, wc.Jitter); err != nil {
					break
				}
				log.Info("new version announced; updating", "version", l.Version, "serial", l.Serial)
				res, err := Update(ctx, cfg)
				if err == nil {
					acted = max(acted, res.Serial)
				}
				if wc.Result != nil && ctx.Err() == nil {
					wc.Result(res, err)
				}
			}
			err = wait()
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, source.ErrInvalid) {
			return fmt.Errorf("agent: watch %s: %w", cfg.Product, err)
		}
		log.Warn("watch interrupted; reconnecting", "in", retry, "err", err)
		if err := sleep(ctx, retry); err != nil {
			return nil
		}
		retry = min(2*retry, time.Minute)
	}
	return nil
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
