package catalog

import (
	"context"
	"errors"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/source"
)

// A DP's latest is the newest version its site holds whole (docs/design.md,
// "How a DP resolves a blob"): when a DP of the site comes to hold a newer
// version than this one (`dpcache prefetch` on it, or its refresh came
// first), this DP completes that version too, its blobs coming from the
// peer over the LAN, and then announces it. So the endpoints watching any
// DP of the site move together, also while the internet link is down.

// followRetry is how long a version this DP set out to take from a peer is
// not asked for again (the completion is running, or failed: the next
// gossip change after this retries).
const followRetry = 30 * time.Second

// followPeerTimeout bounds asking a peer for its latest.json.
const followPeerTimeout = 10 * time.Second

type followed struct {
	serial uint64
	at     time.Time
}

// FollowSite starts completing product's version that a DP of the site
// holds whole at serial, when it is newer than the version held here:
// peer (a source asking that DP as a forwarded request) gives its signed
// latest.json, verified here as any document. Every product of the site
// is followed, also one this DP never served: the site holds it, so this
// DP's latest for it is the site's, and it can serve it when the DP that
// holds it is lost. It returns at once; the completion runs in the
// background.
func (c *Catalog) FollowSite(product string, serial uint64, peer source.Source) {
	held, err := c.store.LatestVersion(product)
	switch {
	case err == nil && held.Serial >= serial:
		return
	case err != nil && !errors.Is(err, cache.ErrNotFound):
		return
	}
	c.mu.Lock()
	f, tried := c.followed[product]
	if c.closed || (tried && f.serial >= serial && time.Since(f.at) < followRetry) {
		c.mu.Unlock()
		return
	}
	c.followed[product] = followed{serial, time.Now()}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, followPeerTimeout)
		defer cancel()
		signed, err := peer.Latest(ctx, product)
		if err != nil {
			c.log.Warn("a DP of the site holds a newer version, but did not give its latest.json; trying again later",
				"product", product, "serial", serial, "peer", peer.String(), "err", err)
			return
		}
		l, err := c.verifyLatest(product, signed)
		if err != nil {
			c.log.Warn("a DP of the site gave a latest.json that does not verify; ignoring it",
				"product", product, "peer", peer.String(), "err", err)
			return
		}
		if held, err := c.store.LatestVersion(product); err == nil && held.Serial >= l.Serial {
			return
		}
		c.log.Info("a DP of the site holds a newer version; completing it from the site",
			"product", product, "version", l.Version, "serial", l.Serial, "peer", peer.String())
		c.startVersion(ctx, product, upLatest{signed: signed, latest: l, at: time.Now()}, refreshTask)
	}()
}
