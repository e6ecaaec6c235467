package cache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Cache is a distribution point's store of blobs, signed documents, the index
// of versions held whole, and endpoint records, in one bbolt file.
//
// All methods are safe for concurrent use by multiple goroutines. Reads run
// in short read transactions and copy their bytes out (blob bytes with
// pread from the file, see pread.go); writes are serialized (bbolt allows
// one writer at a time).
type Cache struct {
	cfg  Config
	db   *bolt.DB
	log  *slog.Logger
	file *os.File // the file, opened for reading blob bytes (pread.go); may be nil

	// wmu serializes write transactions so that db.NoSync can be set per
	// transaction (bbolt reads it only inside Commit, under its own writer
	// lock, which wmu encloses).
	wmu sync.Mutex

	// mu protects busy: the digests a Writer or a DeleteBlob is working on,
	// mapped to the Writer (nil for DeleteBlob and Verify).
	mu   sync.Mutex
	busy map[key]*Writer

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// Session flags kept under bucketState/keyOpen while a Cache is open.
const flagNoSync byte = 1

// Open opens (creating if needed) the cache file at cfg.Path, after checking
// cfg with [Config.Validate]. Pending blobs left by an earlier session (a
// crash, an aborted fetch) are kept for [Cache.NewWriter] to resume and are
// never visible to [Cache.Stat] or [Cache.ReadAt].
//
// If the earlier session did not Close and ingested with NoSync, and
// cfg.CheckAfterCrash is set, Open runs bbolt's consistency check and fails
// with [ErrCorrupt] if the file is damaged (after a power loss: see # Caveats).
func Open(cfg Config) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "cache")

	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{
		Timeout:         cfg.OpenTimeout,
		NoFreelistSync:  cfg.NoFreelistSync,
		FreelistType:    bolt.FreelistType(cfg.FreelistType),
		InitialMmapSize: cfg.InitialMmapSize,
		MmapFlags:       cfg.MmapFlags,
	})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("open cache %s: the file is locked by another process (waited %s): %w", cfg.Path, cfg.OpenTimeout, err)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, fmt.Errorf("open cache %s: not a usable bbolt file (%w); it holds only cached data, delete it to start empty: %w", cfg.Path, err, ErrCorrupt)
	case err != nil:
		return nil, fmt.Errorf("open cache %s: %w", cfg.Path, err)
	}
	if cfg.AllocSize > 0 {
		db.AllocSize = cfg.AllocSize
	}
	c := &Cache{cfg: cfg, db: db, log: log, busy: make(map[key]*Writer), file: openReader(cfg.Path)}

	if err := c.checkPrevious(); err != nil {
		c.closeFile()
		_ = db.Close()
		return nil, err
	}
	var flags byte
	if cfg.NoSync {
		flags |= flagNoSync
	}
	err = c.update(false, func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketBlobs, bucketChunks, bucketDocs, bucketVersions, bucketRecords, bucketState} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketState).Put(keyOpen, []byte{flags})
	})
	if err != nil {
		c.closeFile()
		_ = db.Close()
		return nil, fmt.Errorf("open cache %s: create buckets: %w", cfg.Path, err)
	}
	if st, err := c.Stats(); err == nil {
		log.Info("cache opened", "path", cfg.Path, "blobs", st.Blobs, "bytes", st.Bytes,
			"pending", st.Pending, "pending_bytes", st.PendingBytes, "versions", st.Versions, "file_size", st.FileSize)
	}
	return c, nil
}

// checkPrevious looks at how the previous session ended and checks the file when
// it may have been damaged.
func (c *Cache) checkPrevious() error {
	var dirty bool
	var flags byte
	err := c.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketState); b != nil {
			if v := b.Get(keyOpen); v != nil {
				dirty = true
				if len(v) > 0 {
					flags = v[0]
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("open cache %s: read session state: %w", c.cfg.Path, err)
	}
	if !dirty {
		return nil
	}
	if flags&flagNoSync == 0 || !c.cfg.CheckAfterCrash {
		c.log.Warn("previous session did not close cleanly; pending blobs are kept for resume", "path", c.cfg.Path)
		return nil
	}
	c.log.Warn("previous session did not close cleanly and used NoSync; checking the file", "path", c.cfg.Path)
	start := time.Now()
	var errs []error
	err = c.db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			if len(errs) < 10 {
				errs = append(errs, e)
			}
		}
		return nil
	})
	if err == nil && len(errs) > 0 {
		err = errors.Join(errs...)
	}
	if err != nil {
		return fmt.Errorf("open cache %s: consistency check after an unclean shutdown failed (%w); it holds only cached data, delete it to start empty: %w",
			c.cfg.Path, err, ErrCorrupt)
	}
	c.log.Info("consistency check passed", "path", c.cfg.Path, "took", time.Since(start))
	return nil
}

