package catalog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/dpcache/dpcache/node/internal/nodeerr"
)

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
		return Window{}, fmt.Errorf("upstream window %q: want HH:MM-HH:MM, e.g. 22:00-06:00: %w", s, nodeerr.ErrInvalid)
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
		return Window{}, fmt.Errorf("upstream window %q: starts and ends at the same time (omit it to allow fetches at any time): %w", s, nodeerr.ErrInvalid)
	}
	return Window{From: from, To: to}, nil
}

// parseClock parses "HH:MM" (00:00 to 23:59; "24:00" is midnight).
func parseClock(s string) (time.Duration, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(m) != 2 || hh < 0 || mm < 0 || mm > 59 || hh > 24 || (hh == 24 && mm != 0) {
		return 0, fmt.Errorf("%q is not a time of day HH:MM: %w", s, nodeerr.ErrInvalid)
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

// jittered lengthens d by a random 0-10%, so that the DPs of a site do not
// all ask upstream at the same moment.
func jittered(d time.Duration) time.Duration {
	return d + rand.N(d/10+1)
}

// sleep waits d, or until ctx ends (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// joinWait bounds how long the download task's first run waits for the
// DP to join its cluster: before that, it would not know the site's owners
// and would fetch everything itself.
const joinWait = 10 * time.Second

// productInterval is how often the download task refreshes
// Config.Products: Config.PrefetchInterval when set (the deprecated
// --prefetch-interval), else Config.Refresh.
func (c *Catalog) productInterval() time.Duration {
	if c.cfg.PrefetchInterval > 0 {
		return c.cfg.PrefetchInterval
	}
	return c.cfg.Refresh
}

// productLoop is the download task ("download updates to the
// repository"): at start (once the DP has joined its cluster) and then
// every productInterval plus a random 0-10%, it asks upstream for the
// latest of each product of Config.Products, and fetches a newer version
// whole at once when Config.UpstreamWindow is open. Outside the window it
// fetches nothing: it logs what it found and wakes at the window's start
// to fetch it. Products endpoints ask for are refreshed by refreshLoop.
func (c *Catalog) productLoop(ctx context.Context) {
	if len(c.cfg.Products) == 0 {
		return
	}
	c.dp.WaitJoined(ctx, joinWait)
	w := c.cfg.UpstreamWindow
	deferred := map[string]uint64{} // product → serial found outside the window and logged
	for {
		wait := jittered(c.productInterval())
		for _, p := range c.cfg.Products {
			if ctx.Err() != nil {
				return
			}
			ul, ok := c.newer(ctx, p)
			if !ok {
				delete(deferred, p)
				continue
			}
			now := time.Now()
			if w.Contains(now) {
				delete(deferred, p)
				c.startVersion(ctx, p, ul, downloadTask)
				continue
			}
			// A second past the opening, to be inside it.
			opens := w.untilOpen(now) + time.Second
			wait = min(wait, opens)
			if deferred[p] != ul.latest.Serial {
				deferred[p] = ul.latest.Serial
				c.log.Info("download task: a newer version is available but it is outside the upstream window; fetching it when the window opens",
					"product", p, "version", ul.latest.Version, "serial", ul.latest.Serial, "window", w.String(), "opens_in", opens.Round(time.Second))
			}
		}
		if sleep(ctx, wait) != nil {
			return
		}
	}
}
