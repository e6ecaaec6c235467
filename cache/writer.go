package cache

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Writer ingests one blob: it hashes the bytes as they are written, stores
// them in chunks, and makes the blob visible only when Commit finds the
// SHA-256 equal to the digest.
//
// Write, Commit, Abort and Discard must be called from one goroutine at a
// time. Digest, Size, Offset, Flushed and Progress are safe to call from any
// goroutine, concurrently with the others (to stream a blob while it is
// fetched, see [Cache.ReadPendingAt]).
type Writer struct {
	c         *Cache
	k         key
	size      int64 // SizeUnknown or the announced size
	chunkSize int
	batch     int // bytes of full chunks stored per transaction

	// Owned by the writing goroutine. While a flush runs (inflight != nil),
	// its goroutine owns inflightBuf and reads stored and created, which
	// the writing goroutine changes only after wait.
	h           hash.Hash
	off         int64  // bytes written (hashed)
	stored      int64  // bytes in stored chunks, not counting a running flush
	buf         []byte // bytes [stored+len(inflightBuf), off)
	spare       []byte // a buffer for reuse, given back by the last flush
	created     bool   // the meta record exists
	done        bool
	inflight    chan error // result of the running flush, if any
	inflightBuf []byte     // the full chunks the running flush stores

	offset  atomic.Int64
	flushed atomic.Int64

	// mu protects progress and finished.
	mu       sync.Mutex
	progress chan struct{}
	finished bool
}

