package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// Chunks are many and small (about 80 KiB): fetched one request each, a
// large file costs thousands of round trips. When the sources start with
// DPs, the chunks are read from them in batches (source.GRPC.ReadBlobs),
// from up to maxBatchDPs of them at once, each chunk verified and written
// into its file (assembly) as it comes; whatever no DP delivered, for any
// reason, is then fetched one by one through the failover engine, so the
// batched reads can only save time, never fail an update.
//
// The batches wait in one queue, in file order, and each DP's readers take
// the next batch they have not tried. A batch a DP delivered only in part
// (it lacks chunks) goes back to the front of the queue for the other DPs;
// a DP whose stream fails, stalls (source.GRPC's stall timeout) or sends a
// chunk that does not match its digest is dropped for the run, and its
// batch goes back to the others likewise. So the DPs that hold the version
// share its chunks, each at its own pace.

// batchBytes bounds the bytes of one batched read, so that the chunks of a
// large file are read in several batches at once (Config.Concurrency);
// smaller files are cut in batches of at least minBatchBytes, about four
// per reader, so that every DP gets a share.
const (
	batchBytes    = 16 << 20
	minBatchBytes = 1 << 20
)

// maxBatchDPs is the most DPs chunks are read from at once.
const maxBatchDPs = 3

// batchDPs returns the DPs that chunks are read from in batches: the DPs
// at the head of srcs (in failover order), at most maxBatchDPs.
func batchDPs(srcs []source.Source) []*source.GRPC {
	var out []*source.GRPC
	for _, s := range srcs {
		g, ok := s.(*source.GRPC)
		if !ok || len(out) == maxBatchDPs {
			break
		}
		out = append(out, g)
	}
	return out
}

// batch is chunks to read in one request, and the DPs that tried them.
type batch struct {
	jobs  []*blobJob
	tried []bool // by DP index
}

// batchQueue hands batches to the DPs' readers.
type batchQueue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	pending  []*batch
	inflight int
	dropped  []bool // by DP index
	stopped  bool   // the context ended
}

// take returns the first pending batch DP k has not tried, waiting while
// batches in flight may come back for it; nil when there is none.
func (q *batchQueue) take(k int) *batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if q.stopped || q.dropped[k] {
			return nil
		}
		for i, b := range q.pending {
			if !b.tried[k] {
				q.pending = slices.Delete(q.pending, i, i+1)
				q.inflight++
				return b
			}
		}
		if q.inflight == 0 {
			return nil
		}
		q.cond.Wait()
	}
}

// done returns what DP k did not deliver of b to the front of the queue,
// and drops k if drop. It reports whether this call dropped k (a DP with
// several readers may fail in each).
func (q *batchQueue) done(k int, b *batch, rest []*blobJob, drop bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.inflight--
	if len(rest) > 0 {
		b.jobs, b.tried[k] = rest, true
		q.pending = slices.Insert(q.pending, 0, b)
	}
	dropped := drop && !q.dropped[k]
	if drop {
		q.dropped[k] = true
	}
	q.cond.Broadcast()
	return dropped
}

