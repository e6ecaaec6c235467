package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/dpcache/dpcache/manifest"
)

// A chunked file (manifest.File.Chunks) is not a blob of the repository:
// the agent builds it from its chunks, taking those it finds in installed
// files and fetching the others, each verified, then verifies the whole
// file and installs it like a downloaded blob.

// maxLocsPerChunk bounds where one chunk digest is remembered: a chunk
// repeated all over a file (zeros) needs one good copy, not thousands.
const maxLocsPerChunk = 4

// blobFiles returns the blobs that hold files: each file's Parts (a
// chunked file's chunks, an unchunked file itself).
func blobFiles(files []manifest.File) []manifest.File {
	var out []manifest.File
	for _, f := range files {
		out = append(out, f.Parts()...)
	}
	return out
}

// chunkLoc is a chunk's bytes inside an installed file.
type chunkLoc struct {
	path      string
	off, size int64
	verified  bool // by this run, in a pack it wrote: not hashed again
}

// chunkIndex maps chunk digests to installed copies of their bytes.
type chunkIndex map[string][]chunkLoc

func (x chunkIndex) add(digest string, l chunkLoc) {
	if len(x[digest]) < maxLocsPerChunk {
		x[digest] = append(x[digest], l)
	}
}

// indexChunks finds the chunks of want (the chunk digests the new files
// need) in the installed versions vs: the chunk lists of chunked files,
// and for an unchunked file of at least manifest.ChunkThreshold bytes at
// a path that a new chunked file has (paths), its chunks cut with the
// publisher's parameters. Cutting costs a read of the file; it is done
// only where a file the update would otherwise fetch whole was installed
// unchunked (the first chunked version after unchunked ones), so other
// files are never read. A file that cannot be read is skipped: the chunks
// are fetched instead.
func indexChunks(vs []*version, want map[string]bool, paths map[string]bool) chunkIndex {
	x := chunkIndex{}
	for _, v := range vs {
		for _, f := range v.files {
			full := filepath.Join(v.filesDir(), filepath.FromSlash(f.Path))
			if len(f.Chunks) == 0 {
				if f.Size >= manifest.ChunkThreshold && paths[f.Path] {
					cutInstalled(full, want, x)
				}
				continue
			}
			var off int64
			for _, c := range f.Chunks {
				if want[c.SHA256] {
					x.add(c.SHA256, chunkLoc{path: full, off: off, size: c.Size})
				}
				off += c.Size
			}
		}
	}
	return x
}

// cutInstalled indexes the chunks of want found by cutting file path.
func cutInstalled(path string, want map[string]bool, x chunkIndex) {
	in, err := os.Open(path)
	if err != nil {
		return
	}
	defer in.Close()
	var off int64
	_ = manifest.Cut(in, func(data []byte) error {
		sum := sha256.Sum256(data)
		if d := hex.EncodeToString(sum[:]); want[d] {
			x.add(d, chunkLoc{path: path, off: off, size: int64(len(data))})
		}
		off += int64(len(data))
		return nil
	})
}

// chunkJobs returns, for the chunked files jobs, the distinct chunks to
// fetch: those neither in x nor downloaded already (a file of that size in
// f's folder, from an interrupted run; it is verified when used).
func chunkJobs(jobs []*blobJob, x chunkIndex, f *fetcher) []*blobJob {
	seen := map[string]bool{}
	var out []*blobJob
	for _, j := range jobs {
		for i, c := range j.chunks {
			if seen[c.SHA256] || len(x[c.SHA256]) > 0 {
				continue
			}
			seen[c.SHA256] = true
			if fi, err := os.Lstat(f.blobPath(c.SHA256)); err == nil && fi.Mode().IsRegular() && fi.Size() == c.Size {
				continue
			}
			out = append(out, &blobJob{digest: c.SHA256, size: c.Size, paths: j.paths, index: len(out), chunkOf: i + 1})
		}
	}
	return out
}

// maxBufferedChunk is the largest chunk assemble reads into memory (and
// hashes into the whole file's digest as it goes); a larger one, which
// publish never cuts, is copied streaming and the file re-read to verify.
const maxBufferedChunk = 4 * manifest.ChunkMaxSize

