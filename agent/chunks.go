package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

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
	verified  bool // by this run, written into a file it builds: not hashed again
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

// maxBufferedChunk is the largest chunk read into memory to be verified
// before it is written; a larger one, which publish never cuts, is
// fetched on its own into a blob file and copied from there.
const maxBufferedChunk = 4 * manifest.ChunkMaxSize

// An assembly builds the chunked files of an update in place: each file is
// a .part in f's folder, and every chunk, once verified, is written at its
// offsets there (a chunk a file holds twice, or two files hold, is fetched
// once and written at each), whether it comes from an installed file or a
// source, in any order. Meanwhile a goroutine per file hashes the file's
// bytes from its start as far as the chunks written reach, so the whole
// file's digest is ready, on the second core, shortly after its last chunk.
// A run interrupted leaves the .part files; the next run verifies the
// chunks they hold (openAssembly) and fetches only the others.
type assembly struct {
	f     *fetcher
	files []*asmFile
	byJob map[*blobJob]*asmFile
	at    map[string][]chunkPos // where each chunk of the files goes
}

// chunkPos is the place of a chunk in a file of an assembly.
type chunkPos struct {
	a *asmFile
	i int
}

// asmFile is one chunked file being built.
type asmFile struct {
	job  *blobJob
	out  *os.File
	offs []int64 // each chunk's offset

	mu      sync.Mutex // guards the fields below
	have    []bool     // chunk i verified and written
	next    int        // chunks before it are hashed into whole
	whole   hash.Hash
	hashing bool  // a hashLoop runs
	err     error // a read back failed: whole is useless
	wg      sync.WaitGroup
	buf     []byte // hashLoop's
}

// openAssembly opens (or creates) the .part of each chunked file of jobs
// and keeps the chunks a part left by an interrupted run holds intact.
func openAssembly(jobs []*blobJob, f *fetcher) (*assembly, error) {
	a := &assembly{f: f, byJob: map[*blobJob]*asmFile{}, at: map[string][]chunkPos{}}
	for _, j := range jobs {
		out, err := os.OpenFile(f.partPath(j.digest), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			a.close()
			return nil, &localError{fmt.Errorf("%s: %w", j, err)}
		}
		af := &asmFile{job: j, out: out, offs: make([]int64, len(j.chunks)), have: make([]bool, len(j.chunks)), whole: sha256.New()}
		a.files = append(a.files, af)
		a.byJob[j] = af
		var off int64
		for i, c := range j.chunks {
			af.offs[i] = off
			off += c.Size
			a.at[c.SHA256] = append(a.at[c.SHA256], chunkPos{af, i})
		}
		if err := af.resume(); err != nil {
			a.close()
			return nil, fmt.Errorf("%s: %w", j, err)
		}
	}
	return a, nil
}

// resume marks the chunks the part already holds intact (from an earlier
// run), hashing its intact start, and sizes the part to the file.
func (af *asmFile) resume() error {
	fi, err := af.out.Stat()
	if err != nil {
		return &localError{err}
	}
	if fi.Size() > 0 {
		var buf []byte
		for i, c := range af.job.chunks {
			if af.offs[i]+c.Size > fi.Size() {
				break
			}
			if c.Size > maxBufferedChunk {
				continue
			}
			if int64(cap(buf)) < c.Size {
				buf = make([]byte, max(c.Size, manifest.ChunkMaxSize))
			}
			b := buf[:c.Size]
			if _, err := af.out.ReadAt(b, af.offs[i]); err != nil {
				break
			}
			if !sumIs(b, c.SHA256) {
				continue
			}
			af.have[i] = true
			if af.next == i {
				af.whole.Write(b)
				af.next++
			}
		}
	}
	if err := af.out.Truncate(af.job.size); err != nil {
		return &localError{err}
	}
	return nil
}

// sumIs reports whether b's SHA-256 is the hex digest d.
func sumIs(b []byte, d string) bool {
	sum := sha256.Sum256(b)
	var want [sha256.Size]byte
	_, err := hex.Decode(want[:], []byte(d))
	return err == nil && sum == want
}

// resumedBytes is the size of the chunks the parts held intact.
func (a *assembly) resumedBytes() int64 {
	var n int64
	for _, af := range a.files {
		for i, ok := range af.have {
			if ok {
				n += af.job.chunks[i].Size
			}
		}
	}
	return n
}

// fill writes the chunks found in x (installed files), in a blob file
// left in f's folder, or at another place of the assembly, each verified,
// and returns the distinct chunks still to fetch.
func (a *assembly) fill(x chunkIndex) ([]*blobJob, error) {
	var buf []byte
	var fetch []*blobJob
	seen := map[string]bool{}
	for _, af := range a.files {
		for i, c := range af.job.chunks {
			if af.has(i) || seen[c.SHA256] {
				continue
			}
			locs := slices.Clip(x[c.SHA256])
			if fi, err := os.Lstat(a.f.blobPath(c.SHA256)); err == nil && fi.Mode().IsRegular() && fi.Size() == c.Size {
				locs = append(locs, chunkLoc{path: a.f.blobPath(c.SHA256), size: c.Size})
			}
			for _, p := range a.at[c.SHA256] {
				if p.a.has(p.i) {
					locs = append(locs, chunkLoc{path: p.a.out.Name(), off: p.a.offs[p.i], size: c.Size, verified: true})
					break
				}
			}
			if c.Size <= maxBufferedChunk && int64(cap(buf)) < c.Size {
				buf = make([]byte, max(c.Size, manifest.ChunkMaxSize))
			}
			ok, err := a.copyIn(c, locs, buf)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", af.job, err)
			}
			if !ok {
				seen[c.SHA256] = true
				fetch = append(fetch, &blobJob{digest: c.SHA256, size: c.Size, paths: af.job.paths, index: len(fetch), chunkOf: i + 1})
			}
		}
	}
	return fetch, nil
}

