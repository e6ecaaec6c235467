package node

import (
	"slices"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
)

// The DP's side of retention (package retain runs the passes): what blobs
// versions being fetched protect, what they still need, and the documents of
// versions older than those kept.

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
	fetching := map[string]bool{}
	for _, d := range n.fetcher.InFlight() { // before n.mu: the fetcher has its own lock
		fetching[d] = true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for d, vs := range n.blobVersions {
		kept := slices.DeleteFunc(vs, func(ps productSerial) bool { return ps.product == product && ps.version == version })
		if len(kept) == 0 {
			delete(n.blobVersions, d)
			if !fetching[d] {
				delete(n.known, d)
			}
		} else {
			n.blobVersions[d] = kept
		}
	}
}

// retainView is the DP as package retain sees it (retain.DP). Fetching and
// Protected are called with retain's pin lock held; they take n.mu, which
// is never held while calling into the pins.
type retainView struct{ n *Node }

func (v retainView) Fetching(digest string) bool { return v.n.fetcher.Fetching(digest) }

func (v retainView) Protected(digest string, latest map[string]uint64) bool {
	v.n.mu.Lock()
	defer v.n.mu.Unlock()
	return v.n.protectedLocked(digest, latest)
}

func (v retainView) ReservedBytes() int64 { return v.n.reservedBytes() }

func (v retainView) KeepPublished(product string, serial uint64) {
	v.n.persistPublished(product, serial)
}

func (v retainView) VersionsChanged(product string) { v.n.publishVersions(product) }

func (v retainView) ForgetOldDocuments(products []string) { v.n.forgetOldDocuments(products) }

func (v retainView) Evicted(blobs int, bytes int64) { v.n.metrics.Evicted(blobs, bytes) }
