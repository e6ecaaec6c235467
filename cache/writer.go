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

// Writer ingests one blob: it buffers the bytes written, hashes and stores
// them behind the caller, and makes the blob visible only when Commit finds
// the SHA-256 of every byte equal to the digest.
//
// Write copies the bytes into a batch buffer (Config.FlushSize) and returns;
// full batches queue for a goroutine that stores what is queued in one
// bbolt transaction while another hashes it (write-behind, up to
// Config.WriteBehind bytes; Write waits for room past it). Until they are
// stored, [Writer.ReadBufferedAt] serves the bytes from memory.
//
// Write, Flush, Commit, Abort and Discard must be called from one goroutine
// at a time. Digest, Size, Offset, Flushed, Progress and ReadBufferedAt are
// safe to call from any goroutine, concurrently with the others (to stream a
// blob while it is fetched, see [Cache.ReadPendingAt]).
type Writer struct {
	c         *Cache
	k         key
	size      int64 // SizeUnknown or the announced size
	chunkSize int
	batch     int // bytes of full chunks per batch buffer
	queueMax  int // bytes of full chunks that may wait to be stored

	// Owned by the writing goroutine.
	off     int64  // bytes written
	fillBuf []byte // the batch being filled, at its full capacity
	n       int    // bytes in fillBuf
	done    bool

	// Owned by the store loop while it runs (storing), by the writing
	// goroutine once it has seen the loop stopped under mu.
	h      hash.Hash
	hashed int64 // bytes fed to h

	offset  atomic.Int64
	flushed atomic.Int64

	// mu protects the fields below; cond signals when the loop stores a
	// group or stops.
	mu       sync.Mutex
	cond     sync.Cond
	queue    []memBatch // full chunks waiting to be stored, in order, from stored
	queued   int        // bytes in queue
	fill     memBatch   // fillBuf[:n] as readers see it
	free     [][]byte   // batch buffers for reuse
	storing  bool       // the store loop runs
	storeErr error      // the loop's last failure, not reported yet
	stored   int64      // bytes in stored chunks
	created  bool       // the meta record exists
	progress chan struct{}
	finished bool
}

// memBatch is bytes [start, start+len(data)) of the blob, held in memory
// until they are stored.
type memBatch struct {
	start int64
	data  []byte
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
	w.cond.L = &w.mu
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
	w.queueMax = max(c.cfg.WriteBehind/w.batch, 1) * w.batch
	capacity := int64(w.chunkSize) // grows up to batch
	if w.size != SizeUnknown {
		capacity = min(int64(w.batch), w.size-w.off)
	}
	w.fillBuf = make([]byte, capacity)
	w.fill = memBatch{start: w.off, data: w.fillBuf[:0]}
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
			w.off, w.hashed, w.stored, w.created = n, n, n, true
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
// chunks stored so far, and all the bytes after a successful Commit. Bytes
// [Flushed, Offset) are in memory: see ReadBufferedAt.
func (w *Writer) Flushed() int64 { return w.flushed.Load() }

// Progress returns a channel that is closed the next time Flushed advances
// or the Writer finishes (Commit, Abort, Discard). Call it again for the next
// change. Once the Writer has finished, the channel returned is closed.
func (w *Writer) Progress() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.progress
}

// notify wakes those waiting on Progress; mu must be held.
func (w *Writer) notify() {
	if !w.finished {
		close(w.progress)
		w.progress = make(chan struct{})
	}
}

// ReadBufferedAt copies into p bytes from off that were written but are not
// stored yet (they are in memory), and returns how many: 0 when off is not
// in memory (stored meanwhile: read it with [Cache.ReadPendingAt]; or not
// written yet; or the Writer has finished). It stops at the end of a batch
// buffer; call again for more. Offset counts a byte before this can
// return it. The bytes are not verified yet.
func (w *Writer) ReadBufferedAt(p []byte, off int64) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.queue {
		if off >= b.start && off < b.start+int64(len(b.data)) {
			return copy(p, b.data[off-b.start:])
		}
	}
	if b := w.fill; off >= b.start && off < b.start+int64(len(b.data)) {
		return copy(p, b.data[off-b.start:])
	}
	return 0
}

// finish stops the store loop, releases the digest and wakes those waiting
// on Progress.
func (w *Writer) finish() {
	_ = w.drain() // never leave the loop running
	w.done = true
	w.c.release(w.k)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queue, w.queued, w.fill, w.free = nil, 0, memBatch{}, nil
	w.fillBuf = nil
	if !w.finished {
		w.finished = true
		close(w.progress)
	}
}

