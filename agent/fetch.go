package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
	"github.com/dpcache/dpcache/source/failover"
)

// copyBufSize is the read buffer of a download.
const copyBufSize = 256 << 10

// writeSyncer is the file a blob is downloaded into.
type writeSyncer interface {
	io.Writer
	Sync() error
}

// blobJob is one distinct blob of the version: its digest, size and every
// path that holds it. It is either a file (built from chunks when chunks
// is set) or, when chunkOf > 0, a chunk of the file at paths[0].
type blobJob struct {
	digest  string
	size    int64
	paths   []string
	index   int              // position in the version's blob list
	chunks  []manifest.Chunk // a chunked file's chunks
	chunkOf int              // a chunk's position (from 1) in the file paths[0]
}

func (j *blobJob) String() string {
	if j.chunkOf > 0 {
		return fmt.Sprintf("chunk %d of file %q (sha256 %s)", j.chunkOf, j.paths[0], j.digest)
	}
	if len(j.paths) == 1 {
		return fmt.Sprintf("file %q (sha256 %s)", j.paths[0], j.digest)
	}
	return fmt.Sprintf("file %q and %d more (sha256 %s)", j.paths[0], len(j.paths)-1, j.digest)
}

// fetcher downloads blobs into .dpcache/blobs/ through the failover
// engine. It is safe for concurrent use.
type fetcher struct {
	chain   *failover.Chain
	dir     string // .dpcache/blobs
	partDir string // where partial downloads are kept; "" means dir
	log     *slog.Logger
	wrap    func(writeSyncer) writeSyncer
	batch   []*source.GRPC // the DPs heading the sources: chunks are read from them in batches

	downloaded atomic.Int64 // bytes received from sources

	mu       sync.Mutex // guards the fields below
	done     int64
	total    int64
	progress func(done, total int64)
	last     string // the source that completed the most recent blob
}

func (f *fetcher) partPath(digest string) string {
	dir := f.partDir
	if dir == "" {
		dir = f.dir
	}
	return filepath.Join(dir, digest+partSuffix)
}

func (f *fetcher) blobPath(digest string) string { return filepath.Join(f.dir, digest) }

// addDone accounts n bytes as done (n > 0) or discarded (n < 0: the total
// grows instead, so done never decreases).
func (f *fetcher) addDone(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n >= 0 {
		f.done += n
	} else {
		f.total -= n
	}
	if f.progress != nil {
		f.progress(f.done, f.total)
	}
}

// resumed accounts n bytes already on disk from an earlier run: they are
// not downloaded in this run, so the total shrinks and done stays (a
// progress display then shows the speed of this run's transfers only).
func (f *fetcher) resumed(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.total -= n
	if f.progress != nil {
		f.progress(f.done, f.total)
	}
}

// lastServed names the source that completed the most recent blob, or ""
// if none did.
func (f *fetcher) lastServed() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// fetch downloads job's blob to f.blobPath(job.digest), verified and
// synced. A partial download continues at its offset whichever source
// serves the rest; corrupt content is discarded and fetched again from
// the next source. A local failure (disk full) ends the attempt at once.
func (f *fetcher) fetch(ctx context.Context, job *blobJob) error {
	p, err := openPart(f.partPath(job.digest), f.wrap)
	if err != nil {
		return fmt.Errorf("%s: %w", job, err)
	}
	defer p.close()
	if p.off > job.size {
		f.log.Warn("discarding a partial download longer than the file", "file", job.paths[0], "sha256", job.digest, "have", p.off, "size", job.size)
		if err := p.discard(); err != nil {
			return fmt.Errorf("%s: %w", job, err)
		}
	}
	if p.off > 0 {
		f.log.Info("resuming download", "file", job.paths[0], "sha256", job.digest, "offset", p.off, "size", job.size)
		f.resumed(p.off)
	}
	served, err := f.chain.Fetch(ctx, job.digest, job.size, &partSink{f: f, p: p, digest: job.digest})
	if err != nil {
		var fe *failover.Error
		if errors.As(err, &fe) {
			return named(err, job.String())
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", job, context.Cause(ctx))
		}
		return fmt.Errorf("%s: %w", job, err)
	}
	if served != nil {
		f.mu.Lock()
		f.last = served.String()
		f.mu.Unlock()
	}
	return f.commit(p, job)
}

