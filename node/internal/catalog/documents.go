package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// addAsked keeps product current for the request in ctx (AddProduct),
// unless the request is a peer DP's download task (source.IsBackground):
// that DP keeps the product current itself, and what it makes this DP
// fetch stays under the rate limit instead of becoming an endpoint's
// refresh.
func (c *Catalog) addAsked(ctx context.Context, product string) {
	if !source.IsBackground(ctx) {
		c.AddProduct(product)
	}
}

// latest returns the signed latest.json a caller should see for product:
// the newest version held whole, or, for a cold DP that holds no version at
// all, upstream's (verified) while the version is pulled in the background.
func (c *Catalog) Latest(ctx context.Context, product string) (source.Signed, error) {
	if err := manifest.ValidName(product); err != nil {
		return source.Signed{}, fmt.Errorf("product %q: %w: %v", product, nodeerr.ErrInvalid, err)
	}
	c.addAsked(ctx, product)
	v, err := c.store.LatestVersion(product)
	switch {
	case err == nil:
		data, sig, err := c.store.Document(LatestDocKey(product, v.Version))
		if err == nil {
			return source.Signed{Data: data, Signature: sig}, nil
		}
		return source.Signed{}, fmt.Errorf("product %s: version %s is held but its latest.json is not: %w", product, v.Version, err)
	case !errors.Is(err, cache.ErrNotFound):
		return source.Signed{}, fmt.Errorf("product %s: %w", product, err)
	}
	ul, err := c.upstreamLatest(ctx, product, c.cfg.Refresh)
	if errors.Is(err, nodeerr.ErrNotFound) {
		c.dropProduct(product, "every upstream answers not found")
	}
	if err != nil {
		return source.Signed{}, err
	}
	c.startVersion(ctx, product, ul, waiter)
	return ul.signed, nil
}

// upstreamLatest asks the upstream sources, in order, for product's
// latest.json and returns the first that verifies. A result younger than
// maxAge is reused, and concurrent callers share one request.
func (c *Catalog) upstreamLatest(ctx context.Context, product string, maxAge time.Duration) (upLatest, error) {
	c.mu.Lock()
	ul, ok := c.upLatest[product]
	c.mu.Unlock()
	if ok && time.Since(ul.at) < maxAge {
		return ul, nil
	}
	path := manifest.LatestPath(product)
	fctx := c.detach(ctx)
	v, err, _ := c.docs.Do(docKey(fctx, path), func() (any, error) {
		var l *manifest.Latest
		signed, err := c.documents(fctx, func(s source.Signed) (err error) {
			if l, err = c.verifyLatest(product, s); err == nil {
				if stale := l.Fresh(time.Now()); stale != nil {
					return failover.Stale(stale, l.Serial)
				}
			}
			return err
		}).Latest(fctx, product)
		if err != nil {
			return upLatest{}, documentError(err)
		}
		if signed.Stale {
			// Every upstream is stale: the newest expired version (the
			// engine logged it), which the DP shows stale.
			if l, err = c.verifyLatest(product, signed); err != nil {
				return upLatest{}, documentError(err)
			}
		}
		ul := upLatest{signed: signed, latest: l, at: time.Now()}
		c.mu.Lock()
		c.upLatest[product] = ul
		if signed.Stale {
			c.stale[product] = *ul.latest.Expires
		} else {
			delete(c.stale, product)
		}
		c.mu.Unlock()
		return ul, nil
	})
	if err != nil {
		return upLatest{}, err
	}
	return v.(upLatest), nil
}

// verifyLatest checks a latest.json's signature and product; a bad
// signature is worth one more request (publish replaces it first).
func (c *Catalog) verifyLatest(product string, s source.Signed) (*manifest.Latest, error) {
	l, err := c.trust.VerifyLatest(s.Data, s.Signature)
	if errors.Is(err, manifest.ErrBadSignature) {
		return nil, failover.Retry(err)
	}
	if err == nil && l.Product != product {
		return nil, fmt.Errorf("latest.json names product %q", l.Product)
	}
	return l, err
}

