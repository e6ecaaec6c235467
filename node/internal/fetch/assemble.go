package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"google.golang.org/grpc/mem"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/node/internal/nodeerr"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// File is a file that the repository stores only as chunks (a manifest
// entry with Chunks): its whole SHA-256 and size, and its chunks in order.
// The DP serves it whole by assembling its chunks; it never stores the
// assembled file.
type File struct {
	SHA256 string
	Size   int64
	Chunks []manifest.Chunk
}

// fileAhead is how many chunks of a file being read are ensured at once:
// the chunk being read and those after it, fetched in parallel ahead of
// the reader.
const fileAhead = 4

// ReadFile streams the chunked file f from off, as ReadBlob streams a
// blob: the size first, then the bytes, each chunk ensured (fetched once,
// verified by its digest) ahead of the reader. Read from offset 0, the
// whole stream is hashed too and its last bytes are withheld, with a
// DataLoss error instead, when it is not f's SHA256. A forwarded request
// (from a peer DP) never waits on peers or owners for the chunks.
func (fr *Fetcher) ReadFile(ctx context.Context, f File, off int64, forwarded bool, stream BlobSender) error {
	if off < 0 || off > f.Size {
		return fmt.Errorf("file %s: offset %d outside its %d bytes: %w", f.SHA256, off, f.Size, nodeerr.ErrInvalid)
	}
	if err := stream.SendMsg(&pb.BlobChunk{Size: uint64(f.Size)}); err != nil {
		return err
	}
	r := fr.OpenFile(ctx, f, forwarded)
	defer r.Close()
	if _, err := r.Seek(off, io.SeekStart); err != nil {
		return err
	}
	bufs := fr.pool.stream()
	defer bufs.done()
	chunk := int64(fr.cfg.ServeChunk)
	for pos := off; pos < f.Size; {
		buf, err := bufs.get(ctx, int(min(chunk, f.Size-pos)))
		if err != nil {
			return err
		}
		n, err := io.ReadFull(r, *buf)
		if err != nil {
			bufs.Put(buf)
			return err
		}
		if err := stream.SendMsg(&pb.BlobChunk{Data: mem.NewBuffer(buf, bufs)}); err != nil {
			return err
		}
		fr.traffic.served.Add(int64(n))
		pos += int64(n)
	}
	return nil
}

// OpenFile returns a reader of the chunked file f, assembled from its
// chunks as it is read (see FileReader). Close it.
func (fr *Fetcher) OpenFile(ctx context.Context, f File, forwarded bool) *FileReader {
	return &FileReader{fr: fr, ctx: ctx, f: f, forwarded: forwarded}
}

// FileReader reads a chunked file from the cache, chunk after chunk, and
// seeks (an io.ReadSeeker for http.ServeContent). From the first Read after
// a Seek it ensures the chunks ahead of its position, fileAhead at a time
// in parallel, and keeps each pinned against retention until read. Read
// from offset 0, it hashes what it returns and, when the file's last bytes
// would complete a stream that is not f's SHA256, returns a DataLoss error
// instead of them: a reader never gets every byte of a wrong file. Errors
// stick until the next Seek. A FileReader is not safe for concurrent use.
type FileReader struct {
	fr        *Fetcher
	ctx       context.Context
	f         File
	forwarded bool
	pos       int64
	a         *assembly // the read-ahead from pos; nil until a Read
	err       error     // the last Read's error, until a Seek
}

// Read implements io.Reader.
func (r *FileReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.pos >= r.f.Size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.a == nil {
		r.a = r.fr.assemble(r.ctx, r.f, r.pos, r.forwarded)
	}
	n, err := r.a.read(p)
	r.pos += int64(n)
	if err != nil {
		r.err = err
		return n, err
	}
	return n, nil
}

// Seek implements io.Seeker; the read-ahead restarts at the new position
// with the next Read.
func (r *FileReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += r.pos
	case io.SeekEnd:
		off += r.f.Size
	}
	if off < 0 {
		return r.pos, fmt.Errorf("file %s: seek to %d: %w", r.f.SHA256, off, nodeerr.ErrInvalid)
	}
	if off != r.pos || r.err != nil {
		r.stop()
		r.pos, r.err = off, nil
	}
	return off, nil
}

// Err returns the error of the last Read, nil when it succeeded or ended at
// io.EOF.
func (r *FileReader) Err() error {
	if errors.Is(r.err, io.EOF) {
		return nil
	}
	return r.err
}

// Close stops the read-ahead and releases the chunks' pins. Safe to call
// twice.
func (r *FileReader) Close() error {
	r.stop()
	return nil
}

