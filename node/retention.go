package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/ops"
)

// Quota and retention: a DP looks after its own disk. A retention pass
// (retain) runs at start, after each version becomes whole, before a
// version is fetched when Config.CacheMax is set (to make room for it),
// when a blob it had to skip is no longer read, and every
// maintenanceInterval. It
//
//  1. drops the versions of each product beyond the newest
//     Config.KeepVersions;
//  2. deletes the whole blobs no recorded version references (those of the
//     dropped versions, blobs pulled through for an old version), oldest
//     first;
//  3. while the cache's own bytes (whole and partial blobs, plus what the
//     versions being fetched still need) exceed Config.CacheMax, drops the
//     oldest version that is not its product's latest, with its blobs;
//     then, as a last resort, partial blobs no fetch is writing.
//
// It never drops the latest version of a product, never deletes a blob
// being read or fetched right now (it skips it and retries once the last
// reader is done), and never deletes a blob that a version newer than its
// product's latest names (one being fetched, or pulled through for a cold
// site). Deleted pages go to bbolt's freelist and are reused: the file
// stops growing once the quota is reached. The documents of versions
// older than the oldest kept are deleted too; their publication times are
// kept (small records) so endpoint ages stay known.

// maintenanceInterval is how often the DP checks free disk space and runs
// a retention pass without being asked.
const maintenanceInterval = time.Minute

// lowDiskRepeat is how often the low-disk warning is logged again while
// free space stays low.
const lowDiskRepeat = time.Hour