// partSink is a .part file as the failover engine's Sink: bytes are
// appended, hashed and counted as they come.
type partSink struct {
	f      *fetcher
	p      *part
	digest string
}

func (s *partSink) Offset() int64 { return s.p.off }

func (s *partSink) Write(b []byte) (int, error) {
	s.f.downloaded.Add(int64(len(b)))
	if err := s.p.write(b); err != nil {
		return 0, err
	}
	s.f.addDone(int64(len(b)))
	return len(b), nil
}

func (s *partSink) Verify() error {
	if got := s.p.sum(); got != s.digest {
		return &mismatchError{fmt.Sprintf("sha256 %s, want %s", got, s.digest)}
	}
	return nil
}

// Reset discards the download: the bytes done count again in the total.
func (s *partSink) Reset() error {
	s.f.addDone(-s.p.off)
	return s.p.discard()
}

// mismatchError is content that does not match the manifest: the agent's
// ErrDigestMismatch and the source's ErrDataLoss.
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string   { return ErrDigestMismatch.Error() + ": " + e.msg }
func (e *mismatchError) Unwrap() []error { return []error{ErrDigestMismatch, source.ErrDataLoss} }

// commit syncs the complete blob and renames it to its final name. A
// chunk is not synced: it is copied into its file at once
// (assembly.putFile), and that file is synced; a chunk a crash left
// incomplete is verified by the next run before any use, so thousands of
// fsyncs are saved.
func (f *fetcher) commit(p *part, job *blobJob) error {
	if err := p.finish(job.chunkOf == 0); err != nil {
		return fmt.Errorf("%s: %w", job, err)
	}
	if err := os.Rename(p.path, f.blobPath(job.digest)); err != nil {
		return &localError{fmt.Errorf("%s: %w", job, err)}
	}
	return nil
}

// part is a download in progress: the .part file, its length, and the
// SHA-256 of its bytes so far.
type part struct {
	path string
	f    *os.File
	w    writeSyncer
	h    hash.Hash
	off  int64
}

// openPart opens (or creates) a .part file and hashes what it holds.
func openPart(path string, wrap func(writeSyncer) writeSyncer) (*part, error) {
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, &localError{fmt.Errorf("open %s: %w", path, err)}
	}
	p := &part{path: path, f: fh, w: fh, h: sha256.New()}
	if wrap != nil {
		p.w = wrap(fh)
	}
	n, err := io.Copy(p.h, fh)
	if err != nil {
		fh.Close()
		return nil, &localError{fmt.Errorf("read %s: %w", path, err)}
	}
	p.off = n
	return p, nil
}

// write appends b. On failure the file may hold part of b; the next run
// re-hashes it from disk.
func (p *part) write(b []byte) error {
	n, err := p.w.Write(b)
	p.h.Write(b[:n])
	p.off += int64(n)
	if err != nil {
		return &localError{err} // an *os.PathError names the file
	}
	return nil
}

func (p *part) sum() string { return hex.EncodeToString(p.h.Sum(nil)) }

// discard empties the part, to start over from byte 0.
func (p *part) discard() error {
	if err := p.f.Truncate(0); err != nil {
		return &localError{fmt.Errorf("truncate %s: %w", p.path, err)}
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return &localError{fmt.Errorf("seek %s: %w", p.path, err)}
	}
	p.h.Reset()
	p.off = 0
	return nil
}

// finish syncs (with sync) and closes the file.
func (p *part) finish(sync bool) error {
	var err error
	if sync {
		err = p.w.Sync()
	}
	if cerr := p.f.Close(); err == nil {
		err = cerr
	}
	p.f = nil
	if err != nil {
		return &localError{fmt.Errorf("sync %s: %w", p.path, err)}
	}
	return nil
}

func (p *part) close() {
	if p.f != nil {
		p.f.Close()
	}
}
