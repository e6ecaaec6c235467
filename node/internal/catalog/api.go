package catalog

// ProductSerial names one version of a product.
type ProductSerial struct {
	Product, Version string
	Serial           uint64
}

// VersionsOf returns the versions (from verified manifests) that name
// digest, in the order they were learnt.
func (c *Catalog) VersionsOf(digest string) []ProductSerial {
	vs := c.versionsOf(digest)
	out := make([]ProductSerial, len(vs))
	for i, v := range vs {
		out[i] = ProductSerial{v.product, v.version, v.serial}
	}
	return out
}

// Protected reports whether a version newer than its product's held latest
// (latest; a product absent from it is not held) names digest: a version
// being fetched, or pulled through for a cold site.
func (c *Catalog) Protected(digest string, latest map[string]uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.protectedLocked(digest, latest)
}

// Done is closed when the job ends; Err then says how.
func (j *Job) Done() <-chan struct{} { return j.done }

// Err is nil when the job completed its version; valid once Done is closed.
func (j *Job) Err() error { return j.err }

// Product, Version and Serial name the version the job completes.
func (j *Job) Product() string { return j.product }

// Version is the name of the version the job completes.
func (j *Job) Version() string { return j.version }

// Serial is the serial of the version the job completes.
func (j *Job) Serial() uint64 { return j.serial }
