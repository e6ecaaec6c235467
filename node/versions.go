package node

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

// latestDocKey is where the cache keeps the latest.json that announced a
// version (the repository keeps only the newest one at <product>/latest.json).
func latestDocKey(product, version string) string {
	return product + "/" + version + "/latest.json"
}

// latest returns the signed latest.json a caller should see for product:
// the newest version held whole, or, for a cold DP that holds no version at
// all, upstream's (verified) while the version is pulled in the background.
func (n *Node) latest(ctx context.Context, product string) (source.Signed, error) {
	if err := manifest.ValidName(product); err != nil {
		return source.Signed{}, fmt.Errorf("product %q: %w: %v", product, ErrInvalid, err)
	}
	n.addProduct(product)
	v, err := n.cache.LatestVersion(product)
	switch {
	case err == nil:
		data, sig, err := n.cache.Document(latestDocKey(product, v.Version))
		if err == nil {
			return source.Signed{Data: data, Signature: sig}, nil
		}
		return source.Signed{}, fmt.Errorf("product %s: version %s is held but its latest.json is not: %w", product, v.Version, err)
	case !errors.Is(err, cache.ErrNotFound):
		return source.Signed{}, fmt.Errorf("product %s: %w", product, err)
	}
	ul, err := n.upstreamLatest(ctx, product, n.cfg.Refresh)
	if err != nil {
		return source.Signed{}, err
	}
	n.startVersion(product, ul)
	return ul.signed, nil
}

func (n *Node) addProduct(p string) {
	n.mu.Lock()
	n.products[p] = true
	n.mu.Unlock()
}

// upstreamLatest asks the upstream sources, in order, for product's
// latest.json and returns the first that verifies. A result younger than
// maxAge is reused, and concurrent callers share one request.
func (n *Node) upstreamLatest(ctx context.Context, product string, maxAge time.Duration) (upLatest, error) {
	n.mu.Lock()
	ul, ok := n.upLatest[product]
	n.mu.Unlock()
	if ok && time.Since(ul.at) < maxAge {
		return ul, nil
	}
	path := manifest.LatestPath(product)
	v, err, _ := n.docs.Do(docKey(ctx, path), func() (any, error) {
		var l *manifest.Latest
		signed, err := n.firstVerified(path, n.docSources(ctx),
			func(src source.Source) (source.Signed, error) { return src.Latest(n.bg, product) },
			func(s source.Signed) (err error) {
				if l, err = n.trust.VerifyLatest(s.Data, s.Signature); err == nil && l.Product != product {
					err = fmt.Errorf("latest.json names product %q", l.Product)
				}
				return err
			})
		if err != nil {
			return upLatest{}, err
		}
		ul := upLatest{signed: signed, latest: l, at: time.Now()}
		n.mu.Lock()
		n.upLatest[product] = ul
		n.mu.Unlock()
		return ul, nil
	})
	if err != nil {
		return upLatest{}, err
	}
	return v.(upLatest), nil
}

// firstVerified asks srcs in order for the document at path (get) and
// returns the first copy that verify accepts, logging why each earlier
// source was passed over (admins must see a fallback, not guess it).
func (n *Node) firstVerified(path string, srcs []source.Source, get func(source.Source) (source.Signed, error), verify func(source.Signed) error) (source.Signed, error) {
	var errs []string
	for _, src := range srcs {
		signed, err := get(src)
		if err == nil {
			if err = verify(signed); err == nil {
				return signed, nil
			}
			err = fmt.Errorf("%s: %s: %w", src, path, err)
		}
		n.log.Warn("source failed, trying the next", "document", path, "source", src.String(), "err", err)
		errs = append(errs, err.Error())
	}
	return source.Signed{}, upstreamError(path, errs)
}

// docKey is the singleflight key of a document fetch: forwarded requests,
// which use upstream only, never share a fetch that may ask peers.
func docKey(ctx context.Context, path string) string {
	if isForwarded(ctx) {
		return "forwarded/" + path
	}
	return path
}