// fetchBatches fetches the chunk jobs of jobs in batched reads from
// f.batch into a, running for every other job one, n at a time, and
// returns the jobs left to fetch one by one. Each DP is read by n/len(DPs)
// requests at a time, rounded up. A chunk downloaded in part by an
// earlier run is left to one, which resumes it. Its error is one's, or the
// end of ctx.
func (f *fetcher) fetchBatches(ctx context.Context, jobs []*blobJob, a *assembly, n int, one func(context.Context, *blobJob) error) ([]*blobJob, error) {
	if len(f.batch) == 0 || a == nil {
		return jobs, nil
	}
	q := &batchQueue{dropped: make([]bool, len(f.batch))}
	q.cond = sync.NewCond(&q.mu)
	per := max(1, (n+len(f.batch)-1)/len(f.batch))
	var total int64
	for _, j := range jobs {
		if j.chunkOf > 0 {
			total += j.size
		}
	}
	size := min(batchBytes, max(minBatchBytes, total/int64(4*per*len(f.batch))))
	var cur []*blobJob
	var curBytes int64
	var others []*blobJob
	flush := func() {
		if len(cur) > 0 {
			q.pending = append(q.pending, &batch{jobs: cur, tried: make([]bool, len(f.batch))})
			cur, curBytes = nil, 0
		}
	}
	for _, j := range jobs {
		if j.chunkOf == 0 || j.size > maxBufferedChunk {
			others = append(others, j)
			continue
		}
		if _, err := os.Lstat(f.partPath(j.digest)); err == nil {
			others = append(others, j)
			continue
		}
		if len(cur) == source.MaxBatchBlobs || (len(cur) > 0 && curBytes+j.size > size) {
			flush()
		}
		cur = append(cur, j)
		curBytes += j.size
	}
	flush()
	if len(q.pending) == 0 {
		return jobs, nil
	}
	g, gctx := errgroup.WithContext(ctx)
	stop := context.AfterFunc(gctx, func() {
		q.mu.Lock()
		q.stopped = true
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	defer stop()
	for k, dp := range f.batch {
		for range per {
			g.Go(func() error {
				var buf []byte // one chunk, grown to the largest
				for {
					b := q.take(k)
					if b == nil {
						return nil
					}
					rest, err := f.readBatch(gctx, dp, b.jobs, a, &buf)
					switch {
					case gctx.Err() != nil:
					case err != nil:
						f.log.Info("batched read failed; reading its chunks elsewhere", "source", dp.String(), "chunks", len(rest), "err", err)
					case len(rest) > 0:
						f.log.Info("batched read lacked chunks; reading them elsewhere", "source", dp.String(), "chunks", len(rest))
					}
					var le *localError
					if errors.As(err, &le) {
						q.done(k, b, rest, true)
						return err
					}
					// A DP that failed, lied or holds none of a batch is
					// not asked again in this run; one that failed is
					// also tried after the others for the chunks read one
					// by one (the failover engine's backoff).
					if q.done(k, b, rest, err != nil || len(rest) == len(b.jobs)) && err != nil && gctx.Err() == nil {
						f.chain.Failed(dp, err)
					}
				}
			})
		}
	}
	g.Go(func() error { return eachJob(gctx, others, n, one) })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	var left []*blobJob
	for _, b := range q.pending {
		left = append(left, b.jobs...)
	}
	return left, nil
}

// readBatch reads the chunks jobs from dp in one batched read, each
// verified and written into a as it completes, and returns those it did
// not deliver, with the error that ended the read (a *localError if
// writing failed). *buf holds a chunk; it is grown as needed.
func (f *fetcher) readBatch(ctx context.Context, dp *source.GRPC, jobs []*blobJob, a *assembly, buf *[]byte) ([]*blobJob, error) {
	refs := make([]source.BlobRef, len(jobs))
	for i, j := range jobs {
		refs[i] = source.BlobRef{Digest: j.digest}
	}
	done := make([]bool, len(jobs))
	err := dp.ReadBlobs(ctx, refs, func(i int, size int64, r io.Reader) error {
		j := jobs[i]
		if size != j.size {
			return fmt.Errorf("%s: %s announced %d bytes, the manifest %d: %w", j, dp, size, j.size, ErrDigestMismatch)
		}
		if int64(cap(*buf)) < size {
			*buf = make([]byte, max(size, manifest.ChunkMaxSize))
		}
		b := (*buf)[:size]
		n, err := io.ReadFull(&countingRead{f: f, r: r}, b)
		if err == nil && !sumIs(b, j.digest) {
			err = &mismatchError{fmt.Sprintf("chunk from %s does not match sha256 %s", dp, j.digest)}
		}
		if err != nil {
			f.addDone(-int64(n)) // discarded: fetched again whole
			return fmt.Errorf("%s: %w", j, err)
		}
		if err := a.put(j.digest, b); err != nil {
			return fmt.Errorf("%s: %w", j, err)
		}
		done[i] = true
		f.mu.Lock()
		f.last = dp.String()
		f.mu.Unlock()
		return nil
	})
	var left []*blobJob
	for i, j := range jobs {
		if !done[i] {
			left = append(left, j)
		}
	}
	return left, err
}

// countingRead counts the bytes read from a source.
type countingRead struct {
	f *fetcher
	r io.Reader
}

func (c *countingRead) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.f.downloaded.Add(int64(n))
		c.f.addDone(int64(n))
	}
	return n, err
}
