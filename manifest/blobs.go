package manifest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// blobFlushBytes is how many bytes of new blobs blobStore gathers before
// it makes them durable and visible as one batch. Each batch costs one
// sync of the file system (syncFiles) and one rename per blob; the
// batches are synced by a goroutine of their own, so the disk writes one
// batch while the next is cut and hashed. A variable only for tests (set
// by tests that do not run in parallel).
var blobFlushBytes int64 = 64 << 20

// staleTempAge is how old a temporary file in the blobs folder must be
// before a publish removes it as the leftover of a publish that crashed.
// A running publish renames or removes its own within a batch's time
// (seconds; minutes for one huge unchunked file) after it last wrote
// them, so an hour cannot catch a live one.
const staleTempAge = time.Hour

// tempPrefix starts the name of every temporary file Publish writes; no
// blob or document name starts with a dot.
const tempPrefix = ".tmp-"

// blobStore writes the new blobs of one publish into the blobs folder.
//
// A blob is written to a temporary file without a sync of its own; once a
// batch of them reaches blobFlushBytes, or at finish, the batch's data is
// made durable with one file system sync and only then is each file
// renamed to its digest; finish syncs the folder once, after the last
// rename. So a blob's final name never holds bytes that are not durable,
// even after a power loss, and the documents written after finish never
// name a blob that is not. Safe for concurrent use by the goroutines of a
// publish until finish or abort.
type blobStore struct {
	dir string

	mu      sync.Mutex // protects the fields below
	seen    map[string]bool
	batch   []tempBlob
	pending int64 // bytes in batch
	res     *PublishResult
	err     error // the first failed flush; later batches are dropped
	renamed bool  // a blob was renamed in: the folder needs a sync

	work chan []tempBlob // batches for flushLoop
	done chan struct{}   // closed when flushLoop returns
	once sync.Once       // closes work
}

type tempBlob struct{ tmp, final string }

// testHookBlobWritten, when set (by a test that does not run in parallel),
// is called after each new blob is written to its temporary file; an
// error from it fails the publish there, as a crash or a full disk would.
var testHookBlobWritten func() error

func newBlobStore(dir string, res *PublishResult) *blobStore {
	s := &blobStore{dir: dir, seen: map[string]bool{}, res: res, work: make(chan []tempBlob, 1), done: make(chan struct{})}
	go s.flushLoop()
	return s
}

// claim reports whether the blob digest of size bytes must be written: it
// returns false when this publish already has it, or when the folder holds
// a regular file of that name and size (counted in BlobsReused). A claimed
// blob must be passed to put or the publish abandoned.
func (s *blobStore) claim(digest string, size int64) bool {
	s.mu.Lock()
	if s.seen[digest] {
		s.mu.Unlock()
		return false
	}
	s.seen[digest] = true
	s.mu.Unlock()
	if fi, err := os.Lstat(filepath.Join(s.dir, digest)); err == nil && fi.Mode().IsRegular() && fi.Size() == size {
		s.mu.Lock()
		s.res.BlobsReused++
		s.mu.Unlock()
		return false
	}
	return true
}

// put writes the content of r as the blob digest (claimed). If check is not
// nil it runs after the bytes are written; an error from it abandons the
// blob. The blob becomes visible under its name at a later flush.
func (s *blobStore) put(digest string, r io.Reader, check func() error) error {
	tmp, n, err := writeTemp(s.dir, digest, r, check)
	if err == nil && testHookBlobWritten != nil {
		if err = testHookBlobWritten(); err != nil {
			_ = os.Remove(tmp)
		}
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.res.BlobsWritten++
	s.res.BytesWritten += n
	s.batch = append(s.batch, tempBlob{tmp: tmp, final: filepath.Join(s.dir, digest)})
	s.pending += n
	var full []tempBlob
	if s.pending >= blobFlushBytes {
		full, s.batch, s.pending = s.batch, nil, 0
	}
	err = s.err
	s.mu.Unlock()
	if full != nil {
		s.work <- full // waits while the previous batch is being synced
	}
	return err
}

// flushLoop makes the batches durable and visible, in order, until work is
// closed. After a failure it removes the temporary files of later
// batches instead.
func (s *blobStore) flushLoop() {
	defer close(s.done)
	for batch := range s.work {
		s.mu.Lock()
		failed := s.err != nil
		s.mu.Unlock()
		if failed {
			removeTemps(batch)
			continue
		}
		err := s.flush(batch)
		s.mu.Lock()
		if err != nil && s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
	}
}

// flush syncs the data of a batch, then renames each file to its final
// name. On failure it removes the batch's temporary files.
func (s *blobStore) flush(batch []tempBlob) error {
	tmps := make([]string, len(batch))
	for i, b := range batch {
		tmps[i] = b.tmp
	}
	if err := syncFiles(s.dir, tmps); err != nil {
		removeTemps(batch)
		return fmt.Errorf("sync new blobs in %s: %w", s.dir, err)
	}
	for i, b := range batch {
		if err := os.Rename(b.tmp, b.final); err != nil {
			removeTemps(batch[i:])
			return fmt.Errorf("write %s: %w", b.final, err)
		}
		s.mu.Lock()
		s.renamed = true
		s.mu.Unlock()
	}
	return nil
}

// finish flushes the last batch, waits for every flush, and syncs the
// folder: when it returns nil, every blob put is durable under its name.
func (s *blobStore) finish() error {
	s.mu.Lock()
	last := s.batch
	s.batch, s.pending = nil, 0
	s.mu.Unlock()
	if len(last) > 0 {
		s.work <- last
	}
	s.once.Do(func() { close(s.work) })
	<-s.done
	s.mu.Lock()
	err, renamed := s.err, s.renamed
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if renamed {
		return SyncDir(s.dir)
	}
	return nil
}

// abort abandons the publish: it waits for a running flush and removes the
// temporary files of the blobs not renamed yet. Blobs already renamed stay
// (they are whole and durable; the next publish reuses them). It may be
// called after finish.
func (s *blobStore) abort() {
	s.mu.Lock()
	last := s.batch
	s.batch, s.pending = nil, 0
	if s.err == nil {
		s.err = errAborted
	}
	s.mu.Unlock()
	removeTemps(last)
	s.once.Do(func() { close(s.work) })
	<-s.done
}

var errAborted = fmt.Errorf("publish abandoned")

func removeTemps(batch []tempBlob) {
	for _, b := range batch {
		_ = os.Remove(b.tmp)
	}
}

// writeTemp writes the content of r to a new temporary file in dir named
// after name, without syncing it, and runs check (if not nil) after the
// bytes are written. It returns the file's path and size; on failure it
// removes the file.
func writeTemp(dir, name string, r io.Reader, check func() error) (string, int64, error) {
	var rb [8]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return "", 0, err
	}
	tmp := filepath.Join(dir, tempPrefix+name+"-"+hex.EncodeToString(rb[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("create temporary file: %w", err)
	}
	var n int64
	if b, ok := r.(*bytesReader); ok {
		var m int
		m, err = f.Write(b.data)
		n = int64(m)
	} else {
		n, err = copyBuffered(f, r)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check()
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", 0, fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return tmp, n, nil
}

// bytesReader hands writeTemp bytes already in memory (a chunk), which it
// writes with one call instead of copying them through a buffer.
type bytesReader struct{ data []byte }

func (b *bytesReader) Read(p []byte) (int, error) {
	if len(b.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

// removeStaleTemps removes the temporary files in dir older than
// staleTempAge: the leftovers of a publish that crashed before it could
// rename or remove them. Errors are ignored (the next publish retries).
func removeStaleTemps(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTempAge {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