// upstreamError summarises why every upstream source failed. NotFound when
// every source said so, Unavailable otherwise.
func upstreamError(what string, errs []string) error { return nodeerr.FromSources(what, errs) }

// manifestDoc returns a version's signed manifest from the cache, else from
// upstream (verified, then cached).
func (n *Node) manifestDoc(ctx context.Context, product, version string) (source.Signed, *manifest.Manifest, error) {
	if err := manifest.ValidName(product); err != nil {
		return source.Signed{}, nil, fmt.Errorf("product %q: %w: %v", product, ErrInvalid, err)
	}
	if err := manifest.ValidName(version); err != nil {
		return source.Signed{}, nil, fmt.Errorf("version %q: %w: %v", version, ErrInvalid, err)
	}
	path := manifest.ManifestPath(product, version)
	// A product endpoints ask about is kept current, even by a DP they never
	// asked for its latest.
	n.addProduct(product)
	if data, sig, err := n.cache.Document(path); err == nil {
		m, err := n.trust.VerifyManifest(data, sig, nil)
		if err != nil {
			return source.Signed{}, nil, fmt.Errorf("cached %s: %w: %v", path, ErrDataLoss, err)
		}
		n.register(m)
		return source.Signed{Data: data, Signature: sig}, m, nil
	} else if !errors.Is(err, cache.ErrNotFound) {
		return source.Signed{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	type result struct {
		signed source.Signed
		m      *manifest.Manifest
	}
	v, err, _ := n.docs.Do(docKey(ctx, path), func() (any, error) {
		var m *manifest.Manifest
		signed, err := n.firstVerified(path, n.docSources(ctx),
			func(src source.Source) (source.Signed, error) { return src.Manifest(n.bg, product, version) },
			func(s source.Signed) (err error) {
				if m, err = n.trust.VerifyManifest(s.Data, s.Signature, nil); err == nil && (m.Product != product || m.Version != version) {
					err = fmt.Errorf("manifest names %s %s", m.Product, m.Version)
				}
				return err
			})
		if err != nil {
			return nil, err
		}
		if err := n.cache.PutManifest(product, version, path, signed.Data, signed.Signature); err != nil {
			return nil, fmt.Errorf("caching %s: %w", path, err)
		}
		n.register(m)
		return result{signed, m}, nil
	})
	if err != nil {
		return source.Signed{}, nil, err
	}
	r := v.(result)
	return r.signed, r.m, nil
}

// register records the sizes of m's blobs: the DP fetches only blobs that a
// verified manifest names.
func (n *Node) register(m *manifest.Manifest) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, f := range m.Files {
		n.known[f.SHA256] = f.Size
	}
	n.registerVersionsLocked(m)
	n.rememberVersionLocked(m)
}

// loadKnown registers the manifests the cache holds.
func (n *Node) loadKnown() error {
	refs, err := n.cache.Manifests()
	if err != nil {
		return err
	}
	for _, r := range refs {
		product, version := r.Product, r.Version
		data, sig, err := n.cache.Document(manifest.ManifestPath(product, version))
		if err != nil {
			n.log.Warn("cached manifest unreadable; it will be fetched again", "product", product, "version", version, "err", err)
			continue
		}
		m, err := n.trust.VerifyManifest(data, sig, nil)
		if err != nil {
			n.log.Warn("cached manifest no longer verifies; it will be fetched again", "product", product, "version", version, "err", err)
			continue
		}
		n.register(m)
	}
	return nil
}

// startVersion fetches every blob of ul's version in the background and
// then records the version as held whole (which makes it this DP's latest).
// It returns the completion in flight (started now or earlier), or nil
// when the DP is closing.
func (n *Node) startVersion(product string, ul upLatest) *versionJob {
	key := product + "/" + ul.latest.Version
	n.mu.Lock()
	if j, running := n.jobs[key]; running || n.closed {
		n.mu.Unlock()
		return j
	}
	j := newVersionJob(product, ul.latest)
	n.jobs[key] = j
	n.bgWG.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.bgWG.Done()
		err := n.completeVersion(n.bg, product, ul, j)
		n.mu.Lock()
		delete(n.jobs, key)
		n.mu.Unlock()
		j.finish(err)
		if err != nil && n.bg.Err() == nil {
			n.log.Error("could not complete version; will retry at the next refresh", "product", product, "version", ul.latest.Version, "err", err)
		}
	}()
	return j
}

