package node

import (
	"context"
	"time"

	"github.com/dpcache/dpcache/source"
)

// catalogView is the DP as package catalog sees it (catalog.Blobs and
// catalog.DP): the fetcher, the cluster and the document sources.
type catalogView struct{ n *Node }

func (v catalogView) EnsureBlob(ctx context.Context, digest string) error {
	return v.n.fetcher.EnsureBlob(ctx, digest)
}

func (v catalogView) Received(digest string) (int64, bool) { return v.n.fetcher.Received(digest) }

func (v catalogView) InFlight() []string { return v.n.fetcher.InFlight() }

func (v catalogView) DocSources(ctx context.Context) (upstream, peers []source.Source) {
	return v.n.docSources(ctx)
}

func (v catalogView) PublishVersions(product string) { v.n.publishVersions(product) }

func (v catalogView) WaitJoined(ctx context.Context, max time.Duration) { v.n.waitJoined(ctx, max) }
