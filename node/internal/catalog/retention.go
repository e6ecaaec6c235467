package catalog

import (
	"slices"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
)

// protectedLocked reports whether a version newer than its product's held
// latest (or of a product not held at all) names digest: a version being
// fetched, or pulled through for a cold site. Call with c.mu held.
func (c *Catalog) protectedLocked(digest string, latest map[string]uint64) bool {
	for _, ps := range c.blobVersions[digest] {
		if l, held := latest[ps.product]; !held || ps.serial > l {
			return true
		}
	}
	return false
}

// reservedBytes is what the versions being fetched still need: the bytes
// of their blobs not held whole and not stored in part yet.
func (c *Catalog) ReservedBytes() int64 {
	c.mu.Lock()
	jobs := make([]*Job, 0, len(c.jobs))
	for _, j := range c.jobs {
		jobs = append(jobs, j)
	}
	c.mu.Unlock()
	var total int64
	seen := map[string]bool{}
	for _, j := range jobs {
		for _, f := range j.missing() {
			if seen[f.SHA256] {
				continue
			}
			seen[f.SHA256] = true
			need := f.Size
			if info, err := c.store.Blob(f.SHA256); err == nil {
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
func (c *Catalog) ForgetOldDocuments(products []string) {
	oldest := map[string]uint64{}
	kept := map[cache.VersionRef]bool{}
	for _, p := range products {
		if vs, err := c.store.Versions(p); err == nil && len(vs) > 0 {
			oldest[p] = vs[0].Serial
			for _, v := range vs {
				kept[cache.VersionRef{Product: p, Version: v.Version}] = true
			}
		}
	}
	refs, err := c.store.Manifests()
	if err != nil {
		c.log.Warn("retention: cannot list cached manifests", "err", err)
		return
	}
	var drop []cache.VersionRef
	for _, r := range refs {
		first, held := oldest[r.Product]
		if !held || kept[r] {
			// A kept version keeps its documents, whatever the serial
			// of its manifest (a re-signed version's is below the
			// serial it is held under).
			continue
		}
		c.mu.Lock()
		serial, known := c.serialOfLocked(r.Product, r.Version)
		_, running := c.jobs[r.Product+"/"+r.Version]
		c.mu.Unlock()
		if known && serial < first && !running {
			drop = append(drop, r)
		}
	}
	for _, r := range drop {
		product, version := r.Product, r.Version
		c.forgetManifest(product, version)
		if err := c.store.DeleteManifest(product, version, manifest.ManifestPath(product, version), LatestDocKey(product, version)); err != nil {
			c.log.Warn("retention: cannot delete a manifest and its documents", "product", product, "version", version, "err", err)
		}
	}
}

// forgetManifest drops what register learnt from a version's manifest:
// the versions naming each blob, the sizes of blobs no other known
// version names, and the chunk lists of files no other known version
// names. The publication time stays (endpoint ages).
func (c *Catalog) forgetManifest(product, version string) {
	fetching := map[string]bool{}
	for _, d := range c.blobs.InFlight() { // before c.mu: the fetcher has its own lock
		fetching[d] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetChunkedLocked(product, version)
	for d, vs := range c.blobVersions {
		kept := slices.DeleteFunc(vs, func(ps productSerial) bool { return ps.product == product && ps.version == version })
		if len(kept) == 0 {
			delete(c.blobVersions, d)
			if !fetching[d] {
				delete(c.known, d)
			}
		} else {
			c.blobVersions[d] = kept
		}
	}
}