func (r *FileReader) stop() {
	if r.a != nil {
		r.a.close()
		r.a = nil
	}
}

// assembly reads a chunked file from a position on: a goroutine starts
// ensuring the chunks in order, at most fileAhead of them not yet read
// (slots), each ensured by a goroutine of its own whose result lands in
// ring[i%fileAhead] (free by then: its previous chunk has been read).
type assembly struct {
	fr     *Fetcher
	f      File
	cancel context.CancelFunc
	ctx    context.Context
	wg     sync.WaitGroup
	slots  chan struct{}
	ring   [fileAhead]chan ensured

	idx     int       // the chunk being read
	inChunk int64     // the offset in it
	held    *ensured  // the chunk being read, ensured and pinned; nil until received
	pos     int64     // the file offset
	hash    hash.Hash // the bytes read so far, when reading from 0
}

// ensured is the outcome of ensuring one chunk: release unpins it.
type ensured struct {
	err     error
	release func()
}

func (fr *Fetcher) assemble(ctx context.Context, f File, pos int64, forwarded bool) *assembly {
	actx, cancel := context.WithCancel(ctx)
	a := &assembly{fr: fr, f: f, ctx: actx, cancel: cancel, slots: make(chan struct{}, fileAhead), pos: pos}
	for i := range a.ring {
		a.ring[i] = make(chan ensured, 1)
	}
	if pos == 0 {
		a.hash = sha256.New()
	}
	var start int64
	for a.idx < len(f.Chunks) && start+f.Chunks[a.idx].Size <= pos {
		start += f.Chunks[a.idx].Size
		a.idx++
	}
	a.inChunk = pos - start
	first := a.idx
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for i := first; i < len(f.Chunks); i++ {
			select {
			case a.slots <- struct{}{}:
			case <-actx.Done():
				return
			}
			digest := f.Chunks[i].SHA256
			a.wg.Add(1) // while this goroutine's own count is held
			go func() {
				defer a.wg.Done()
				a.ring[i%fileAhead] <- fr.ensureChunk(actx, digest, forwarded)
			}()
		}
	}()
	return a
}

// ensureChunk pins digest and returns once it is whole in the cache, still
// pinned (release on success).
func (fr *Fetcher) ensureChunk(ctx context.Context, digest string, forwarded bool) ensured {
	release, err := fr.pins.StartReading(ctx, digest)
	if err != nil {
		return ensured{err: err}
	}
	if err := fr.ensure(ctx, digest, forwarded, 0); err != nil {
		release()
		return ensured{err: fmt.Errorf("chunk %s: %w", digest, err)}
	}
	return ensured{release: release}
}

// read reads into p from the chunk at the position, once it is ensured.
func (a *assembly) read(p []byte) (int, error) {
	if a.held == nil {
		select {
		case e := <-a.ring[a.idx%fileAhead]:
			if e.err != nil {
				return 0, fmt.Errorf("file %s: %w", a.f.SHA256, e.err)
			}
			a.held = &e
		case <-a.ctx.Done():
			return 0, a.ctx.Err()
		}
	}
	c := a.f.Chunks[a.idx]
	p = p[:min(int64(len(p)), c.Size-a.inChunk)]
	n, err := a.fr.store.ReadAt(c.SHA256, p, a.inChunk)
	if n == len(p) {
		err = nil
	} else if err == nil || err == io.EOF {
		err = fmt.Errorf("file %s: chunk %s: short read at %d: %w", a.f.SHA256, c.SHA256, a.inChunk, nodeerr.ErrDataLoss)
	}
	if err != nil {
		return 0, err
	}
	if a.hash != nil {
		a.hash.Write(p)
		if a.pos+int64(n) == a.f.Size {
			if got := hex.EncodeToString(a.hash.Sum(nil)); got != a.f.SHA256 {
				// Withhold these bytes: the reader must not end up with
				// a complete file that is not the one named.
				return 0, fmt.Errorf("file %s: its chunks assemble to sha256 %s: %w", a.f.SHA256, got, nodeerr.ErrDataLoss)
			}
		}
	}
	a.pos += int64(n)
	a.inChunk += int64(n)
	if a.inChunk == c.Size {
		a.held.release()
		a.held = nil
		<-a.slots
		a.idx++
		a.inChunk = 0
	}
	return n, nil
}

// close stops the read-ahead, waits for it, and releases every pin taken.
func (a *assembly) close() {
	a.cancel()
	a.wg.Wait()
	if a.held != nil {
		a.held.release()
		a.held = nil
	}
	for _, ch := range a.ring {
		select {
		case e := <-ch:
			if e.release != nil {
				e.release()
			}
		default:
		}
	}
}
