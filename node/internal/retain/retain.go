package retain

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/ops"
)

// Config is what retention keeps.
type Config struct {
	// KeepVersions is how many versions of each product are kept (the
	// newest). At least 1.
	KeepVersions int
	// CacheMax bounds the cache's own bytes; 0 is unlimited.
	CacheMax int64
	// DataDir is the directory whose free space is watched.
	DataDir string
	// Logger receives retention's logs. Default slog.Default().
	Logger *slog.Logger
}

// Store is the part of the cache retention reads and deletes
// (*cache.Cache implements it).
type Store interface {
	Products() ([]string, error)
	Versions(product string) ([]cache.Version, error)
	Unreferenced() ([]cache.BlobInfo, error)
	PendingBlobs() ([]cache.BlobInfo, error)
	Stats() (cache.Stats, error)
	Blob(digest string) (cache.BlobInfo, error)
	DeleteVersion(product, version string) error
	DeleteBlobs(digests []string) ([]string, error)
}

// DP is what retention asks of the rest of the distribution point. Fetching
// and Protected are called with Pins' lock held: they must not call Pins.
type DP interface {
	// Fetching reports whether digest is being fetched now.
	Fetching(digest string) bool
	// Protected reports whether a version newer than its product's held
	// latest (latest; a product absent from it is not held) names digest:
	// a version being fetched, or pulled through for a cold site.
	Protected(digest string, latest map[string]uint64) bool
	// ReservedBytes is what the versions being fetched still need.
	ReservedBytes() int64
	// KeepPublished keeps the publication time of a version about to be
	// dropped, for endpoint ages.
	KeepPublished(product string, serial uint64)
	// VersionsChanged tells the cluster that product's held versions
	// changed.
	VersionsChanged(product string)
	// ForgetOldDocuments deletes the documents of versions older than the
	// oldest kept of their product.
	ForgetOldDocuments(products []string)
	// Evicted counts deleted blobs and their bytes (metrics).
	Evicted(blobs int, bytes int64)
}

// Retainer runs retention passes over a DP's cache.
type Retainer struct {
	cfg   Config
	log   *slog.Logger
	store Store
	dp    DP
	pins  *Pins
	kick  chan struct{} // asks Run for a pass

	mu        sync.Mutex // serialises passes; protects overQuota
	overQuota bool       // the last pass could not get under Config.CacheMax
}

// New returns a Retainer; it starts nothing (see Run).
func New(cfg Config, store Store, dp DP) *Retainer {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Retainer{cfg: cfg, log: cfg.Logger, store: store, dp: dp, kick: make(chan struct{}, 1)}
	r.pins = NewPins(r.Kick)
	return r
}

// Pins returns the reader pins passes respect.
func (r *Retainer) Pins() *Pins { return r.pins }

// LowDisk returns the free bytes of the data directory's file system and
// whether they are below ops.LowDiskThreshold (false when unknown). Safe
// for concurrent use; it asks the kernel each time (one statfs).
func (r *Retainer) LowDisk() (free uint64, low bool) {
	free, ok := ops.DiskFree(r.cfg.DataDir)
	return free, ok && free < ops.LowDiskThreshold
}

// maintenanceInterval is how often the DP checks free disk space and runs
// a retention pass without being asked.
const maintenanceInterval = time.Minute

// lowDiskRepeat is how often the low-disk warning is logged again while
// free space stays low.
const lowDiskRepeat = time.Hour

// retentionLoop runs retention passes at start, when kicked, and every
// maintenanceInterval, when it also checks free disk space.
func (r *Retainer) Run(ctx context.Context) {
	t := time.NewTicker(maintenanceInterval)
	defer t.Stop()
	var lowSince, lastWarn time.Time
	checkDisk := func() {
		free, low := r.LowDisk()
		switch {
		case low && (lastWarn.IsZero() || time.Since(lastWarn) >= lowDiskRepeat):
			if lowSince.IsZero() {
				lowSince = time.Now()
			}
			r.log.Warn("free disk space under the data directory is low; raise it or lower --cache-max", "dir", r.cfg.DataDir, "free_bytes", free, "threshold_bytes", ops.LowDiskThreshold, "low_since", lowSince.Format(time.RFC3339))
			lastWarn = time.Now()
		case !low && !lowSince.IsZero():
			r.log.Info("free disk space under the data directory recovered", "dir", r.cfg.DataDir, "free_bytes", free)
			lowSince, lastWarn = time.Time{}, time.Time{}
		}
	}
	checkDisk()
	for {
		if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("retention pass failed; retrying later", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-t.C:
			checkDisk()
		}
	}
}

// Kick asks Run for a pass; it never blocks.
func (r *Retainer) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// pass is the state of a retention pass.
type pass struct {
	latest  map[string]uint64 // each held product's latest serial
	changed map[string]bool   // products whose held versions changed
	freed   int64             // bytes deleted
}