// assemble builds chunked file j into f's folder from its chunks (found
// in x, downloaded earlier, or fetched now when no local copy verifies),
// verifies the whole file, and places it in the stage. A crash leaves a
// .part that the next run rebuilds; the chunks fetched stay.
func (u *updater) assemble(ctx context.Context, st *stage, j *blobJob, x chunkIndex, f *fetcher) error {
	part := f.partPath(j.digest)
	out, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return &localError{fmt.Errorf("%s: %w", j, err)}
	}
	defer out.Close()
	cr := &chunkCopier{out: out, whole: sha256.New(), files: map[string]*os.File{}}
	defer cr.close()
	var off int64
	for i, c := range j.chunks {
		ok, err := cr.copy(off, c, append(x[c.SHA256], chunkLoc{path: f.blobPath(c.SHA256), size: c.Size}))
		if err != nil {
			return fmt.Errorf("%s: %w", j, err)
		}
		if !ok { // no local copy verifies: fetch it now
			u.log.Warn("chunk not found intact on disk; fetching it", "file", j.paths[0], "chunk", i+1, "sha256", c.SHA256)
			f.addDone(-c.Size)
			cj := &blobJob{digest: c.SHA256, size: c.Size, paths: j.paths, chunkOf: i + 1}
			if err := f.fetch(ctx, cj); err != nil {
				return err
			}
			if ok, err = cr.copy(off, c, []chunkLoc{{path: f.blobPath(c.SHA256), size: c.Size}}); err != nil || !ok {
				return fmt.Errorf("%s: chunk %d changed on disk after it was verified: %w", j, i+1, errors.Join(err, ErrDigestMismatch))
			}
		}
		off += c.Size
	}
	err = out.Sync()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return &localError{fmt.Errorf("%s: %w", j, err)}
	}
	// The bytes written, in order, hashed as they were written; or, after
	// a chunk copied streaming, the file read back.
	if off != j.size || (cr.whole != nil && hex.EncodeToString(cr.whole.Sum(nil)) != j.digest) || (cr.whole == nil && !verifyFile(part, j.digest, j.size)) {
		_ = os.Remove(part)
		return fmt.Errorf("%s: its verified chunks do not make the file the manifest names: %w", j, ErrDigestMismatch)
	}
	if err := os.Rename(part, f.blobPath(j.digest)); err != nil {
		return &localError{fmt.Errorf("%s: %w", j, err)}
	}
	return st.place(f.blobPath(j.digest), j.paths, j.digest, j.size)
}

// chunkCopier writes the chunks of a file in order into out, hashing them
// into whole (nil once a chunk was copied streaming), and keeps the files
// it reads chunks from open (a pack holds many).
type chunkCopier struct {
	out   *os.File
	whole hash.Hash
	files map[string]*os.File
	buf   []byte
}

func (c *chunkCopier) open(path string) (*os.File, error) {
	if in, ok := c.files[path]; ok {
		return in, nil
	}
	in, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	c.files[path] = in
	return in, nil
}

func (c *chunkCopier) close() {
	for _, in := range c.files {
		in.Close()
	}
}

// copy writes chunk ch at off in out from the first of locs whose bytes
// have ch's digest (a loc this run verified is not hashed again). It
// reports false when none does; out then holds nothing valid past off.
// Only a write error is an error.
func (c *chunkCopier) copy(off int64, ch manifest.Chunk, locs []chunkLoc) (bool, error) {
	if c.whole == nil || ch.Size > maxBufferedChunk {
		c.whole = nil
		return copyChunk(c.out, off, ch, locs)
	}
	if int64(cap(c.buf)) < ch.Size {
		c.buf = make([]byte, max(ch.Size, manifest.ChunkMaxSize))
	}
	b := c.buf[:ch.Size]
	for _, l := range locs {
		in, err := c.open(l.path)
		if err != nil {
			continue
		}
		if n, err := in.ReadAt(b, l.off); n != len(b) && err != nil {
			continue
		}
		if !l.verified {
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != ch.SHA256 {
				continue
			}
		}
		if _, err := c.out.WriteAt(b, off); err != nil {
			return false, &localError{err}
		}
		c.whole.Write(b)
		return true, nil
	}
	return false, nil
}

// copyChunk writes chunk c at off in out from the first of locs whose
// bytes have c's digest. It reports false when none does; out then holds
// nothing valid past off. Only a write error is an error.
func copyChunk(out *os.File, off int64, c manifest.Chunk, locs []chunkLoc) (bool, error) {
	for _, l := range locs {
		in, err := os.Open(l.path)
		if err != nil {
			continue
		}
		h := sha256.New()
		w := io.NewOffsetWriter(out, off)
		n, err := io.Copy(io.MultiWriter(w, h), io.NewSectionReader(in, l.off, c.Size))
		in.Close()
		var pe *os.PathError
		if err != nil && errors.As(err, &pe) && pe.Path == out.Name() {
			return false, &localError{err}
		}
		if err == nil && n == c.Size && hex.EncodeToString(h.Sum(nil)) == c.SHA256 {
			return true, nil
		}
	}
	return false, nil
}