func (af *asmFile) has(i int) bool {
	af.mu.Lock()
	defer af.mu.Unlock()
	return af.have[i]
}

// copyIn writes chunk c at its places from the first of locs whose bytes
// have its digest (a loc this run verified is not hashed again). It
// reports false when none does. Only a write error is an error.
func (a *assembly) copyIn(c manifest.Chunk, locs []chunkLoc, buf []byte) (bool, error) {
	for _, l := range locs {
		in, err := os.Open(l.path)
		if err != nil {
			continue
		}
		if c.Size > maxBufferedChunk { // streamed: hashed on the way
			h := sha256.New()
			n, err := io.Copy(h, io.NewSectionReader(in, l.off, c.Size))
			if err == nil && n == c.Size && hex.EncodeToString(h.Sum(nil)) == c.SHA256 {
				err = a.putFrom(c.SHA256, in, l.off, c.Size)
				in.Close()
				return err == nil, err
			}
			in.Close()
			continue
		}
		b := buf[:c.Size]
		n, err := in.ReadAt(b, l.off)
		in.Close()
		if n != len(b) && err != nil {
			continue
		}
		if !l.verified && !sumIs(b, c.SHA256) {
			continue
		}
		return true, a.put(c.SHA256, b)
	}
	return false, nil
}

// put writes chunk digest's verified bytes b at each of its places not
// written yet.
func (a *assembly) put(digest string, b []byte) error {
	for _, p := range a.at[digest] {
		if p.a.has(p.i) {
			continue
		}
		if _, err := p.a.out.WriteAt(b, p.a.offs[p.i]); err != nil {
			return &localError{err}
		}
		p.a.written(p.i)
	}
	return nil
}

// putFrom writes chunk digest's verified bytes, size bytes at off in in,
// at each of its places not written yet.
func (a *assembly) putFrom(digest string, in *os.File, off, size int64) error {
	for _, p := range a.at[digest] {
		if p.a.has(p.i) {
			continue
		}
		w := io.NewOffsetWriter(p.a.out, p.a.offs[p.i])
		if _, err := io.Copy(w, io.NewSectionReader(in, off, size)); err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) && pe.Path == p.a.out.Name() {
				return &localError{err}
			}
			return err
		}
		p.a.written(p.i)
	}
	return nil
}

// putFile writes chunk digest, fetched into the blob file path (verified),
// at its places, then removes the file.
func (a *assembly) putFile(digest, path string, size int64) error {
	in, err := os.Open(path)
	if err != nil {
		return &localError{err}
	}
	err = a.putFrom(digest, in, 0, size)
	in.Close()
	if err == nil {
		_ = os.Remove(path)
	}
	return err
}

// written marks chunk i written and lets the hashing go on.
func (af *asmFile) written(i int) {
	af.mu.Lock()
	defer af.mu.Unlock()
	af.have[i] = true
	if !af.hashing && af.next == i && af.err == nil {
		af.hashing = true
		af.wg.Add(1)
		go func() {
			defer af.wg.Done()
			af.hashLoop()
		}()
	}
}

// hashLoop hashes the written chunks from next on, in order, reading
// them back (from the page cache), until one is missing.
func (af *asmFile) hashLoop() {
	af.mu.Lock()
	defer af.mu.Unlock()
	for af.next < len(af.have) && af.have[af.next] && af.err == nil {
		i := af.next
		af.mu.Unlock()
		if af.buf == nil {
			af.buf = make([]byte, copyBufSize)
		}
		_, err := io.CopyBuffer(af.whole, io.NewSectionReader(af.out, af.offs[i], af.job.chunks[i].Size), af.buf)
		af.mu.Lock()
		if err != nil {
			af.err = err
			break
		}
		af.next++
	}
	af.hashing = false
}

// finish verifies chunked file j complete, syncs it, checks the whole
// file's digest and places it in the stage.
func (a *assembly) finish(st *stage, j *blobJob) error {
	af := a.byJob[j]
	af.wg.Wait()
	af.mu.Lock()
	af.hashing = true // the rest is hashed here, not in a goroutine
	af.mu.Unlock()
	af.hashLoop()
	for i, ok := range af.have {
		if !ok {
			return fmt.Errorf("%s: chunk %d was not fetched", j, i+1)
		}
	}
	if af.err != nil {
		return &localError{fmt.Errorf("%s: %w", j, af.err)}
	}
	if err := af.out.Sync(); err != nil {
		return &localError{fmt.Errorf("%s: %w", j, err)}
	}
	if hex.EncodeToString(af.whole.Sum(nil)) != j.digest {
		af.out.Close()
		_ = os.Remove(af.out.Name())
		return fmt.Errorf("%s: its verified chunks do not make the file the manifest names: %w", j, ErrDigestMismatch)
	}
	if err := af.out.Close(); err != nil {
		return &localError{fmt.Errorf("%s: %w", j, err)}
	}
	if err := os.Rename(af.out.Name(), a.f.blobPath(j.digest)); err != nil {
		return &localError{fmt.Errorf("%s: %w", j, err)}
	}
	return st.place(a.f.blobPath(j.digest), j.paths, j.digest, j.size)
}

// close waits for the hashing and closes the files (finish closed those
// it placed already).
func (a *assembly) close() {
	for _, af := range a.files {
		af.wg.Wait()
		af.out.Close()
	}
}
