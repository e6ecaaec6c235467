package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

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
// f.batch into packs, adding them to x, n requests at a time, running one for every other job
// meanwhile, and returns the jobs left to fetch one by one. A chunk
// downloaded in part by an earlier run is left to one, which resumes it.
// Its error is one's, or the end of ctx.
func (f *fetcher) fetchBatches(ctx context.Context, jobs []*blobJob, x chunkIndex, n int, one func(context.Context, *blobJob) error) ([]*blobJob, error) {
	if f.batch == nil || x == nil {
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
	var mu sync.Mutex  // guards left
	var xmu sync.Mutex // guards x
	var left []*blobJob
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, b := range batches {
		g.Go(func() error {
			rest := f.readBatch(gctx, b, x, &xmu)
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

// A batch's chunks are written one after the other into a pack file in
// the downloads folder, each after a header (packHeader: its raw SHA-256
// and its size, big-endian), not into a file each: thousands of file
// creations, renames and opens cost more than the transfer. A chunk
// enters the run's chunkIndex once verified; a run interrupted leaves the
// pack, whose chunks the next run finds (scanPacks) and verifies when it
// uses them, like any chunk of an installed file.

// packSuffix ends the name of a pack file.
const packSuffix = ".pack"

// packHeader is the size of the header before each chunk of a pack.
const packHeader = sha256.Size + 8

// readBatch reads the chunks jobs in one batched read into a pack, each
// verified and added to x (under xmu) as it completes, and returns those
// it did not deliver.
func (f *fetcher) readBatch(ctx context.Context, jobs []*blobJob, x chunkIndex, xmu *sync.Mutex) []*blobJob {
	refs := make([]source.BlobRef, len(jobs))
	for i, j := range jobs {
		refs[i] = source.BlobRef{Digest: j.digest}
	}
	done := make([]bool, len(jobs))
	path := filepath.Join(f.dir, fmt.Sprintf("%s-%d%s", jobs[0].digest, time.Now().UnixNano(), packSuffix))
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		f.log.Info("batched read not possible; fetching chunks one by one", "err", err)
		return jobs
	}
	defer out.Close()
	var pos int64 // the pack's length
	buf := make([]byte, copyBufSize)
	h := sha256.New()
	err = f.batch.ReadBlobs(ctx, refs, func(i int, size int64, r io.Reader) error {
		j := jobs[i]
		if size != j.size {
			return fmt.Errorf("%s: %s announced %d bytes, the manifest %d: %w", j, f.batch, size, j.size, ErrDigestMismatch)
		}
		hdr := make([]byte, packHeader)
		raw, _ := hex.DecodeString(j.digest)
		copy(hdr, raw)
		binary.BigEndian.PutUint64(hdr[sha256.Size:], uint64(size))
		h.Reset()
		w := &packWriter{f: f, out: out, h: h, off: pos + packHeader}
		_, err := out.WriteAt(hdr, pos)
		if err == nil {
			_, err = io.CopyBuffer(w, io.LimitReader(r, size), buf)
		}
		if err == nil && hex.EncodeToString(h.Sum(nil)) != j.digest {
			err = &mismatchError{fmt.Sprintf("sha256 %x, want %s", h.Sum(nil), j.digest)}
		}
		if err != nil {
			f.addDone(-w.n) // discarded: fetched again whole
			_ = out.Truncate(pos)
			return fmt.Errorf("%s: %w", j, err)
		}
		xmu.Lock()
		x.add(j.digest, chunkLoc{path: path, off: pos + packHeader, size: size, verified: true})
		xmu.Unlock()
		pos += packHeader + size
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

// packWriter writes a chunk's bytes into a pack at off, hashing and
// counting them.
type packWriter struct {
	f   *fetcher
	out *os.File
	h   hash.Hash
	off int64
	n   int64 // bytes written
}

func (w *packWriter) Write(b []byte) (int, error) {
	w.f.downloaded.Add(int64(len(b)))
	n, err := w.out.WriteAt(b, w.off+w.n)
	w.h.Write(b[:n])
	w.n += int64(n)
	w.f.addDone(int64(n))
	if err != nil {
		return n, &localError{err}
	}
	return n, nil
}

// scanPacks adds to x the chunks of want found in the packs of dir (left
// by an interrupted run). A pack ends where its first incomplete chunk
// starts; the chunks are verified when used.
func scanPacks(dir string, want map[string]bool, x chunkIndex) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), packSuffix) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		in, err := os.Open(path)
		if err != nil {
			continue
		}
		fi, err := in.Stat()
		if err == nil {
			hdr := make([]byte, packHeader)
			for pos := int64(0); pos+packHeader <= fi.Size(); {
				if _, err := in.ReadAt(hdr, pos); err != nil {
					break
				}
				size := int64(binary.BigEndian.Uint64(hdr[sha256.Size:]))
				if size < 0 || size > fi.Size()-pos-packHeader {
					break
				}
				if d := hex.EncodeToString(hdr[:sha256.Size]); want[d] {
					x.add(d, chunkLoc{path: path, off: pos + packHeader, size: size})
				}
				pos += packHeader + size
			}
		}
		in.Close()
	}
}