// retentionLoop runs retention passes at start, when kicked, and every
// maintenanceInterval, when it also checks free disk space.
func (n *Node) retentionLoop(ctx context.Context) {
	t := time.NewTicker(maintenanceInterval)
	defer t.Stop()
	var lowSince, lastWarn time.Time
	checkDisk := func() {
		free, low := n.lowDisk()
		switch {
		case low && (lastWarn.IsZero() || time.Since(lastWarn) >= lowDiskRepeat):
			if lowSince.IsZero() {
				lowSince = time.Now()
			}
			n.log.Warn("free disk space under the data directory is low; raise it or lower --cache-max", "dir", n.cfg.DataDir, "free_bytes", free, "threshold_bytes", ops.LowDiskThreshold, "low_since", lowSince.Format(time.RFC3339))
			lastWarn = time.Now()
		case !low && !lowSince.IsZero():
			n.log.Info("free disk space under the data directory recovered", "dir", n.cfg.DataDir, "free_bytes", free)
			lowSince, lastWarn = time.Time{}, time.Time{}
		}
	}
	checkDisk()
	for {
		if err := n.retain(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("retention pass failed; retrying later", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.retainKick:
		case <-t.C:
			checkDisk()
		}
	}
}

// kickRetention asks the retention loop for a pass; it never blocks.
func (n *Node) kickRetention() {
	select {
	case n.retainKick <- struct{}{}:
	default:
	}
}

// lowDisk returns the free bytes of the data directory's file system and
// whether they are below lowDiskThreshold (false when unknown). Safe for
// concurrent use; it asks the kernel each time (one statfs).
func (n *Node) lowDisk() (free uint64, low bool) {
	free, ok := ops.DiskFree(n.cfg.DataDir)
	return free, ok && free < ops.LowDiskThreshold
}

// startReading counts a reader of digest until release is called, so that
// retention does not delete the blob under it. It waits for a deletion of
// the blob already under way (the caller then finds it missing and fetches
// it again).
func (n *Node) startReading(ctx context.Context, digest string) (release func(), err error) {
	for {
		n.mu.Lock()
		ch, busy := n.evicting[digest]
		if !busy {
			n.reading[digest]++
			n.mu.Unlock()
			return func() { n.doneReading(digest) }, nil
		}
		n.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (n *Node) doneReading(digest string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.reading[digest]--; n.reading[digest] > 0 {
		return
	}
	delete(n.reading, digest)
	if n.evictWaiting[digest] {
		delete(n.evictWaiting, digest)
		n.kickRetention()
	}
}

// retention is the state of a retention pass.
type retention struct {
	latest  map[string]uint64 // each held product's latest serial
	changed map[string]bool   // products whose held versions changed
	freed   int64             // bytes deleted
}

// retain runs one retention pass (see the top of this file). Passes do
// not overlap.
func (n *Node) retain(ctx context.Context) error {
	n.retainMu.Lock()
	defer n.retainMu.Unlock()
	products, err := n.cache.Products()
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	r := &retention{latest: map[string]uint64{}, changed: map[string]bool{}}
	defer func() {
		for p := range r.changed {
			n.publishVersions(p)
		}
	}()
	refs := map[string]int{} // kept versions referencing each blob
	var old []cache.Version  // kept versions that are not their product's latest
	for _, p := range products {
		vs, err := n.cache.Versions(p)
		if err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		if len(vs) == 0 {
			continue
		}
		r.latest[p] = vs[len(vs)-1].Serial
		if extra := len(vs) - n.cfg.KeepVersions; extra > 0 {
			for _, v := range vs[:extra] {
				if err := n.dropVersion(r, v, fmt.Sprintf("beyond the newest %d", n.cfg.KeepVersions)); err != nil {
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

	unref, err := n.cache.Unreferenced()
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	digests := make([]string, len(unref))
	for i, b := range unref {
		digests[i] = b.Digest
	}
	if err := n.evictBlobs(ctx, r, digests); err != nil {
		return err
	}

	if n.cfg.CacheMax > 0 {
		if err := n.enforceQuota(ctx, r, refs, old); err != nil {
			return err
		}
	}
	n.forgetOldDocuments(products)
	if r.freed > 0 {
		n.log.Debug("retention pass done", "freed_bytes", r.freed)
	}
	return nil
}

// enforceQuota drops the oldest non-latest versions, and then partial
// blobs no fetch is writing, until the cache's bytes fit Config.CacheMax.
func (n *Node) enforceQuota(ctx context.Context, r *retention, refs map[string]int, old []cache.Version) error {
	st, err := n.cache.Stats()
	if err != nil {
		return fmt.Errorf("retention: %w", err)
	}
	reserved := n.reservedBytes()
	used := st.Bytes + st.PendingBytes + reserved
	slices.SortStableFunc(old, func(a, b cache.Version) int {
		return cmp.Or(a.Added.Compare(b.Added), cmp.Compare(a.Serial, b.Serial))
	})
	for used > n.cfg.CacheMax && len(old) > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		v := old[0]
		old = old[1:]
		if err := n.dropVersion(r, v, "cache over --cache-max"); err != nil {
			return err
		}
		var free []string
		for _, d := range v.Blobs {
			if refs[d]--; refs[d] == 0 {
				free = append(free, d)
			}
		}
		before := r.freed
		if err := n.evictBlobs(ctx, r, free); err != nil {
			return err
		}
		used -= r.freed - before
	}
	if used > n.cfg.CacheMax {
		pending, err := n.cache.PendingBlobs()
		if err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		slices.SortFunc(pending, func(a, b cache.BlobInfo) int { return a.Updated.Compare(b.Updated) })
		for _, b := range pending {
			if used <= n.cfg.CacheMax {
				break
			}
			if !b.Writing {
				before := r.freed
				if err := n.evictBlobs(ctx, r, []string{b.Digest}); err != nil {
					return err
				}
				used -= r.freed - before
			}
		}
	}
	over := used > n.cfg.CacheMax
	if over && !n.overQuota {
		n.log.Warn("cache over --cache-max, but only the latest versions and blobs in use remain; keeping them (a DP never drops the latest version)", "used_bytes", used, "reserved_bytes", reserved, "cache_max", n.cfg.CacheMax)
	}
	n.overQuota = over
	return nil
}

// dropVersion removes v from the index of versions held whole, keeping its
// publication time for endpoint ages.
func (n *Node) dropVersion(r *retention, v cache.Version, why string) error {
	n.persistPublished(v.Product, v.Serial)
	if err := n.cache.DeleteVersion(v.Product, v.Version); err != nil && !errors.Is(err, cache.ErrNotFound) {
		return fmt.Errorf("retention: %w", err)
	}
	r.changed[v.Product] = true
	n.log.Info("version dropped from the cache", "product", v.Product, "version", v.Version, "serial", v.Serial, "bytes", v.Size, "why", why)
	return nil
}

// evictBatch bounds the blobs deleted in one go: readers that ask for one
// of them meanwhile wait for the batch.
const evictBatch = 256

// evictBlobs deletes blobs, in batches, except those being read or fetched
// (retried when their last reader is done) and those a version newer than
// their product's latest names. It adds the bytes freed to r.freed.
func (n *Node) evictBlobs(ctx context.Context, r *retention, digests []string) error {
	for len(digests) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(len(digests), evictBatch)
		n.evictBatch(r, digests[:k])
		digests = digests[k:]
	}
	return nil
}

func (n *Node) evictBatch(r *retention, digests []string) {
	var batch []string
	done := make(chan struct{})
	n.mu.Lock()
	for _, d := range digests {
		switch {
		case n.reading[d] > 0:
			n.evictWaiting[d] = true
		case n.fetches[d] != nil, n.evicting[d] != nil, n.protectedLocked(d, r.latest):
		default:
			n.evicting[d] = done
			batch = append(batch, d)
		}
	}
	n.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	defer func() {
		n.mu.Lock()
		for _, d := range batch {
			delete(n.evicting, d)
		}
		n.mu.Unlock()
		close(done)
	}()
	sizes := make(map[string]int64, len(batch))
	for _, d := range batch {
		if info, err := n.cache.Blob(d); err == nil {
			sizes[d] = info.Stored
		}
	}
	var freed int64
	deleted := n.deleteBlobs(batch)
	for _, d := range deleted {
		freed += sizes[d]
	}
	r.freed += freed
	n.metrics.Evicted(len(deleted), freed)
}

// deleteBlobs deletes blobs from the cache in one transaction and returns
// those it deleted (busy ones are skipped; a later pass retries them).
func (n *Node) deleteBlobs(digests []string) []string {
	deleted, err := n.cache.DeleteBlobs(digests)
	if err != nil {
		n.log.Warn("retention: could not delete blobs; retrying later", "blobs", len(digests), "err", err)
	}
	return deleted
}

// protectedLocked reports whether a version newer than its product's held
// latest (or of a product not held at all) names digest: a version being
// fetched, or pulled through for a cold site. Call with n.mu held.
func (n *Node) protectedLocked(digest string, latest map[string]uint64) bool {
	for _, ps := range n.blobVersions[digest] {
		if l, held := latest[ps.product]; !held || ps.serial > l {
			return true
		}
	}
	return false
}

// reservedBytes is what the versions being fetched still need: the bytes
// of their blobs not held whole and not stored in part yet.
func (n *Node) reservedBytes() int64 {
	n.mu.Lock()
	jobs := make([]*versionJob, 0, len(n.jobs))
	for _, j := range n.jobs {
		jobs = append(jobs, j)
	}
	n.mu.Unlock()
	var total int64
	seen := map[string]bool{}
	for _, j := range jobs {
		for _, f := range j.missing() {
			if seen[f.SHA256] {
				continue
			}
			seen[f.SHA256] = true
			need := f.Size
			if info, err := n.cache.Blob(f.SHA256); err == nil {
				if info.Whole {
					continue
				}
				need -= info.Stored
			}
			total += max(need, 0)
		}
	}
	return total
}

// forgetOldDocuments deletes the signed documents of versions older than
// the oldest version kept of their product (their blobs are gone; a
// request for them fetches them again), and forgets their blobs' sizes.
func (n *Node) forgetOldDocuments(products []string) {
	oldest := map[string]uint64{}
	for _, p := range products {
		if vs, err := n.cache.Versions(p); err == nil && len(vs) > 0 {
			oldest[p] = vs[0].Serial
		}
	}
	refs, err := n.cache.Manifests()
	if err != nil {
		n.log.Warn("retention: cannot list cached manifests", "err", err)
		return
	}
	var drop []cache.VersionRef
	for _, r := range refs {
		first, held := oldest[r.Product]
		if !held {
			continue
		}
		n.mu.Lock()
		serial, known := n.serialOfLocked(r.Product, r.Version)
		_, running := n.jobs[r.Product+"/"+r.Version]
		n.mu.Unlock()
		if known && serial < first && !running {
			drop = append(drop, r)
		}
	}
	for _, r := range drop {
		product, version := r.Product, r.Version
		n.forgetManifest(product, version)
		if err := n.cache.DeleteManifest(product, version, manifest.ManifestPath(product, version), latestDocKey(product, version)); err != nil {
			n.log.Warn("retention: cannot delete a manifest and its documents", "product", product, "version", version, "err", err)
		}
	}
}

// forgetManifest drops what register learnt from a version's manifest:
// the versions naming each blob, and the sizes of blobs no other known
// version names. The publication time stays (endpoint ages).
func (n *Node) forgetManifest(product, version string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for d, vs := range n.blobVersions {
		kept := slices.DeleteFunc(vs, func(ps productSerial) bool { return ps.product == product && ps.version == version })
		if len(kept) == 0 {
			delete(n.blobVersions, d)
			if n.fetches[d] == nil {
				delete(n.known, d)
			}
		} else {
			n.blobVersions[d] = kept
		}
	}
}
