package catalog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// Job is one version completion in flight (startVersion). Its
// progress is read by AdminService.Prefetch.
type Job struct {
	product, version string
	serial           uint64
	done             chan struct{} // closed when the job ends; err then says how
	err              error         // written before done is closed

	// limited is set while the job is the download task's alone (it
	// started it): its upstream fetches are under the rate limit until
	// prefetch or an endpoint waits for the job too (source.WithBackground).
	limited atomic.Bool

	mu    sync.Mutex      // protects the fields below
	blobs []manifest.File // the version's blobs in fetch order; nil until its manifest is known
	whole map[string]bool // blobs held whole, by digest
}

func newJob(product string, l *manifest.Latest) *Job {
	return &Job{product: product, version: l.Version, serial: l.Serial, done: make(chan struct{}), whole: map[string]bool{}}
}

// setBlobs records the version's blobs and which of them the cache
// already holds whole.
func (j *Job) setBlobs(s Store, blobs []manifest.File) {
	whole := make(map[string]bool, len(blobs))
	for _, f := range blobs {
		if _, err := s.Stat(f.SHA256); err == nil {
			whole[f.SHA256] = true
		}
	}
	j.mu.Lock()
	j.blobs = blobs
	for d := range whole {
		j.whole[d] = true
	}
	j.mu.Unlock()
}

func (j *Job) blobDone(digest string) {
	j.mu.Lock()
	j.whole[digest] = true
	j.mu.Unlock()
}

func (j *Job) finish(err error) {
	j.err = err
	close(j.done)
}

// missing returns the blobs of the job not held whole yet.
func (j *Job) missing() []manifest.File {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []manifest.File
	for _, f := range j.blobs {
		if !j.whole[f.SHA256] {
			out = append(out, f)
		}
	}
	return out
}

// fetchOrder returns m's distinct blobs with those of databases files
// first (when the upstream budget is short, antivirus bases matter most),
// then those of modules, each group in manifest order.
func fetchOrder(m *manifest.Manifest) (databases, modules []manifest.File) {
	db := map[string]bool{}
	for _, f := range m.Files {
		if f.Component == manifest.ComponentDatabases {
			for _, p := range f.Parts() {
				db[p.SHA256] = true
			}
		}
	}
	for _, f := range m.Blobs() {
		if db[f.SHA256] {
			databases = append(databases, f)
		} else {
			modules = append(modules, f)
		}
	}
	return databases, modules
}

// progress describes j now: blobs and bytes held whole, plus the bytes
// received so far of the blobs being fetched.
func (c *Catalog) Progress(j *Job) *pb.PrefetchResponse {
	j.mu.Lock()
	blobs := slices.Clone(j.blobs)
	whole := make(map[string]bool, len(j.whole))
	for d := range j.whole {
		whole[d] = true
	}
	j.mu.Unlock()
	p := &pb.PrefetchResponse{Product: j.product, Version: j.version, Serial: j.serial, BlobsTotal: uint64(len(blobs))}
	for _, f := range blobs {
		p.BytesTotal += uint64(f.Size)
		if whole[f.SHA256] {
			p.BlobsDone++
			p.BytesDone += uint64(f.Size)
		} else if got, ok := c.blobs.Received(f.SHA256); ok {
			p.BytesDone += uint64(got)
		}
	}
	return p
}

// prefetchNow runs the download task for product now, whatever the
// upstream window: it asks upstream for the latest and starts completing
// it when it is newer than the version held. It returns the completion,
// or nil with the version held when that is already upstream's latest.
func (c *Catalog) PrefetchNow(ctx context.Context, product string) (*Job, cache.Version, error) {
	if err := manifest.ValidName(product); err != nil {
		return nil, cache.Version{}, fmt.Errorf("product %q: %w: %v", product, nodeerr.ErrInvalid, err)
	}
	c.AddProduct(product)
	ul, err := c.upstreamLatest(ctx, product, 0)
	if err != nil {
		return nil, cache.Version{}, err
	}
	held, err := c.store.LatestVersion(product)
	switch {
	case err == nil && held.Serial >= ul.latest.Serial:
		if held.Serial > ul.latest.Serial {
			c.log.Warn("prefetch: upstream offers a lower serial than held; keeping what is held", "product", product, "upstream_serial", ul.latest.Serial, "held_serial", held.Serial)
		}
		return nil, held, nil
	case err != nil && !errors.Is(err, cache.ErrNotFound):
		return nil, cache.Version{}, fmt.Errorf("product %s: %w", product, err)
	}
	j := c.startVersion(ctx, product, ul, waiter)
	if j == nil {
		return nil, cache.Version{}, fmt.Errorf("product %s: %w: the DP is shutting down", product, nodeerr.ErrUnavailable)
	}
	return j, cache.Version{}, nil
}
