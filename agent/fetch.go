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

	"github.com/dpcache/dpcache/source"
)

// maxResumes bounds how many times one source's broken stream is resumed
// in a row for one blob before the next source is tried; each resume must
// have made progress.
const maxResumes = 3

// copyBufSize is the read buffer of a download.
const copyBufSize = 256 << 10

// writeSyncer is the file a blob is downloaded into.
type writeSyncer interface {
	io.Writer
	Sync() error
}

// blobJob is one distinct blob of the version: its digest, size and every
// path that holds it.
type blobJob struct {
	digest string
	size   int64
	paths  []string
	index  int // position in the version's blob list
}

func (j *blobJob) String() string {
	if len(j.paths) == 1 {
		return fmt.Sprintf("file %q (sha256 %s)", j.paths[0], j.digest)
	}
	return fmt.Sprintf("file %q and %d more (sha256 %s)", j.paths[0], len(j.paths)-1, j.digest)
}

// fetcher downloads blobs into .dpcache/blobs/, failing over between
// sources. It is safe for concurrent use.
type fetcher struct {
	sources []source.Source
	dir     string // .dpcache/blobs
	partDir string // where partial downloads are kept; "" means dir
	log     *slog.Logger
	wrap    func(writeSyncer) writeSyncer

	sticky     atomic.Int64 // index of the source that last served a blob
	downloaded atomic.Int64 // bytes received from sources

	mu       sync.Mutex // guards the fields below
	done     int64
	total    int64
	progress func(done, total int64)
	served   []bool // by source index: served at least one blob
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

// lastServed returns the source that completed the most recent blob, or
// -1 if none did.
func (f *fetcher) lastServed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := int(f.sticky.Load())
	if i >= 0 && i < len(f.served) && f.served[i] {
		return i
	}
	for i, ok := range f.served {
		if ok {
			return i
		}
	}
	return -1
}

// fetch downloads job's blob to f.blobPath(job.digest), verified and
// synced. Sources are tried starting with the one that served last; a
// partial download continues at its offset whichever source serves the
// rest. A local failure (disk full) ends the attempt at once.
func (f *fetcher) fetch(ctx context.Context, job *blobJob) error {
	err := f.fetchBlob(ctx, job)
	var le *localError
	if errors.As(err, &le) || ctx.Err() != nil {
		return fmt.Errorf("%s: %w", job, err) // a *SourcesError names the file itself
	}
	return err
}

func (f *fetcher) fetchBlob(ctx context.Context, job *blobJob) error {
	p, err := openPart(f.partPath(job.digest), f.wrap)
	if err != nil {
		return err
	}
	defer p.close()
	if p.off > job.size {
		f.log.Warn("discarding a partial download longer than the file", "file", job.paths[0], "sha256", job.digest, "have", p.off, "size", job.size)
		if err := p.discard(); err != nil {
			return err
		}
	}
	if p.off > 0 {
		f.log.Info("resuming download", "file", job.paths[0], "sha256", job.digest, "offset", p.off, "size", job.size)
		f.addDone(p.off)
	}
	if p.off == job.size && job.size > 0 {
		// A previous run got every byte but did not finish: check them.
		if p.sum() == job.digest {
			return f.commit(p, job)
		}
		f.addDone(-p.off)
		if err := p.discard(); err != nil {
			return err
		}
	}

	n := len(f.sources)
	start := int(f.sticky.Load())
	var failures []SourceFailure
	for k := range n {
		i := (start + k) % n
		src := f.sources[i]
		err := f.fetchFrom(ctx, src, job, p)
		if err == nil {
			f.sticky.Store(int64(i))
			f.mu.Lock()
			f.served[i] = true
			f.mu.Unlock()
			return f.commit(p, job)
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		var le *localError
		if errors.As(err, &le) {
			return err // the disk, not the source: no use trying another
		}
		failures = append(failures, SourceFailure{Source: src.String(), Err: err})
		if k < n-1 {
			f.log.Warn(fmt.Sprintf("agent: %s from %s; trying next source", job, describeFailure(src.String(), err)))
		}
	}
	return &SourcesError{What: job.String(), Failures: failures}
}

// fetchFrom continues p from src until it holds the whole blob. A stream
// that breaks after making progress is resumed at the new offset from the
// same source, up to maxResumes times; otherwise the partial download is
// kept for the next source. Content that turns out too long or with the
// wrong SHA-256 is discarded.
func (f *fetcher) fetchFrom(ctx context.Context, src source.Source, job *blobJob, p *part) error {
	resumedAt := p.off
	for resumes := 0; ; resumes++ {
		start := p.off
		rc, err := src.Blob(ctx, job.digest, start)
		if err != nil {
			return err
		}
		n, rerr := f.copy(ctx, p, rc, job.size)
		rc.Close()
		var le *localError
		if errors.As(rerr, &le) {
			return rerr
		}
		if errors.Is(rerr, errTooLong) {
			f.addDone(-p.off)
			if err := p.discard(); err != nil {
				return err
			}
			return fmt.Errorf("%w: longer than the manifest's %d bytes", ErrDigestMismatch, job.size)
		}
		if rerr == nil && p.off < job.size {
			rerr = fmt.Errorf("stream ended at byte %d of %d: %w", p.off, job.size, io.ErrUnexpectedEOF)
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if n > 0 && resumes < maxResumes {
				f.log.Info("stream broke; resuming from the same source", "file", job.paths[0], "source", src.String(), "offset", p.off, "size", job.size, "err", rerr)
				continue
			}
			return fmt.Errorf("stream broke at byte %d of %d (kept for resuming): %w", p.off, job.size, rerr)
		}
		if got := p.sum(); got != job.digest {
			note := ""
			if resumedAt > 0 || resumes > 0 {
				note = " after resuming; the whole file is fetched again"
			}
			f.addDone(-p.off)
			if err := p.discard(); err != nil {
				return err
			}
			return fmt.Errorf("%w: sha256 mismatch (got %s, want %s)%s", ErrDigestMismatch, got, job.digest, note)
		}
		return nil
	}
}

// errTooLong means a source sent more bytes than the manifest's size.
var errTooLong = errors.New("too long")

// copy appends r's bytes to p, never past size (errTooLong if r has more),
// counting and reporting progress, until EOF or ctx ends (readers of local
// files do not watch ctx). It returns the bytes appended and the read
// error (nil at EOF) or a *localError for a write failure.
func (f *fetcher) copy(ctx context.Context, p *part, r io.Reader, size int64) (int64, error) {
	buf := make([]byte, copyBufSize)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			f.downloaded.Add(int64(n))
			m := int64(n)
			tooLong := false
			if rem := size - p.off; m > rem {
				m, tooLong = rem, true
			}
			if m > 0 {
				if err := p.write(buf[:m]); err != nil {
					return total, err
				}
				total += m
				f.addDone(m)
			}
			if tooLong {
				return total, errTooLong
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// commit syncs the complete blob and renames it to its final name.
func (f *fetcher) commit(p *part, job *blobJob) error {
	if err := p.finish(); err != nil {
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

// finish syncs and closes the file.
func (p *part) finish() error {
	err := p.w.Sync()
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