// Close syncs and closes the file, marking the session clean. It waits for
// running transactions; Writers still open afterwards fail with [ErrClosed]
// and their stored chunks stay pending. Close is safe to call twice; the
// second call returns nil.
func (c *Cache) Close() error {
	c.closeOnce.Do(func() {
		err := c.update(false, func(tx *bolt.Tx) error {
			return tx.Bucket(bucketState).Delete(keyOpen)
		})
		c.closed.Store(true)
		c.closeErr = errors.Join(err, c.db.Close())
		c.closeFile()
		if c.closeErr != nil {
			c.closeErr = fmt.Errorf("close cache %s: %w", c.cfg.Path, c.closeErr)
		}
	})
	return c.closeErr
}

func (c *Cache) closeFile() {
	if c.file != nil {
		_ = c.file.Close()
	}
}

// Path returns the bbolt file's path.
func (c *Cache) Path() string { return c.cfg.Path }

// view runs a read transaction.
func (c *Cache) view(fn func(tx *bolt.Tx) error) error {
	if c.closed.Load() {
		return ErrClosed
	}
	return mapClosed(c.db.View(fn))
}

// update runs a write transaction; ingest marks the transactions that store
// chunks, which skip fdatasync when Config.NoSync is set. Every other write
// transaction is synced.
func (c *Cache) update(ingest bool, fn func(tx *bolt.Tx) error) error {
	if c.closed.Load() {
		return ErrClosed
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.db.NoSync = ingest && c.cfg.NoSync
	return mapClosed(c.db.Update(fn))
}

func mapClosed(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w (%w)", ErrClosed, err)
	}
	return err
}

// claim marks k busy for w (nil for a deletion); ErrBusy if it already is.
func (c *Cache) claim(k key, w *Writer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.busy[k]; ok {
		return fmt.Errorf("blob %s: %w", k, ErrBusy)
	}
	c.busy[k] = w
	return nil
}

func (c *Cache) release(k key) {
	c.mu.Lock()
	delete(c.busy, k)
	c.mu.Unlock()
}

func (c *Cache) writer(k key) *Writer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.busy[k]
}

// getMeta returns the blob's meta record; ok is false when there is none.
func getMeta(tx *bolt.Tx, k key) (blobMeta, bool, error) {
	v := tx.Bucket(bucketBlobs).Get(k[:])
	if v == nil {
		return blobMeta{}, false, nil
	}
	m, err := decodeMeta(k, v)
	return m, err == nil, err
}

// Stat returns the size of a blob held whole (verified at ingest), or
// [ErrNotFound] when it is absent or still pending.
func (c *Cache) Stat(digest string) (int64, error) {
	k, err := parseDigest(digest)
	if err != nil {
		return 0, err
	}
	var size int64
	err = c.view(func(tx *bolt.Tx) error {
		m, ok, err := getMeta(tx, k)
		if err != nil {
			return err
		}
		if !ok || m.state != stateWhole {
			return fmt.Errorf("blob %s: %w", k, ErrNotFound)
		}
		size = m.size
		return nil
	})
	return size, err
}

