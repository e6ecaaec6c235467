package catalog

import (
	"slices"

	"github.com/dpcache/dpcache/manifest"
)

// chunkedFile is a chunked file that verified manifests name: its chunk
// list, and the versions naming it (the entry lives as long as one of them
// is known, like the blob sizes).
type chunkedFile struct {
	size     int64
	chunks   []manifest.Chunk
	versions []productSerial
}

// ChunkedFile is a file that the repository stores only as chunks: its
// whole SHA-256 and size, and its chunks in file order, as a verified
// manifest lists them (the chunks add up to Size; their bytes in order
// hash to SHA256 unless the publisher lied, which a reader of the whole
// file must check).
type ChunkedFile struct {
	SHA256 string
	Size   int64
	Chunks []manifest.Chunk
}

// Chunked returns the chunked file whose whole digest is digest, when a
// verified manifest the DP knows names one. The chunk list is shared: do
// not modify it.
func (c *Catalog) Chunked(digest string) (ChunkedFile, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.chunked[digest]
	if !ok {
		return ChunkedFile{}, false
	}
	return ChunkedFile{SHA256: digest, Size: f.size, Chunks: f.chunks}, true
}

// registerChunkedLocked records the chunk lists of m's chunked files. A
// file that another version already lists keeps the first list learnt
// (any verified list of the same bytes will do). Call with c.mu held.
func (c *Catalog) registerChunkedLocked(m *manifest.Manifest) {
	ps := productSerial{m.Product, m.Version, m.Serial}
	for _, f := range m.Files {
		if len(f.Chunks) == 0 {
			continue
		}
		cf := c.chunked[f.SHA256]
		if cf == nil {
			cf = &chunkedFile{size: f.Size, chunks: f.Chunks}
			c.chunked[f.SHA256] = cf
		}
		if !slices.ContainsFunc(cf.versions, func(v productSerial) bool { return v.product == ps.product && v.version == ps.version }) {
			cf.versions = append(cf.versions, ps)
		}
	}
}

// forgetChunkedLocked drops the version from the chunked files it names,
// and the files no known version names any more. Call with c.mu held.
func (c *Catalog) forgetChunkedLocked(product, version string) {
	for d, cf := range c.chunked {
		cf.versions = slices.DeleteFunc(cf.versions, func(ps productSerial) bool { return ps.product == product && ps.version == version })
		if len(cf.versions) == 0 {
			delete(c.chunked, d)
		}
	}
}