// NewWriter starts or resumes the ingest of the blob digest (64 lower-case
// hex characters) of size bytes (or [SizeUnknown]).
//
// If a pending blob with this digest is stored (an aborted fetch, a crash),
// the Writer resumes it: it re-reads and re-hashes the stored bytes to
// restore the SHA-256 state, and [Writer.Offset] tells where the caller must
// resume fetching. A pending blob whose announced size differs from size, or
// whose stored chunks are damaged, is dropped and the ingest starts over.
//
// It returns [ErrExists] when the blob is already whole and [ErrBusy] while
// another Writer (or a DeleteBlob) works on the digest. Call Commit, Abort or
// Discard to release the digest; `defer w.Abort()` is a safe pattern (Abort
// after Commit does nothing).
func (c *Cache) NewWriter(digest string, size int64) (*Writer, error) {
	k, err := parseDigest(digest)
	if err != nil {
		return nil, err
	}
	if size < 0 && size != SizeUnknown {
		return nil, fmt.Errorf("new writer for blob %s: negative size %d: %w", k, size, ErrInvalid)
	}
	if size > maxBlobSize(c.cfg.ChunkSize) {
		return nil, fmt.Errorf("new writer for blob %s: size %d above the %d bytes a chunk size of %d can address: %w",
			k, size, maxBlobSize(c.cfg.ChunkSize), c.cfg.ChunkSize, ErrTooLarge)
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	w := &Writer{c: c, k: k, size: size, chunkSize: c.cfg.ChunkSize, h: sha256.New(), progress: make(chan struct{})}
	if err := c.claim(k, w); err != nil {
		return nil, fmt.Errorf("new writer: %w", err)
	}
	if err := w.resume(); err != nil {
		c.release(k)
		return nil, err
	}
	if w.size > maxBlobSize(w.chunkSize) { // a resumed blob keeps its chunk size
		c.release(k)
		return nil, fmt.Errorf("new writer for blob %s: size %d above the %d bytes its chunk size of %d can address: %w",
			k, size, maxBlobSize(w.chunkSize), w.chunkSize, ErrTooLarge)
	}
	w.batch = c.cfg.flushChunks(w.chunkSize) * w.chunkSize
	capacity := int64(w.chunkSize) // grows by append up to batch
	if w.size != SizeUnknown {
		capacity = min(int64(w.batch), w.size-w.off)
	}
	w.buf = make([]byte, 0, capacity)
	w.offset.Store(w.off)
	w.flushed.Store(w.stored)
	return w, nil
}

// resume loads a pending blob's state, if any.
func (w *Writer) resume() error {
	var m blobMeta
	var ok bool
	err := w.c.view(func(tx *bolt.Tx) error {
		var err error
		m, ok, err = getMeta(tx, w.k)
		return err
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("new writer for blob %s: %w", w.k, err)
	}
	if err == nil && !ok {
		return nil // a fresh ingest
	}
	if err == nil && m.state == stateWhole {
		return fmt.Errorf("new writer for blob %s: %w", w.k, ErrExists)
	}
	reason := ""
	switch {
	case err != nil:
		reason = err.Error()
	case w.size != SizeUnknown && m.size != SizeUnknown && w.size != m.size:
		reason = fmt.Sprintf("pending blob was announced with %d bytes, now %d", m.size, w.size)
	case w.size != SizeUnknown && m.stored > w.size:
		reason = fmt.Sprintf("pending blob has %d bytes stored, more than the %d announced", m.stored, w.size)
	case m.stored%int64(m.chunkSize) != 0:
		reason = fmt.Sprintf("pending blob has %d bytes stored, not a multiple of its chunk size %d", m.stored, m.chunkSize)
	}
	if reason == "" {
		w.chunkSize = int(m.chunkSize)
		if w.size == SizeUnknown {
			w.size = m.size
		}
		start := time.Now()
		n, err := hashBlob(w.c, w.k, w.h, m.stored, func(tx *bolt.Tx) (blobMeta, error) {
			m2, ok, err := getMeta(tx, w.k)
			if err == nil && (!ok || m2.state != statePending || m2.stored != m.stored) {
				err = fmt.Errorf("blob %s changed during resume: %w", w.k, ErrCorrupt)
			}
			return m2, err
		})
		if err == nil {
			w.off, w.stored, w.created = n, n, true
			w.c.log.Info("resuming pending blob", "digest", w.k.String(), "offset", n, "size", w.size, "rehash", time.Since(start))
			return nil
		}
		if !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("new writer for blob %s: re-hash stored bytes: %w", w.k, err)
		}
		reason = err.Error()
		w.h.Reset()
	}
	w.c.log.Warn("dropping pending blob and starting over", "digest", w.k.String(), "reason", reason)
	err = w.c.update(false, func(tx *bolt.Tx) error {
		_, err := deleteBlobTx(tx, w.k)
		return err
	})
	if err != nil {
		return fmt.Errorf("new writer for blob %s: drop damaged pending blob: %w", w.k, err)
	}
	return nil
}

// Digest returns the blob's digest.
func (w *Writer) Digest() string { return w.k.String() }

// Size returns the announced size, or SizeUnknown.
func (w *Writer) Size() int64 { return w.size }

// Offset returns the number of bytes written so far: where the caller must
// resume fetching (after a resume, the bytes already stored).
func (w *Writer) Offset() int64 { return w.offset.Load() }

// Flushed returns how many bytes [Cache.ReadPendingAt] can read: the full
// chunks stored so far, and all the bytes after a successful Commit.
func (w *Writer) Flushed() int64 { return w.flushed.Load() }

// Progress returns a channel that is closed the next time Flushed advances
// or the Writer finishes (Commit, Abort, Discard). Call it again for the next
// change. Once the Writer has finished, the channel returned is closed.
func (w *Writer) Progress() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.progress
}

func (w *Writer) notify() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.finished {
		close(w.progress)
		w.progress = make(chan struct{})
	}
}

// finish releases the digest and wakes those waiting on Progress.
func (w *Writer) finish() {
	_ = w.wait() // never leave a flush running
	w.done = true
	w.c.release(w.k)
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.finished {
		w.finished = true
		close(w.progress)
	}
}

