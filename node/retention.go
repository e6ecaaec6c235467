package node

import ()

// retainView is the DP as package retain sees it (retain.DP): the fetcher
// and the catalogue. Fetching and Protected are called with retain's pin
// lock held; they take the fetcher's and the catalogue's locks, which are
// never held while calling into the pins.
type retainView struct{ n *Node }

func (v retainView) Fetching(digest string) bool { return v.n.fetcher.Fetching(digest) }

func (v retainView) Protected(digest string, latest map[string]uint64) bool {
	return v.n.catalog.Protected(digest, latest)
}

func (v retainView) ReservedBytes() int64 { return v.n.catalog.ReservedBytes() }

func (v retainView) KeepPublished(product string, serial uint64) {
	v.n.catalog.KeepPublished(product, serial)
}

func (v retainView) VersionsChanged(product string) { v.n.publishVersions(product) }

func (v retainView) ForgetOldDocuments(products []string) { v.n.catalog.ForgetOldDocuments(products) }

func (v retainView) Evicted(blobs int, bytes int64) { v.n.metrics.Evicted(blobs, bytes) }
