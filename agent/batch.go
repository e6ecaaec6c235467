package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/dpcache/dpcache/source"
)

// Chunks are many and small (about 80 KiB): fetched one request each, a
// large file costs thousands of round trips. When the first source is a
// DP, the chunks are read from it in batches (source.GRPC.ReadBlobs), each
// verified and committed as it completes; whatever a batch did not
// deliver, for any reason, is then fetched one by one through the
// failover engine, so the batched read can only save time, never fail an
// update.

// batchBytes bounds the bytes of one batched read, so that the chunks of a
// large file are read in several batches at once (Config.Concurrency).
const batchBytes = 16 << 20

// fetchBatches fetches the chunk jobs of jobs in batched reads from
// f.batch, n requests at a time, running one for every other job
// meanwhile, and returns the jobs left to fetch one by one. A chunk
// downloaded in part by an earlier run is left to one, which resumes it.
// Its error is one's, or the end of ctx.
func (f *fetcher) fetchBatches(ctx context.Context, jobs []*blobJob, n int, one func(context.Context, *blobJob) error) ([]*blobJob, error) {
	if f.batch == nil {
		return jobs, nil
	}
	var batches [][]*blobJob
	var cur []*blobJob
	var curBytes int64
	var others []*blobJob
	for _, j := range jobs {
		if j.chunkOf == 0 {
			others = append(others, j)
			continue
		}
		if _, err := os.Lstat(f.partPath(j.digest)); err == nil {
			others = append(others, j)
			continue
		}
		if len(cur) == source.MaxBatchBlobs || (len(cur) > 0 && curBytes+j.size > batchBytes) {
			batches = append(batches, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, j)
		curBytes += j.size
	}
	if len(cur) > 0 {
		batches = append(batches, cur)
	}
	if len(batches) == 0 {
		return jobs, nil
	}
	var mu sync.Mutex // guards left
	var left []*blobJob
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, b := range batches {
		g.Go(func() error {
			rest := f.readBatch(gctx, b)
			mu.Lock()
			left = append(left, rest...)
			mu.Unlock()
			return nil
		})
	}
	for _, j := range others {
		g.Go(func() error { return one(gctx, j) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	return left, nil
}

// readBatch reads the chunks jobs in one batched read, each verified and
// committed as it completes, and returns those it did not deliver.
func (f *fetcher) readBatch(ctx context.Context, jobs []*blobJob) []*blobJob {
	refs := make([]source.BlobRef, len(jobs))
	for i, j := range jobs {
		refs[i] = source.BlobRef{Digest: j.digest}
	}
	done := make([]bool, len(jobs))
	buf := make([]byte, copyBufSize)
	err := f.batch.ReadBlobs(ctx, refs, func(i int, size int64, r io.Reader) error {
		j := jobs[i]
		if size != j.size {
			return fmt.Errorf("%s: %s announced %d bytes, the manifest %d: %w", j, f.batch, size, j.size, ErrDigestMismatch)
		}
		p, err := openPart(f.partPath(j.digest), f.wrap)
		if err != nil {
			return err
		}
		defer p.close()
		s := &partSink{f: f, p: p, digest: j.digest}
		if p.off > 0 { // a chunk listed twice, or left by a failed read
			if err := s.Reset(); err != nil {
				return err
			}
		}
		_, err = io.CopyBuffer(s, io.LimitReader(r, size), buf)
		if err == nil {
			err = s.Verify()
		}
		if err != nil {
			// A part of a chunk is not worth resuming: fetched again whole.
			_ = s.Reset()
			return fmt.Errorf("%s: %w", j, err)
		}
		if err := f.commit(p, j); err != nil {
			return err
		}
		done[i] = true
		f.mu.Lock()
		f.last = f.batch.String()
		f.mu.Unlock()
		return nil
	})
	var left []*blobJob
	for i, j := range jobs {
		if !done[i] {
			left = append(left, j)
		}
	}
	if err != nil && ctx.Err() == nil {
		f.log.Info("batched read ended early; fetching its other chunks one by one", "source", f.batch.String(), "chunks", len(left), "err", err)
	} else if len(left) > 0 && ctx.Err() == nil {
		f.log.Info("batched read lacked chunks; fetching them one by one", "source", f.batch.String(), "chunks", len(left))
	}
	return left
}
