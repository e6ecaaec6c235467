package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/mem"

	"github.com/dpcache/dpcache/cache"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// BlobSender is the part of a ReadBlob stream the senders use; the HTTP
// /repo/ handler implements it too.
type BlobSender interface {
	SendMsg(m any) error
}

// ReadBlob streams digest from off: from the cache when whole, else from
// the in-flight fetch as its bytes arrive (stored chunks, then the bytes
// not stored yet, from memory). A forwarded request (from a peer DP) never
// waits on peers or owners, and keeps the fetch close to the peer.
func (fr *Fetcher) ReadBlob(ctx context.Context, digest string, off int64, forwarded bool, stream BlobSender) error {
	if off < 0 {
		return fmt.Errorf("blob %s: negative offset %d: %w", digest, off, nodeerr.ErrInvalid)
	}
	release, err := fr.pins.StartReading(ctx, digest) // retention never deletes a blob being streamed
	if err != nil {
		return err
	}
	defer release()
	f, size, err := fr.acquire(ctx, digest, forwarded)
	if err != nil {
		return err
	}
	fr.metrics.CacheRequest(f == nil)
	bufs := fr.pool.stream()
	defer bufs.done()
	if f == nil {
		if off > size {
			return fmt.Errorf("blob %s: offset %d past its size %d: %w", digest, off, size, nodeerr.ErrInvalid)
		}
		if err := stream.SendMsg(&pb.BlobChunk{Size: uint64(size)}); err != nil {
			return err
		}
		_, err = fr.sendRange(ctx, digest, off, size, stream, bufs, false)
		return err
	}
	if off > f.size {
		return fmt.Errorf("blob %s: offset %d past its size %d: %w", digest, off, f.size, nodeerr.ErrInvalid)
	}
	// Answer at once with the size: the caller learns the blob exists while
	// the first bytes are still on their way.
	if err := stream.SendMsg(&pb.BlobChunk{Size: uint64(f.size)}); err != nil {
		return err
	}
	if forwarded {
		// A peer DP waiting on this fetch: keep the fetch close to it.
		id := f.addPeer(off)
		defer f.removePeer(id)
		return fr.streamFetch(ctx, f, off, stream, bufs, false, func(pos int64) { f.movePeer(id, pos) })
	}
	return fr.streamFetch(ctx, f, off, stream, bufs, false, nil)
}

// ReadAvailable streams the bytes of digest this DP holds now (whole,
// stored, or arrived and still in memory) from off, then ends; it never
// fetches.
func (fr *Fetcher) ReadAvailable(ctx context.Context, digest string, off int64, _ bool, stream BlobSender) error {
	if off < 0 {
		return fmt.Errorf("blob %s: negative offset %d: %w", digest, off, nodeerr.ErrInvalid)
	}
	release, err := fr.pins.StartReading(ctx, digest)
	if err != nil {
		return err
	}
	defer release()
	bufs := fr.pool.stream()
	defer bufs.done()
	fr.mu.Lock()
	f := fr.fetches[digest]
	fr.mu.Unlock()
	if f != nil {
		if err := stream.SendMsg(&pb.BlobChunk{Size: uint64(f.size)}); err != nil {
			return err
		}
		return fr.streamFetch(ctx, f, off, stream, bufs, true, nil)
	}
	info, err := fr.store.Blob(digest)
	if err != nil {
		return fmt.Errorf("blob %s: %w", digest, err)
	}
	if err := stream.SendMsg(&pb.BlobChunk{Size: uint64(max(info.Size, 0))}); err != nil {
		return err
	}
	if off >= info.Stored {
		return nil
	}
	_, err = fr.sendRange(ctx, digest, off, info.Stored, stream, bufs, !info.Whole)
	return err
}