// ReadAt reads len(p) bytes of a whole blob from offset off, like
// [io.ReaderAt]: it returns [io.EOF] with n < len(p) at the end of the blob,
// and [ErrNotFound] when the blob is not held whole. Each call is one short
// read transaction; the bytes are copied into p.
func (c *Cache) ReadAt(digest string, p []byte, off int64) (int, error) {
	k, err := parseDigest(digest)
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read blob %s at %d: negative offset: %w", k, off, ErrInvalid)
	}
	var n int
	err = c.view(func(tx *bolt.Tx) error {
		m, ok, err := getMeta(tx, k)
		if err != nil {
			return err
		}
		if !ok || m.state != stateWhole {
			return fmt.Errorf("blob %s: %w", k, ErrNotFound)
		}
		n, err = c.readChunks(tx, k, m, p, off, m.size)
		return err
	})
	if err != nil {
		return n, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadPendingAt reads the bytes of a blob that is being ingested, for
// streaming to other readers while the fetch runs. It returns what is stored
// at off, up to len(p) bytes:
//
//   - n < len(p) and a nil error when the rest is not stored yet (n may be 0:
//     wait for [Writer.Progress] and call again);
//   - [io.EOF] with n < len(p) once the blob is whole and off+n is its end
//     (a blob that became whole is read like [Cache.ReadAt]);
//   - [ErrNotFound] when the blob is neither pending nor whole (never started,
//     discarded, deleted, or failed its digest check).
//
// A pending blob with an active Writer but nothing stored yet reads as (0, nil).
// The bytes of a pending blob are not verified yet: the SHA-256 is checked at
// Commit, so a reader must treat a later ErrNotFound as a failed fetch.
func (c *Cache) ReadPendingAt(digest string, p []byte, off int64) (int, error) {
	k, err := parseDigest(digest)
	if err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read pending blob %s at %d: negative offset: %w", k, off, ErrInvalid)
	}
	// Look for a Writer before reading: a Writer stores the blob (and
	// makes it whole) before it releases the digest, so either it is seen
	// here or what it stored is seen below. Looking after the read would
	// leave a gap: nothing stored yet when read, the Writer finished since.
	active := c.writer(k) != nil
	var n int
	var whole, found bool
	err = c.view(func(tx *bolt.Tx) error {
		m, ok, err := getMeta(tx, k)
		if err != nil || !ok {
			return err
		}
		found, whole = true, m.state == stateWhole
		n, err = c.readChunks(tx, k, m, p, off, m.stored)
		return err
	})
	switch {
	case err != nil:
		return n, err
	case !found && active:
		return 0, nil
	case !found:
		return 0, fmt.Errorf("blob %s: %w", k, ErrNotFound)
	case whole && n < len(p):
		return n, io.EOF
	}
	return n, nil
}

// readChunks copies bytes [off, min(off+len(p), limit)) of blob k into p.
func (c *Cache) readChunks(tx *bolt.Tx, k key, m blobMeta, p []byte, off, limit int64) (int, error) {
	if off >= limit {
		return 0, nil
	}
	if rem := limit - off; int64(len(p)) > rem {
		p = p[:rem]
	}
	chunks := tx.Bucket(bucketChunks)
	cs := int64(m.chunkSize)
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		idx := pos / cs
		want := min(cs, m.stored-idx*cs) // length of this chunk
		v := chunks.Get(chunkKey(k, uint32(idx)))
		if int64(len(v)) != want {
			return n, fmt.Errorf("blob %s: chunk %d has %d bytes, want %d: %w", k, idx, len(v), want, ErrCorrupt)
		}
		seg := v[pos-idx*cs:]
		seg = seg[:min(len(seg), len(p)-n)]
		c.copyValue(tx, p[n:n+len(seg)], seg)
		n += len(seg)
	}
	return n, nil
}

// BlobInfo describes a blob, whole or pending.
type BlobInfo struct {
	Digest  string
	Whole   bool      // verified and visible to Stat and ReadAt
	Writing bool      // a Writer of this Cache is active on it
	Size    int64     // announced size; SizeUnknown for a pending blob of unknown size
	Stored  int64     // bytes stored (== Size once whole)
	Added   time.Time // when it became whole; for a pending blob, when its ingest started
	Updated time.Time // when bytes were last stored
}

func (m blobMeta) info(k key) BlobInfo {
	return BlobInfo{
		Digest: k.String(), Whole: m.state == stateWhole, Size: m.size, Stored: m.stored,
		Added: time.Unix(0, m.added), Updated: time.Unix(0, m.updated),
	}
}

