package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	"github.com/dpcache/dpcache/source"
)

// startVersion fetches every blob of ul's version in the background and
// then records the version as held whole (which makes it this DP's latest).
// It returns the completion in flight (started now or earlier), or nil
// when the DP is closing. A completion the download task starts fetches
// under the upstream rate limit (its context is marked by
// source.WithBackground) until another caller starts it again (prefetch,
// an endpoint's request). A completion started now lives as long as the
// catalogue, and its requests to upstream DPs carry ctx's chain of DPs
// (source.Via): that of the request that found the version.
func (c *Catalog) startVersion(ctx context.Context, product string, ul upLatest, by startedBy) *Job {
	key := product + "/" + ul.latest.Version
	// A peer DP's download task asking this DP counts as the download
	// task here too (its requests carry the mark).
	background := by == downloadTask || source.IsBackground(ctx)
	c.mu.Lock()
	if j, running := c.jobs[key]; running || c.closed {
		c.mu.Unlock()
		if running && by == waiter && !background {
			j.limited.Store(false) // prefetch or an endpoint waits for it now
		}
		return j
	}
	j := newJob(product, ul.latest)
	c.jobs[key] = j
	c.wg.Add(1)
	c.mu.Unlock()
	cctx := source.CarryVia(c.ctx, ctx)
	if background {
		j.limited.Store(true)
		cctx = source.WithBackground(cctx, &j.limited)
	}
	go func() {
		defer c.wg.Done()
		err := c.completeVersion(cctx, product, ul, j)
		c.mu.Lock()
		delete(c.jobs, key)
		c.mu.Unlock()
		j.finish(err)
		if err != nil && c.ctx.Err() == nil {
			c.log.Error("could not complete version; will retry at the next refresh", "product", product, "version", ul.latest.Version, "err", err)
		}
	}()
	return j
}

// startedBy says who starts a completion. The download task's are
// rate-limited (Config.UpstreamRate) until a waiter asks for the same
// version; the others are not.
type startedBy int

const (
	waiter       startedBy = iota // an endpoint's request or prefetch: someone waits for it
	refreshTask                   // the refresh of asked products, following the site: nobody waits
	downloadTask                  // the download task of Config.Products
)

// completeVersion fetches the blobs of ul's version that the cache lacks,
// those of databases files first, reporting progress to j, then records
// the version whole and announces it.
//
// ul may be a re-signed latest.json of the version held (`dpcache resign`:
// the same manifest, pinned by its digest, under a higher serial with a new
// expiry). Its blobs are all held, so none is fetched; the new latest.json
// replaces the old one byte for byte as what the DP serves, the version's
// record moves to the new serial (keeping when it was added), and gossip
// and watchers hear of it.
func (c *Catalog) completeVersion(ctx context.Context, product string, ul upLatest, j *Job) error {
	l := ul.latest
	held, herr := c.store.LatestVersion(product)
	if herr == nil && held.Serial >= l.Serial {
		return nil
	}
	resigned := herr == nil && held.Version == l.Version
	signed, _, err := c.ManifestDoc(ctx, product, l.Version)
	if err != nil {
		return err
	}
	m, err := c.trust.VerifyManifest(signed.Data, signed.Signature, l)
	if err != nil {
		return fmt.Errorf("manifest of %s %s: %w: %v", product, l.Version, nodeerr.ErrDataLoss, err)
	}
	c.registerSerial(m, l.Serial)
	start := time.Now()
	databases, modules := fetchOrder(m)
	blobs := slices.Concat(databases, modules)
	j.setBlobs(c.store, blobs)
	if c.cfg.CacheMax > 0 && !resigned {
		// Make room for the version before fetching it.
		if err := c.retention.Pass(ctx); err != nil {
			c.log.Warn("could not make room in the cache before fetching a version", "product", product, "version", l.Version, "err", err)
		}
	}
	for _, group := range [][]manifest.File{databases, modules} {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(c.cfg.FetchParallel)
		for _, f := range group {
			g.Go(func() error {
				if err := c.blobs.EnsureBlob(gctx, f.SHA256); err != nil {
					return err
				}
				j.blobDone(f.SHA256)
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	digests := make([]string, len(blobs))
	for i, f := range blobs {
		digests[i] = f.SHA256
	}
	if err := c.store.PutDocument(LatestDocKey(product, l.Version), ul.signed.Data, ul.signed.Signature); err != nil {
		return err
	}
	added := time.Now()
	if resigned {
		added = held.Added // the same content, held since then
	}
	if err := c.store.PutVersion(cache.Version{
		Product: product, Version: l.Version, Serial: l.Serial,
		Blobs: digests, Size: m.Size(), Added: added,
	}); err != nil {
		return err
	}
	c.dp.PublishVersions(product)
	c.notifyVersion(product)
	c.retention.Kick()
	if resigned {
		c.log.Info("version re-signed upstream; now serving its new latest.json", "product", product, "version", l.Version,
			"serial", l.Serial, "previous_serial", held.Serial, "expires", l.Expires)
		return nil
	}
	c.log.Info("version held whole; now serving it as latest", "product", product, "version", l.Version, "serial", l.Serial, "blobs", len(blobs), "bytes", m.Size(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// refreshLoop asks upstream for a newer latest of every product endpoints
// asked this DP for, at start and then every Refresh plus a random 0-10%,
// and fetches a newer version whole at once: an endpoint is waiting, so
// Config.UpstreamWindow does not apply. The products of Config.Products
// are refreshed by the download task (productLoop).
func (c *Catalog) refreshLoop(ctx context.Context) {
	for {
		c.refreshAll(ctx)
		if sleep(ctx, jittered(c.cfg.Refresh)) != nil {
			return
		}
	}
}

func (c *Catalog) refreshAll(ctx context.Context) {
	c.mu.Lock()
	products := make([]string, 0, len(c.products))
	var stale []string
	for p, asked := range c.products {
		switch {
		case slices.Contains(c.cfg.Products, p):
		case time.Since(asked) > productTTL:
			stale = append(stale, p)
		default:
			products = append(products, p)
		}
	}
	c.mu.Unlock()
	for _, p := range stale {
		c.dropProduct(p, "no endpoint asked for it in 7 days")
	}
	for _, p := range products {
		if ctx.Err() != nil {
			return
		}
		if ul, ok := c.newer(ctx, p); ok {
			c.startVersion(ctx, p, ul, refreshTask)
		}
	}
}

// newer asks upstream for product's latest and returns it when it is newer
// than the version the DP holds (or the DP holds none; a re-signed
// latest.json of the version held is newer too: completing it moves no
// blob). A lower serial is refused: that is a rollback attack or a
// misconfigured upstream.
func (c *Catalog) newer(ctx context.Context, product string) (upLatest, bool) {
	ul, err := c.upstreamLatest(ctx, product, 0)
	if errors.Is(err, nodeerr.ErrNotFound) {
		c.dropProduct(product, "every upstream answers not found")
		return upLatest{}, false
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("refresh: upstream latest unavailable; serving what is held", "product", product, "err", err)
		}
		return upLatest{}, false
	}
	held, err := c.store.LatestVersion(product)
	if err == nil {
		switch {
		case ul.latest.Serial < held.Serial:
			c.log.Warn("refresh: upstream offers a lower serial than held; ignoring it", "product", product, "upstream_serial", ul.latest.Serial, "held_serial", held.Serial)
			return upLatest{}, false
		case ul.latest.Serial == held.Serial:
			return upLatest{}, false
		}
	}
	return ul, true
}