// Write copies p into the batch being filled. A full batch goes to the
// write-behind queue, where a goroutine stores what is queued in one
// (ingest) transaction while another hashes it, side by side and behind the
// caller, so that receiving, hashing and storing use separate cores; Write
// waits only when Config.WriteBehind bytes are queued. Bytes beyond the
// announced size are refused whole with [ErrTooLarge]. If storing fails,
// Write returns the error with n counting the bytes accepted (they stay
// queued and the next Write, Flush or Commit retries); Abort or Discard the
// Writer.
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
		if w.n == len(w.fillBuf) {
			if err := w.push(); err != nil {
				return n, err
			}
		}
		// Readers see fill.data, up to w.n: copying beyond it needs no lock.
		take := copy(w.fillBuf[w.n:], p)
		w.n += take
		w.off += int64(take)
		n += take
		p = p[take:]
		// Offset moves with the bytes, under mu: ReadBufferedAt never
		// returns bytes past what Offset says is written.
		w.mu.Lock()
		w.offset.Store(w.off)
		w.fill.data = w.fillBuf[:w.n]
		w.mu.Unlock()
	}
	if w.n == w.batch {
		if err := w.push(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// push makes room in fillBuf: a buffer below the batch size grows; else
// its full chunks are queued (see queueFull).
func (w *Writer) push() error {
	if w.n == len(w.fillBuf) && len(w.fillBuf) < w.batch {
		grow := min(2*len(w.fillBuf), w.batch)
		if w.size != SizeUnknown {
			grow = int(min(int64(grow), w.size-w.fill.start))
		}
		if grow > len(w.fillBuf) {
			next := make([]byte, grow)
			copy(next, w.fillBuf[:w.n])
			w.mu.Lock()
			w.fillBuf, w.fill.data = next, next[:w.n]
			w.mu.Unlock()
			return nil
		}
	}
	return w.queueFull()
}

// queueFull queues the full chunks of fillBuf for the store loop, after
// waiting for room in the queue, and moves the partial chunk, if any, to a
// fresh buffer. It returns (and clears) the loop's failure, if any, queuing
// nothing then.
func (w *Writer) queueFull() error {
	full := w.n / w.chunkSize * w.chunkSize
	if full == 0 {
		return w.takeErr()
	}
	w.mu.Lock()
	for w.storeErr == nil && w.queued > 0 && w.queued+full > w.queueMax {
		if !w.storing {
			w.startLoop() // retry after a failure reported before
		}
		w.cond.Wait()
	}
	var next []byte
	if k := len(w.free); k > 0 && len(w.fillBuf) == w.batch {
		next, w.free = w.free[k-1], w.free[:k-1]
	}
	if err := w.storeErr; err != nil {
		w.storeErr = nil
		w.mu.Unlock()
		return fmt.Errorf("store chunks of blob %s at offset %d: %w", w.k, w.stored, err)
	}
	w.mu.Unlock()
	if next == nil {
		next = make([]byte, len(w.fillBuf))
	}
	rest := copy(next, w.fillBuf[full:w.n])
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queue = append(w.queue, memBatch{start: w.fill.start, data: w.fillBuf[:full]})
	w.queued += full
	w.fillBuf, w.n = next, rest
	w.fill = memBatch{start: w.fill.start + int64(full), data: next[:rest]}
	if !w.storing {
		w.startLoop()
	}
	return nil
}

// takeErr returns and clears the store loop's failure, if any.
func (w *Writer) takeErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.storeErr; err != nil {
		w.storeErr = nil
		return fmt.Errorf("store chunks of blob %s at offset %d: %w", w.k, w.stored, err)
	}
	return nil
}

// startLoop starts the store loop; mu must be held.
func (w *Writer) startLoop() {
	w.storing = true
	go w.storeLoop()
}

// storeLoop stores the queued batches, all that are queued in one (ingest)
// transaction, while a goroutine of its own hashes them, until the queue is
// empty or a transaction fails (the failure is kept for push, drain and
// Commit; the batches stay queued). The hash never waits for the store:
// Commit checks it once the loop has stopped, so a blob is whole only if the
// bytes stored hash to its digest; stored bytes not yet hashed are pending,
// and a resume re-hashes them from disk.
func (w *Writer) storeLoop() {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.storing = false
			w.cond.Broadcast()
			w.mu.Unlock()
			return
		}
		group := w.queue[:len(w.queue):len(w.queue)]
		stored, created := w.stored, w.created
		w.mu.Unlock()

		hashed := make(chan struct{})
		go func() {
			defer close(hashed)
			w.hashRange(group, stored+int64(w.groupBytes(group)))
		}()
		err := w.c.update(true, func(tx *bolt.Tx) error {
			return w.store(tx, group, stored, created, false)
		})
		<-hashed

		w.mu.Lock()
		if err != nil {
			w.storeErr = err
			w.storing = false
			w.cond.Broadcast()
			w.mu.Unlock()
			return
		}
		n := w.groupBytes(group)
		w.stored += int64(n)
		w.created = true
		w.flushed.Store(w.stored)
		for _, b := range group {
			if cap(b.data) == w.batch && len(w.free) == 0 {
				w.free = append(w.free, b.data[:w.batch])
			}
		}
		w.queue = append(w.queue[:0], w.queue[len(group):]...)
		w.queued -= n
		w.notify()
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

func (w *Writer) groupBytes(group []memBatch) int {
	n := 0
	for _, b := range group {
		n += len(b.data)
	}
	return n
}

// hashRange feeds h the bytes of bs (contiguous, from w.hashed or before)
// up to end that it has not seen. A group whose store failed stays queued,
// hashed: it is not hashed twice.
func (w *Writer) hashRange(bs []memBatch, end int64) {
	for _, b := range bs {
		lo := max(w.hashed, b.start)
		hi := min(end, b.start+int64(len(b.data)))
		if lo < hi {
			_, _ = w.h.Write(b.data[lo-b.start : hi-b.start])
			w.hashed = hi
		}
	}
}

// drain waits until the store loop has stopped (the queue is stored, or a
// transaction failed) and returns (and clears) its failure.
func (w *Writer) drain() error {
	w.mu.Lock()
	for w.storing {
		w.cond.Wait()
	}
	w.mu.Unlock()
	return w.takeErr()
}

// Flush stores the full chunks buffered so far and waits until they are
// stored, so that [Cache.ReadPendingAt] sees them now rather than after the
// next batch, and a crash keeps them. Write stores batches by itself.
func (w *Writer) Flush() error {
	if w.done {
		return fmt.Errorf("flush blob %s: %w", w.k, ErrWriterDone)
	}
	if err := w.queueFull(); err != nil {
		return err
	}
	return w.drain()
}

// store puts the bytes of bs (contiguous, starting at offset stored) as
// chunks and updates the meta record, flipping it to whole if whole is set.
// Every batch but the last holds full chunks. bbolt keeps references to the
// bytes until the transaction commits; nothing writes to them before.
func (w *Writer) store(tx *bolt.Tx, bs []memBatch, stored int64, created, whole bool) error {
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
	for _, b := range bs {
		for data := b.data; len(data) > 0; idx++ {
			n := min(len(data), w.chunkSize)
			if err := chunks.Put(chunkKey(w.k, uint32(idx)), data[:n]); err != nil {
				return err
			}
			data = data[n:]
			m.stored += int64(n)
		}
	}
	m.size, m.updated = w.size, now
	if whole {
		m.state, m.size, m.added = stateWhole, m.stored, now
	}
	return blobs.Put(w.k[:], m.encode())
}

// Commit waits for the queued batches to be stored, checks the size and the
// SHA-256 of every byte, and stores the rest and makes the blob whole in one
// transaction, synced to disk, after syncing the chunks stored before (see
// # Caveats in the package doc).
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
		err := errors.Join(w.queueFull(), w.drain())
		w.mu.Lock()
		stored := w.stored
		w.mu.Unlock()
		return errors.Join(fmt.Errorf("commit blob %s: %d of %d bytes written; %d kept pending for resume: %w",
			w.k, w.off, w.size, stored, ErrSizeMismatch), err)
	}
	// The loop has stopped: what it stored or failed to store is hashed;
	// hash the rest (a failed group still queued, and the batch being
	// filled).
	werr := w.drain()
	w.mu.Lock()
	rest := append(w.queue[:len(w.queue):len(w.queue)], w.fill)
	stored, created := w.stored, w.created
	w.mu.Unlock()
	w.hashRange(rest, w.off)
	var sum key
	w.h.Sum(sum[:0])
	if sum != w.k {
		err := w.c.update(false, func(tx *bolt.Tx) error {
			_, err := deleteBlobTx(tx, w.k)
			return err
		})
		w.flushed.Store(0)
		w.c.log.Warn("blob failed its digest check; pending bytes deleted", "digest", w.k.String(), "got", sum.String(), "bytes", w.off)
		return errors.Join(fmt.Errorf("commit blob %s: %d bytes hash to %s; pending bytes deleted: %w",
			w.k, w.off, sum, ErrDigestMismatch), err)
	}
	if werr != nil {
		return fmt.Errorf("commit blob %s: %w", w.k, werr)
	}
	if w.c.cfg.NoSync && created {
		// Make the chunks stored without fdatasync durable first, so the
		// synced commit below has little left to write out.
		if err := w.c.db.Sync(); err != nil {
			return fmt.Errorf("commit blob %s: sync stored chunks: %w", w.k, err)
		}
	}
	err := w.c.update(false, func(tx *bolt.Tx) error {
		return w.store(tx, rest, stored, created, true)
	})
	if err != nil {
		return fmt.Errorf("commit blob %s: %w", w.k, err)
	}
	w.mu.Lock()
	w.stored = w.off
	w.mu.Unlock()
	w.flushed.Store(w.off)
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
	return errors.Join(w.queueFull(), w.drain())
}

// Discard stops the ingest and deletes the pending blob entirely. It returns
// [ErrWriterDone] on a finished Writer (use [Cache.DeleteBlob] then).
func (w *Writer) Discard() error {
	if w.done {
		return fmt.Errorf("discard blob %s: %w", w.k, ErrWriterDone)
	}
	defer w.finish()
	_ = w.drain()
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
