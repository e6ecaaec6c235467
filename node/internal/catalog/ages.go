package catalog

import (
	"cmp"
	"slices"
	"time"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
)

// Age buckets, in order.
const (
	AgeCurrent = "current"
	Age24h     = "24h"
	Age3d      = "3d"
	Age7d      = "7d"
)

// AgeBucket returns the age bucket of an installed version lag behind the
// newest one (by publication time).
func AgeBucket(lag time.Duration) string {
	switch {
	case lag >= 7*24*time.Hour:
		return Age7d
	case lag >= 3*24*time.Hour:
		return Age3d
	case lag >= 24*time.Hour:
		return Age24h
	default:
		return AgeCurrent
	}
}

// versionRec is what the DP knows of one version from its manifest.
type versionRec = cache.Published

// rememberVersionLocked records m's serial and publication time. Call with
// c.mu held (register does).
func (c *Catalog) rememberVersionLocked(m *manifest.Manifest) {
	c.rememberLocked(m.Product, versionRec{Version: m.Version, Serial: m.Serial, Published: m.Published})
}

func (c *Catalog) rememberLocked(product string, r versionRec) {
	vs := c.versionRecs[product]
	if vs == nil {
		vs = map[uint64]versionRec{}
		c.versionRecs[product] = vs
	}
	vs[r.Serial] = r
}

// serialOfLocked returns the highest serial a product's version is known
// under, by name (a re-signed version is known under its manifest's serial
// and its latest.json's).
func (c *Catalog) serialOfLocked(product, version string) (uint64, bool) {
	var serial uint64
	found := false
	for s, r := range c.versionRecs[product] {
		if r.Version == version && (!found || s > serial) {
			serial, found = s, true
		}
	}
	return serial, found
}

// persistPublished keeps a version's publication time in the cache before
// its manifest is dropped.
func (c *Catalog) KeepPublished(product string, serial uint64) {
	c.mu.Lock()
	r, ok := c.versionRecs[product][serial]
	c.mu.Unlock()
	if !ok {
		return
	}
	if err := c.store.PutPublished(product, r); err != nil {
		c.log.Warn("cannot keep a version's publication time; endpoint ages may show it as a later one", "product", product, "version", r.Version, "err", err)
	}
}

// AgeRefs holds, per product, what endpoint ages are measured against.
type AgeRefs map[string]*ageRef

// ageRef is what the ages of one product's endpoints are measured against.
type ageRef struct {
	newest versionRec   // the newest version known
	known  []versionRec // every version known, by serial
}

// AgeRefs snapshots, per product, the versions this DP knows: from the
// manifests it registered (held, being fetched, dropped) and upstream's
// latest.json.
func (c *Catalog) AgeRefs() AgeRefs {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := AgeRefs{}
	add := func(product string, r versionRec) {
		ref := out[product]
		if ref == nil {
			ref = &ageRef{}
			out[product] = ref
		}
		ref.known = append(ref.known, r)
		if r.Serial >= ref.newest.Serial {
			ref.newest = r
		}
	}
	for p, vs := range c.versionRecs {
		for _, r := range vs {
			add(p, r)
		}
	}
	for p, ul := range c.upLatest {
		if _, dup := c.versionRecs[p][ul.latest.Serial]; !dup {
			add(p, versionRec{Version: ul.latest.Version, Serial: ul.latest.Serial, Published: ul.latest.Published})
		}
	}
	for _, ref := range out {
		slices.SortFunc(ref.known, func(a, b versionRec) int { return cmp.Compare(a.Serial, b.Serial) })
	}
	return out
}

// age returns the bucket of an endpoint that installed serial of product.
func (refs AgeRefs) Age(product string, serial uint64) string {
	ref := refs[product]
	if ref == nil || serial >= ref.newest.Serial {
		return AgeCurrent
	}
	// The installed version, or else the first known after it.
	i, _ := slices.BinarySearchFunc(ref.known, serial, func(r versionRec, s uint64) int { return cmp.Compare(r.Serial, s) })
	installed := ref.known[i] // exists: ref.newest is after serial
	return AgeBucket(ref.newest.Published.Sub(installed.Published))
}