// Blob describes a blob, whole or pending ([ErrNotFound] if neither). A
// pending blob whose Writer has stored nothing yet is reported with Writing
// set and Stored 0.
func (c *Cache) Blob(digest string) (BlobInfo, error) {
	k, err := parseDigest(digest)
	if err != nil {
		return BlobInfo{}, err
	}
	w := c.writer(k) // before reading: see ReadPendingAt
	var bi BlobInfo
	var found bool
	err = c.view(func(tx *bolt.Tx) error {
		m, ok, err := getMeta(tx, k)
		if ok {
			bi, found = m.info(k), true
		}
		return err
	})
	if err != nil {
		return BlobInfo{}, err
	}
	if !found {
		if w == nil {
			return BlobInfo{}, fmt.Errorf("blob %s: %w", k, ErrNotFound)
		}
		return BlobInfo{Digest: k.String(), Writing: true, Size: w.size}, nil
	}
	bi.Writing = w != nil
	return bi, nil
}

// PendingBlobs lists the blobs stored in part: fetches in progress, aborted
// or interrupted by a crash. Resume one with [Cache.NewWriter] or drop it
// with [Cache.DeleteBlob].
func (c *Cache) PendingBlobs() ([]BlobInfo, error) {
	var out []BlobInfo
	err := c.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(kb, v []byte) error {
			k, err := keyOf(kb)
			if err != nil {
				return err
			}
			m, err := decodeMeta(k, v)
			if err != nil {
				return err
			}
			if m.state == statePending {
				out = append(out, m.info(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		k, _ := parseDigest(out[i].Digest)
		out[i].Writing = c.writer(k) != nil
	}
	return out, nil
}

// DeleteBlob deletes a blob, whole or pending, and in the same transaction
// every version that references it (a version is listed only while all its
// blobs are whole). It returns [ErrBusy] while a Writer works on the digest
// and [ErrNotFound] when there is nothing to delete.
func (c *Cache) DeleteBlob(digest string) error {
	k, err := parseDigest(digest)
	if err != nil {
		return err
	}
	if err := c.claim(k, nil); err != nil {
		return fmt.Errorf("delete %w", err)
	}
	defer c.release(k)
	var dropped []string
	err = c.update(false, func(tx *bolt.Tx) error {
		found, err := deleteBlobTx(tx, k)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("delete blob %s: %w", k, ErrNotFound)
		}
		dropped, err = deleteVersionsReferencing(tx, k.String())
		return err
	})
	if err != nil {
		return err
	}
	c.log.Debug("blob deleted", "digest", digest, "versions_dropped", dropped)
	if len(dropped) > 0 {
		c.log.Info("versions dropped with their blob", "digest", digest, "versions", dropped)
	}
	return nil
}

// DeleteBlobs deletes several blobs, and the versions referencing them, in
// one transaction (one sync): eviction of many blobs costs one commit, not
// one each. Digests a Writer is busy on, and digests not stored, are
// skipped; it returns the digests it deleted.
func (c *Cache) DeleteBlobs(digests []string) ([]string, error) {
	var keys []key
	for _, d := range digests {
		k, err := parseDigest(d)
		if err != nil {
			return nil, err
		}
		if err := c.claim(k, nil); err != nil {
			continue // busy: a later pass retries
		}
		keys = append(keys, k)
	}
	defer func() {
		for _, k := range keys {
			c.release(k)
		}
	}()
	var deleted, dropped []string
	err := c.update(false, func(tx *bolt.Tx) error {
		deleted, dropped = deleted[:0], dropped[:0]
		for _, k := range keys {
			found, err := deleteBlobTx(tx, k)
			if err != nil {
				return err
			}
			if !found {
				continue
			}
			deleted = append(deleted, k.String())
			vs, err := deleteVersionsReferencing(tx, k.String())
			if err != nil {
				return err
			}
			dropped = append(dropped, vs...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.log.Debug("blobs deleted", "blobs", len(deleted), "versions_dropped", dropped)
	if len(dropped) > 0 {
		c.log.Info("versions dropped with their blobs", "versions", dropped)
	}
	return deleted, nil
}

// deleteBlobTx deletes blob k's meta record and chunks.
func deleteBlobTx(tx *bolt.Tx, k key) (bool, error) {
	blobs := tx.Bucket(bucketBlobs)
	found := blobs.Get(k[:]) != nil
	if err := blobs.Delete(k[:]); err != nil {
		return false, err
	}
	// Collect then delete: bbolt cursors may skip keys when deleting while
	// iterating.
	chunks := tx.Bucket(bucketChunks)
	var keys [][]byte
	cur := chunks.Cursor()
	for ck, _ := cur.Seek(k[:]); ck != nil && bytes.HasPrefix(ck, k[:]); ck, _ = cur.Next() {
		keys = append(keys, bytes.Clone(ck))
	}
	for _, ck := range keys {
		if err := chunks.Delete(ck); err != nil {
			return false, err
		}
	}
	return found || len(keys) > 0, nil
}

// Verify re-reads a whole blob and checks its SHA-256 (scrubbing against bit
// rot). On a mismatch it deletes the blob (and the versions referencing it)
// and returns [ErrDigestMismatch]. It reads in short transactions.
func (c *Cache) Verify(digest string) error {
	k, err := parseDigest(digest)
	if err != nil {
		return err
	}
	size, err := c.Stat(digest)
	if err != nil {
		return err
	}
	h := sha256.New()
	if _, err := hashBlob(c, k, h, size, func(tx *bolt.Tx) (blobMeta, error) {
		m, ok, err := getMeta(tx, k)
		if err == nil && (!ok || m.state != stateWhole) {
			err = fmt.Errorf("blob %s: %w", k, ErrNotFound)
		}
		return m, err
	}); err != nil {
		if !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("verify blob %s: %w", k, err)
		}
	} else if sum := h.Sum(nil); bytes.Equal(sum, k[:]) {
		return nil
	}
	c.log.Error("whole blob failed verification; deleting it", "digest", digest)
	if err := c.DeleteBlob(digest); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("verify blob %s: failed, and deleting it failed: %w", k, err)
	}
	return fmt.Errorf("verify blob %s: stored bytes do not hash to the digest; deleted: %w", k, ErrDigestMismatch)
}

// hashBlob feeds bytes [0, n) of blob k into h, 16 chunks per read
// transaction; meta re-reads the blob's record in each one (so a concurrent
// deletion is noticed). It hashes straight from the mapped pages.
func hashBlob(c *Cache, k key, h io.Writer, n int64, meta func(*bolt.Tx) (blobMeta, error)) (int64, error) {
	var done int64
	for done < n {
		err := c.view(func(tx *bolt.Tx) error {
			m, err := meta(tx)
			if err != nil {
				return err
			}
			chunks := tx.Bucket(bucketChunks)
			cs := int64(m.chunkSize)
			for i := 0; i < 16 && done < n; i++ {
				idx := done / cs
				want := min(cs, m.stored-idx*cs, n-done)
				v := chunks.Get(chunkKey(k, uint32(idx)))
				if int64(len(v)) != want {
					return fmt.Errorf("blob %s: chunk %d has %d bytes, want %d: %w", k, idx, len(v), want, ErrCorrupt)
				}
				_, _ = h.Write(v[:want])
				done += want
			}
			return nil
		})
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Stats summarizes the cache's content.
type Stats struct {
	Blobs        int   // blobs held whole
	Bytes        int64 // their total size
	Pending      int   // blobs stored in part
	PendingBytes int64 // bytes stored of pending blobs
	Versions     int   // versions recorded, all products
	FileSize     int64 // size of the bbolt data (high-water mark of the file)
}

// Stats counts blobs, bytes and versions in one read transaction (it visits
// every blob's meta record, not its bytes).
func (c *Cache) Stats() (Stats, error) {
	var s Stats
	err := c.view(func(tx *bolt.Tx) error {
		s.FileSize = tx.Size()
		err := tx.Bucket(bucketBlobs).ForEach(func(kb, v []byte) error {
			k, err := keyOf(kb)
			if err != nil {
				return err
			}
			m, err := decodeMeta(k, v)
			if err != nil {
				return err
			}
			if m.state == stateWhole {
				s.Blobs++
				s.Bytes += m.size
			} else {
				s.Pending++
				s.PendingBytes += m.stored
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketVersions).ForEachBucket(func(name []byte) error {
			s.Versions += tx.Bucket(bucketVersions).Bucket(name).Stats().KeyN
			return nil
		})
	})
	return s, err
}