// documents returns the failover engine over the DP's document sources
// (upstream, then the site's peers: see DP.DocSources), verifying each
// document with verify; a failing source stays in backoff for the blob
// fetches too (the shared Health). Documents are verified whoever serves
// them.
func (c *Catalog) documents(ctx context.Context, verify func(source.Signed) error) *failover.Chain {
	upstream, peers := c.dp.DocSources(ctx)
	peer := make(map[source.Source]bool, len(peers))
	for _, p := range peers {
		peer[p] = true
	}
	return failover.New(append(slices.Clone(upstream), peers...), failover.Options{
		StallTimeout: c.cfg.StallTimeout, Health: c.cfg.Health, Logger: c.log,
		Verify: func(_, _, _ string, s source.Signed) error { return verify(s) },
		// Upstream first, in backoff or not: a peer knows at most what
		// the site holds, never a newer version.
		Tier: func(s source.Source) int {
			if peer[s] {
				return 1
			}
			return 0
		},
	})
}

// documentError turns a failover's error into the DP's: NotFound when
// every source said so, Unavailable otherwise.
func documentError(err error) error {
	if errors.Is(err, source.ErrNotFound) {
		return fmt.Errorf("%w: %v", nodeerr.ErrNotFound, err)
	}
	return fmt.Errorf("%w: %v", nodeerr.ErrUnavailable, err)
}

// detach returns the context of a document fetch that concurrent callers
// share: the catalogue's lifetime (no caller's cancellation ends it), with
// ctx's forwarded mark and chain of DPs (source.Via), which the fetch's
// requests to upstream DPs carry.
func (c *Catalog) detach(ctx context.Context) context.Context {
	return WithForwarded(source.CarryVia(c.ctx, ctx), IsForwarded(ctx))
}

// docKey is the singleflight key of a document fetch in fctx (see detach):
// forwarded requests, which use upstream only, never share a fetch that
// may ask peers; and a request never joins a fetch made for another chain
// of DPs. The DP's own requests and its endpoints' share one chain (this
// DP alone); a request from another DP joins only the fetches made for
// the same chain, so the fetch it waits on tells every upstream DP all
// the DPs waiting on it, and one that is among them refuses at once (two
// DPs asking each other for a document at the same moment would
// otherwise each wait on its own fetch, which waits on the other's). The
// cost: downstream DPs asking for one document at the same moment each
// have their own fetch of it (documents are small; latest.json is
// reused for a while and manifests are kept).
func docKey(fctx context.Context, path string) string {
	key := path
	if IsForwarded(fctx) {
		key = "forwarded/" + key
	}
	if via := source.Via(fctx); len(via) > 0 {
		key = source.FormatVia(via) + "/" + key
	}
	return key
}

// manifestDoc returns a version's signed manifest from the cache, else from
// upstream (verified, then cached).
func (c *Catalog) ManifestDoc(ctx context.Context, product, version string) (source.Signed, *manifest.Manifest, error) {
	if err := manifest.ValidName(product); err != nil {
		return source.Signed{}, nil, fmt.Errorf("product %q: %w: %v", product, nodeerr.ErrInvalid, err)
	}
	if err := manifest.ValidName(version); err != nil {
		return source.Signed{}, nil, fmt.Errorf("version %q: %w: %v", version, nodeerr.ErrInvalid, err)
	}
	path := manifest.ManifestPath(product, version)
	// A product endpoints ask about is kept current, even by a DP they never
	// asked for its latest.
	c.addAsked(ctx, product)
	if data, sig, err := c.store.Document(path); err == nil {
		m, err := c.trust.VerifyManifest(data, sig, nil)
		if err != nil {
			return source.Signed{}, nil, fmt.Errorf("cached %s: %w: %v", path, nodeerr.ErrDataLoss, err)
		}
		c.register(m)
		return source.Signed{Data: data, Signature: sig}, m, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return source.Signed{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	type result struct {
		signed source.Signed
		m      *manifest.Manifest
	}
	fctx := c.detach(ctx)
	v, err, _ := c.docs.Do(docKey(fctx, path), func() (any, error) {
		var m *manifest.Manifest
		signed, err := c.documents(fctx, func(s source.Signed) (err error) {
			m, err = c.trust.VerifyManifest(s.Data, s.Signature, nil)
			if errors.Is(err, manifest.ErrBadSignature) {
				return failover.Retry(err)
			}
			if err == nil && (m.Product != product || m.Version != version) {
				err = fmt.Errorf("manifest names %s %s", m.Product, m.Version)
			}
			return err
		}).Manifest(fctx, product, version)
		if err != nil {
			return nil, documentError(err)
		}
		if err := c.store.PutManifest(product, version, path, signed.Data, signed.Signature); err != nil {
			return nil, fmt.Errorf("caching %s: %w", path, err)
		}
		c.register(m)
		return result{signed, m}, nil
	})
	if err != nil {
		return source.Signed{}, nil, err
	}
	r := v.(result)
	return r.signed, r.m, nil
}