// streamFetch sends f's bytes from pos as they arrive. With availableOnly
// it sends what is there now and returns instead of waiting. progress, when
// set, learns each new position.
func (fr *Fetcher) streamFetch(ctx context.Context, f *fetch, pos int64, stream BlobSender, bufs *streamBuffers, availableOnly bool, progress func(int64)) error {
	start := pos
	startGen := f.snapshot().gen
	for {
		st := f.snapshot()
		if st.gen != startGen {
			if pos > start {
				return fmt.Errorf("blob %s: %w: the source sent corrupt bytes, which were discarded; retry", f.digest, nodeerr.ErrDataLoss)
			}
			startGen = st.gen
		}
		// The blob's last byte is held back until it is whole and
		// verified: a reader never has every byte of a blob that then
		// fails its digest check, only an error (DataLoss) that tells it
		// to read again.
		flushed, written := min(st.flushed, f.size-1), min(st.written, f.size-1)
		switch {
		case st.done && st.err != nil && pos >= written:
			return st.err
		case st.done && st.err == nil:
			// Whole now: the rest comes from the cache.
			_, err := fr.sendRange(ctx, f.digest, pos, f.size, stream, bufs, false)
			return err
		case pos < flushed:
			sent, err := fr.sendRange(ctx, f.digest, pos, flushed, stream, bufs, true)
			pos += sent
			if progress != nil && sent > 0 {
				progress(pos)
			}
			if err != nil && !errors.Is(err, cache.ErrNotFound) {
				return err
			}
			// ErrNotFound: the blob became whole or was discarded
			// meanwhile; look again.
			continue
		case pos < written:
			sent, err := fr.sendTail(ctx, f, pos, written, stream, bufs)
			pos += sent
			if progress != nil && sent > 0 {
				progress(pos)
			}
			if err != nil {
				return err
			}
			if sent > 0 || f.snapshot().flushed > pos {
				// Sent, or stored since the snapshot (the writer
				// stores behind the fetch): read it from the cache
				// now rather than wait for the next bytes.
				continue
			}
		}
		if availableOnly {
			return nil
		}
		if st.done {
			// Failed, and what it had is sent (or no longer at hand): a
			// caller resumes elsewhere at its offset.
			return st.err
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendTail sends one chunk of f's bytes before to that are not stored yet,
// from the cache writer's memory; 0 when pos is no longer in memory (stored
// meanwhile, or the writer has finished).
func (fr *Fetcher) sendTail(ctx context.Context, f *fetch, pos, to int64, stream BlobSender, bufs *streamBuffers) (int64, error) {
	buf, err := bufs.get(ctx, int(min(int64(fr.cfg.ServeChunk), to-pos)))
	if err != nil {
		return 0, err
	}
	nr := f.readTail(*buf, pos)
	if nr == 0 {
		bufs.Put(buf)
		return 0, nil
	}
	*buf = (*buf)[:nr]
	if err := stream.SendMsg(&pb.BlobChunk{Data: mem.NewBuffer(buf, bufs)}); err != nil {
		return 0, err
	}
	fr.traffic.served.Add(int64(nr))
	return int64(nr), nil
}

// sendRange sends bytes [from, to) of digest, read from the whole blob or,
// with pending, from the stored chunks of an ingest in progress. It returns
// the bytes sent.
func (fr *Fetcher) sendRange(ctx context.Context, digest string, from, to int64, stream BlobSender, bufs *streamBuffers, pending bool) (int64, error) {
	chunk := int64(fr.cfg.ServeChunk)
	pos := from
	for pos < to {
		if err := ctx.Err(); err != nil {
			return pos - from, err
		}
		l := min(chunk, to-pos)
		buf, err := bufs.get(ctx, int(l))
		if err != nil {
			return pos - from, err
		}
		var nr int
		if pending {
			nr, err = fr.store.ReadPendingAt(digest, *buf, pos)
		} else {
			nr, err = fr.store.ReadAt(digest, *buf, pos)
		}
		if nr == int(l) {
			err = nil
		} else if err == nil || err == io.EOF {
			err = fmt.Errorf("blob %s: short read at %d: %w", digest, pos, nodeerr.ErrDataLoss)
		}
		if err != nil {
			bufs.Put(buf)
			return pos - from, err
		}
		if err := stream.SendMsg(&pb.BlobChunk{Data: mem.NewBuffer(buf, bufs)}); err != nil {
			return pos - from, err
		}
		fr.traffic.served.Add(l)
		pos += l
	}
	return pos - from, nil
}