// Write hashes p and stores it, a batch of full chunks per transaction
// (Config.FlushSize). Storing runs in the background while the next batch is
// written and hashed (at most one batch in flight). Bytes beyond the
// announced size are refused whole with [ErrTooLarge]. If storing fails, n
// counts the bytes accepted (they stay buffered and the next Write or Commit
// retries); Abort or Discard the Writer.
func (w *Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, fmt.Errorf("write blob %s: %w", w.k, ErrWriterDone)
	}
	if w.c.closed.Load() {
		return 0, fmt.Errorf("write blob %s: %w", w.k, ErrClosed)
	}
	limit := w.size
	if limit == SizeUnknown {
		limit = maxBlobSize(w.chunkSize)
	}
	if int64(len(p)) > limit-w.off {
		return 0, fmt.Errorf("write blob %s: %d bytes at offset %d exceed its size %d: %w", w.k, len(p), w.off, limit, ErrTooLarge)
	}
	n := 0
	for len(p) > 0 {
		if len(w.buf) >= w.batch {
			if err := w.flush(); err != nil {
				return n, err
			}
		}
		take := min(len(p), w.batch-len(w.buf))
		w.buf = append(w.buf, p[:take]...)
		_, _ = w.h.Write(p[:take])
		w.off += int64(take)
		n += take
		p = p[take:]
		w.offset.Store(w.off)
	}
	if len(w.buf) >= w.batch {
		if err := w.flush(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Flush stores the full chunks buffered so far and waits until they are
// stored, so that concurrent readers see them now rather than after the next
// batch. Write stores batches by itself.
func (w *Writer) Flush() error {
	if w.done {
		return fmt.Errorf("flush blob %s: %w", w.k, ErrWriterDone)
	}
	if err := w.flush(); err != nil {
		return err
	}
	return w.wait()
}

// flush waits for the running flush, then starts storing the full chunks of
// buf in one (ingest) transaction in a goroutine; wait collects the result.
func (w *Writer) flush() error {
	if err := w.wait(); err != nil {
		return err
	}
	full := len(w.buf) / w.chunkSize * w.chunkSize
	if full == 0 {
		return nil
	}
	data := w.buf[:full]
	next := w.spare
	if cap(next) < w.batch {
		next = make([]byte, 0, min(int64(w.batch), int64(cap(w.buf))))
	}
	w.buf = append(next[:0], w.buf[full:]...)
	w.spare = nil
	done := make(chan error, 1)
	w.inflight, w.inflightBuf = done, data
	stored, created := w.stored, w.created
	go func() {
		err := w.c.update(true, func(tx *bolt.Tx) error {
			return w.store(tx, data, stored, created, false)
		})
		if err == nil {
			w.flushed.Store(stored + int64(len(data)))
			w.notify()
		}
		done <- err
	}()
	return nil
}

// wait waits for the running flush, if any. On failure the flush's bytes go
// back to the front of buf, so no accepted byte is lost.
func (w *Writer) wait() error {
	if w.inflight == nil {
		return nil
	}
	err := <-w.inflight
	data := w.inflightBuf
	w.inflight, w.inflightBuf = nil, nil
	if err != nil {
		w.buf = append(append(make([]byte, 0, len(data)+len(w.buf)), data...), w.buf...)
		return fmt.Errorf("store chunks of blob %s at offset %d: %w", w.k, w.stored, err)
	}
	w.stored += int64(len(data))
	w.created = true
	w.spare = data[:0]
	return nil
}

// store puts data (starting at offset stored) as chunks and updates the meta
// record, flipping it to whole if whole is set. bbolt keeps references to
// data until the transaction commits; nothing writes to it before.
func (w *Writer) store(tx *bolt.Tx, data []byte, stored int64, created, whole bool) error {
	blobs, chunks := tx.Bucket(bucketBlobs), tx.Bucket(bucketChunks)
	m, ok, err := getMeta(tx, w.k)
	if err != nil {
		return err
	}
	now := nanos(time.Now())
	switch {
	case !ok && created:
		return fmt.Errorf("pending blob %s disappeared under its writer: %w", w.k, ErrCorrupt)
	case !ok:
		m = blobMeta{state: statePending, chunkSize: uint32(w.chunkSize), added: now}
	case m.state != statePending || m.stored != stored || int(m.chunkSize) != w.chunkSize:
		return fmt.Errorf("pending blob %s changed under its writer (stored %d, want %d): %w", w.k, m.stored, stored, ErrCorrupt)
	}
	idx := stored / int64(w.chunkSize)
	for len(data) > 0 {
		n := min(len(data), w.chunkSize)
		if err := chunks.Put(chunkKey(w.k, uint32(idx)), data[:n]); err != nil {
			return err
		}
		data = data[n:]
		idx++
		m.stored += int64(n)
	}
	m.size, m.updated = w.size, now
	if whole {
		m.state, m.size, m.added = stateWhole, m.stored, now
	}
	return blobs.Put(w.k[:], m.encode())
}

// Commit stores the remaining bytes, checks the size and the SHA-256, and
// makes the blob whole in one transaction, synced to disk, after syncing the
// chunks stored before (see # Caveats in the package doc).
//
// If fewer bytes than the announced size were written it returns
// [ErrSizeMismatch] and keeps the full chunks pending for a resume. If the
// SHA-256 differs from the digest it deletes the pending blob and returns
// [ErrDigestMismatch]. In every case the Writer is finished afterwards.
func (w *Writer) Commit() error {
	if w.done {
		return fmt.Errorf("commit blob %s: %w", w.k, ErrWriterDone)
	}
	defer w.finish()
	if w.size != SizeUnknown && w.off != w.size {
		err := errors.Join(w.flush(), w.wait())
		return errors.Join(fmt.Errorf("commit blob %s: %d of %d bytes written; %d kept pending for resume: %w",
			w.k, w.off, w.size, w.stored, ErrSizeMismatch), err)
	}
	var sum key
	w.h.Sum(sum[:0])
	if sum != w.k {
		_ = w.wait()
		err := w.c.update(false, func(tx *bolt.Tx) error {
			_, err := deleteBlobTx(tx, w.k)
			return err
		})
		w.flushed.Store(0)
		w.c.log.Warn("blob failed its digest check; pending bytes deleted", "digest", w.k.String(), "got", sum.String(), "bytes", w.off)
		return errors.Join(fmt.Errorf("commit blob %s: %d bytes hash to %s; pending bytes deleted: %w",
			w.k, w.off, sum, ErrDigestMismatch), err)
	}
	if err := w.wait(); err != nil {
		return fmt.Errorf("commit blob %s: %w", w.k, err)
	}
	if w.c.cfg.NoSync && w.created {
		// Make the chunks stored without fdatasync durable first, so the
		// synced commit below has little left to write out.
		if err := w.c.db.Sync(); err != nil {
			return fmt.Errorf("commit blob %s: sync stored chunks: %w", w.k, err)
		}
	}
	err := w.c.update(false, func(tx *bolt.Tx) error {
		return w.store(tx, w.buf, w.stored, w.created, true)
	})
	if err != nil {
		return fmt.Errorf("commit blob %s: %w", w.k, err)
	}
	w.stored, w.buf = w.off, nil
	w.flushed.Store(w.stored)
	w.c.log.Debug("blob committed", "digest", w.k.String(), "size", w.off)
	return nil
}

// Abort stops the ingest, storing the full chunks still buffered, and keeps
// the stored bytes pending for a later resume ([Cache.NewWriter] with the
// same digest). Call Discard instead to drop them. Abort on a finished Writer
// does nothing and returns nil.
func (w *Writer) Abort() error {
	if w.done {
		return nil
	}
	defer w.finish()
	return errors.Join(w.flush(), w.wait())
}

// Discard stops the ingest and deletes the pending blob entirely. It returns
// [ErrWriterDone] on a finished Writer (use [Cache.DeleteBlob] then).
func (w *Writer) Discard() error {
	if w.done {
		return fmt.Errorf("discard blob %s: %w", w.k, ErrWriterDone)
	}
	defer w.finish()
	_ = w.wait()
	w.buf = nil
	err := w.c.update(false, func(tx *bolt.Tx) error {
		_, err := deleteBlobTx(tx, w.k)
		return err
	})
	w.flushed.Store(0)
	if err != nil {
		return fmt.Errorf("discard blob %s: %w", w.k, err)
	}
	return nil
}