// Pass runs one retention pass (see the package documentation). Passes do
// not overlap.
func (r *Retainer) Pass(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	products, err := r.store.Products()
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	ps := &pass{latest: map[string]uint64{}, changed: map[string]bool{}}
	defer func() {
		for p := range ps.changed {
			r.dp.VersionsChanged(p)
		}
	}()
	refs := map[string]int{} // kept versions referencing each blob
	var old []cache.Version  // kept versions that are not their product's latest
	for _, p := range products {
		vs, err := r.store.Versions(p)
		if err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		if len(vs) == 0 {
			continue
		}
		ps.latest[p] = vs[len(vs)-1].Serial
		if extra := len(vs) - r.cfg.KeepVersions; extra > 0 {
			for _, v := range vs[:extra] {
				if err := r.dropVersion(ps, v, fmt.Sprintf("beyond the newest %d", r.cfg.KeepVersions)); err != nil {
					return err
				}
			}
			vs = vs[extra:]
		}
		for i, v := range vs {
			for _, d := range v.Blobs {
				refs[d]++
			}
			if i < len(vs)-1 {
				old = append(old, v)
			}
		}
	}

	unref, err := r.store.Unreferenced()
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	digests := make([]string, len(unref))
	for i, b := range unref {
		digests[i] = b.Digest
	}
	if err := r.evictBlobs(ctx, ps, digests); err != nil {
		return err
	}

	if r.cfg.CacheMax > 0 {
		if err := r.enforceQuota(ctx, ps, refs, old); err != nil {
			return err
		}
	}
	r.dp.ForgetOldDocuments(products)
	if ps.freed > 0 {
		r.log.Debug("retention pass done", "freed_bytes", ps.freed)
	}
	return nil
}

// enforceQuota drops the oldest non-latest versions, and then partial
// blobs no fetch is writing, until the cache's bytes fit Config.CacheMax.
func (r *Retainer) enforceQuota(ctx context.Context, ps *pass, refs map[string]int, old []cache.Version) error {
	st, err := r.store.Stats()
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	reserved := r.dp.ReservedBytes()
	used := st.Bytes + st.PendingBytes + reserved
	slices.SortStableFunc(old, func(a, b cache.Version) int {
		return cmp.Or(a.Added.Compare(b.Added), cmp.Compare(a.Serial, b.Serial))
	})
	for used > r.cfg.CacheMax && len(old) > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		v := old[0]
		old = old[1:]
		if err := r.dropVersion(ps, v, "cache over --cache-max"); err != nil {
			return err
		}
		var free []string
		for _, d := range v.Blobs {
			if refs[d]--; refs[d] == 0 {
				free = append(free, d)
			}
		}
		before := ps.freed
		if err := r.evictBlobs(ctx, ps, free); err != nil {
			return err
		}
		used -= ps.freed - before
	}
	if used > r.cfg.CacheMax {
		pending, err := r.store.PendingBlobs()
		if err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		slices.SortFunc(pending, func(a, b cache.BlobInfo) int { return a.Updated.Compare(b.Updated) })
		for _, b := range pending {
			if used <= r.cfg.CacheMax {
				break
			}
			if !b.Writing {
				before := ps.freed
				if err := r.evictBlobs(ctx, ps, []string{b.Digest}); err != nil {
					return err
				}
				used -= ps.freed - before
			}
		}
	}
	over := used > r.cfg.CacheMax
	if over && !r.overQuota {
		r.log.Warn("cache over --cache-max, but only the latest versions and blobs in use remain; keeping them (a DP never drops the latest version)", "used_bytes", used, "reserved_bytes", reserved, "cache_max", r.cfg.CacheMax)
	}
	r.overQuota = over
	return nil
}

// dropVersion removes v from the index of versions held whole, keeping its
// publication time for endpoint ages.
func (r *Retainer) dropVersion(ps *pass, v cache.Version, why string) error {
	r.dp.KeepPublished(v.Product, v.Serial)
	if err := r.store.DeleteVersion(v.Product, v.Version); err != nil && !errors.Is(err, cache.ErrNotFound) {
		return fmt.Errorf("retention: %w", err)
	}
	ps.changed[v.Product] = true
	r.log.Info("version dropped from the cache", "product", v.Product, "version", v.Version, "serial", v.Serial, "bytes", v.Size, "why", why)
	return nil
}

// evictBatch bounds the blobs deleted in one go: readers that ask for one
// of them meanwhile wait for the batch.
const evictBatch = 256

// evictBlobs deletes blobs, in batches, except those being read or fetched
// (retried when their last reader is done) and those a version newer than
// their product's latest names. It adds the bytes freed to ps.freed.
func (r *Retainer) evictBlobs(ctx context.Context, ps *pass, digests []string) error {
	for len(digests) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(len(digests), evictBatch)
		r.evictBatch(ps, digests[:k])
		digests = digests[k:]
	}
	return nil
}

func (r *Retainer) evictBatch(ps *pass, digests []string) {
	batch, release := r.pins.claim(digests, func(d string) bool {
		return r.dp.Fetching(d) || r.dp.Protected(d, ps.latest)
	})
	defer release()
	if len(batch) == 0 {
		return
	}
	sizes := make(map[string]int64, len(batch))
	for _, d := range batch {
		if info, err := r.store.Blob(d); err == nil {
			sizes[d] = info.Stored
		}
	}
	var freed int64
	deleted := r.deleteBlobs(batch)
	for _, d := range deleted {
		freed += sizes[d]
	}
	ps.freed += freed
	r.dp.Evicted(len(deleted), freed)
}

// deleteBlobs deletes blobs from the cache in one transaction and returns
// those it deleted (busy ones are skipped; a later pass retries them).
func (r *Retainer) deleteBlobs(digests []string) []string {
	deleted, err := r.store.DeleteBlobs(digests)
	if err != nil {
		r.log.Warn("retention: could not delete blobs; retrying later", "blobs", len(digests), "err", err)
	}
	return deleted
}