// completeVersion fetches the blobs of ul's version that the cache lacks,
// those of databases files first, reporting progress to j, then records
// the version whole and announces it.
func (n *Node) completeVersion(ctx context.Context, product string, ul upLatest, j *versionJob) error {
	l := ul.latest
	if held, err := n.cache.LatestVersion(product); err == nil && held.Serial >= l.Serial {
		return nil
	}
	signed, _, err := n.manifestDoc(ctx, product, l.Version)
	if err != nil {
		return err
	}
	m, err := n.trust.VerifyManifest(signed.Data, signed.Signature, l)
	if err != nil {
		return fmt.Errorf("manifest of %s %s: %w: %v", product, l.Version, ErrDataLoss, err)
	}
	start := time.Now()
	databases, modules := fetchOrder(m)
	blobs := slices.Concat(databases, modules)
	j.setBlobs(n.cache, blobs)
	if n.cfg.CacheMax > 0 {
		// Make room for the version before fetching it.
		if err := n.retainer.Pass(ctx); err != nil {
			n.log.Warn("could not make room in the cache before fetching a version", "product", product, "version", l.Version, "err", err)
		}
	}
	for _, group := range [][]manifest.File{databases, modules} {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(n.cfg.FetchParallel)
		for _, f := range group {
			g.Go(func() error {
				if err := n.fetcher.EnsureBlob(gctx, f.SHA256); err != nil {
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
	if err := n.cache.PutDocument(latestDocKey(product, l.Version), ul.signed.Data, ul.signed.Signature); err != nil {
		return err
	}
	if err := n.cache.PutVersion(cache.Version{
		Product: product, Version: l.Version, Serial: l.Serial,
		Blobs: digests, Size: m.Size(), Added: time.Now(),
	}); err != nil {
		return err
	}
	n.publishVersions(product)
	n.notifyVersion(product)
	n.retainer.Kick()
	n.log.Info("version held whole; now serving it as latest", "product", product, "version", l.Version, "serial", l.Serial, "blobs", len(blobs), "bytes", m.Size(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// refreshLoop asks upstream for a newer latest of every product endpoints
// asked this DP for, at start and then every Refresh. The products of
// Config.Products follow the download task instead (prefetchLoop).
func (n *Node) refreshLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.Refresh)
	defer t.Stop()
	for {
		n.refreshAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Node) refreshAll(ctx context.Context) {
	n.mu.Lock()
	products := make([]string, 0, len(n.products))
	for p := range n.products {
		if !slices.Contains(n.cfg.Products, p) {
			products = append(products, p)
		}
	}
	n.mu.Unlock()
	for _, p := range products {
		if ctx.Err() != nil {
			return
		}
		n.refresh(ctx, p)
	}
}

// refresh starts fetching upstream's latest of product when it is newer
// than what the DP holds. A lower serial is refused: that is a rollback
// attack or a misconfigured upstream.
func (n *Node) refresh(ctx context.Context, product string) {
	ul, err := n.upstreamLatest(ctx, product, 0)
	if err != nil {
		n.log.Warn("refresh: upstream latest unavailable; serving what is held", "product", product, "err", err)
		return
	}
	held, err := n.cache.LatestVersion(product)
	if err == nil {
		switch {
		case ul.latest.Serial < held.Serial:
			n.log.Warn("refresh: upstream offers a lower serial than held; ignoring it", "product", product, "upstream_serial", ul.latest.Serial, "held_serial", held.Serial)
			return
		case ul.latest.Serial == held.Serial:
			return
		}
	}
	n.startVersion(product, ul)
}
