package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// MaxBatchBlobs is the most blobs one ReadBlobs request may name; a DP
// refuses more (InvalidArgument).
const MaxBatchBlobs = 1024

// BlobRef names a blob of a ReadBlobs request and its first byte wanted.
type BlobRef struct {
	Digest string
	Offset int64
}

// errBatchProtocol is a ReadBlobs stream that breaks the protocol.
var errBatchProtocol error = &wrappedSentinel{msg: "malformed blobs stream", parent: ErrDataLoss}

// ReadBlobs asks the DP for many blobs in one stream. For each blob it
// sends, in the order of refs, each(i, size, r) is called: r reads the
// blob's bytes from refs[i].Offset to size, and fails if the stream breaks
// first. The caller verifies the bytes. A blob the DP has no source for is
// skipped (each is not called). ReadBlobs returns nil once the DP sent
// all it would, else the first error (each's own, or the stream's, wrapped
// like Blob's); the blobs each did not complete are to be fetched
// otherwise. The stream may stay silent for at most the source's timeout
// between two messages. At most MaxBatchBlobs refs.
func (g *GRPC) ReadBlobs(ctx context.Context, refs []BlobRef, each func(i int, size int64, r io.Reader) error) error {
	if len(refs) == 0 || len(refs) > MaxBatchBlobs {
		return fmt.Errorf("%s: ReadBlobs of %d blobs, want 1 to %d: %w", g, len(refs), MaxBatchBlobs, ErrInvalid)
	}
	req := &pb.ReadBlobsRequest{Blobs: make([]*pb.BlobRef, len(refs)), Forwarded: g.forwarded, Product: g.product, Version: g.version}
	for i, r := range refs {
		if _, err := BlobPath(r.Digest); err != nil {
			return err
		}
		if r.Offset < 0 {
			return fmt.Errorf("%s: blob %s: negative offset %d: %w", g, r.Digest, r.Offset, ErrInvalid)
		}
		req.Blobs[i] = &pb.BlobRef{Sha256: r.Digest, Offset: uint64(r.Offset)}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := fmt.Errorf("%s: ReadBlobs: silent for %v: %w", g, g.timeout, ErrUnavailable)
	idle := time.AfterFunc(g.timeout, func() { cancel(stall) })
	defer idle.Stop()
	stream, err := g.client.ReadBlobs(g.outgoing(ctx), req)
	if err != nil {
		return g.batchErr(ctx, err)
	}
	b := &batchReader{g: g, ctx: ctx, recv: func(m *pb.ReadBlobsResponse) error {
		err := stream.RecvMsg(m)
		idle.Reset(g.timeout)
		return err
	}}
	next := 0
	for {
		start, err := b.nextStart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		i := int(start.GetIndex())
		if i < next || i >= len(refs) {
			return fmt.Errorf("%s: ReadBlobs: blob index %d after %d of %d: %w", g, i, next, len(refs), errBatchProtocol)
		}
		next = i + 1
		if start.GetNotFound() {
			continue
		}
		size := start.GetSize()
		if size > uint64(1<<63-1) || int64(size) < refs[i].Offset {
			return fmt.Errorf("%s: ReadBlobs: blob %s of %d bytes, asked from %d: %w", g, refs[i].Digest, size, refs[i].Offset, ErrDataLoss)
		}
		b.left = int64(size) - refs[i].Offset
		if err := each(i, int64(size), b); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, b); err != nil { // what each left unread
			return err
		}
	}
}

// batchErr wraps a stream error, naming a stall as such.
func (g *GRPC) batchErr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return g.wrap("ReadBlobs", err)
}

// batchReader reads the messages of a ReadBlobs stream: between two
// BlobStarts, the current blob's left bytes.
type batchReader struct {
	g    *GRPC
	ctx  context.Context
	recv func(*pb.ReadBlobsResponse) error
	msg  pb.ReadBlobsResponse
	data []byte // unread bytes of msg
	left int64  // bytes of the current blob not read yet
	eof  bool
}

// receive gets the next message; io.EOF at the stream's clean end.
func (b *batchReader) receive() error {
	if b.eof {
		return io.EOF
	}
	b.msg.Reset()
	if err := b.recv(&b.msg); err != nil {
		if err == io.EOF {
			b.eof = true
			return io.EOF
		}
		return b.g.batchErr(b.ctx, err)
	}
	b.data = b.msg.GetData()
	return nil
}

// nextStart returns the next BlobStart, io.EOF at the stream's end.
func (b *batchReader) nextStart() (*pb.BlobStart, error) {
	if b.left > 0 || len(b.data) > 0 {
		return nil, fmt.Errorf("%s: ReadBlobs: more bytes than the blob's size: %w", b.g, errBatchProtocol)
	}
	if err := b.receive(); err != nil {
		return nil, err
	}
	if b.msg.GetStart() == nil || len(b.data) > 0 {
		return nil, fmt.Errorf("%s: ReadBlobs: bytes before a blob's start: %w", b.g, errBatchProtocol)
	}
	return b.msg.GetStart(), nil
}

func (b *batchReader) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	for len(b.data) == 0 {
		if err := b.receive(); err != nil {
			if err == io.EOF {
				return 0, fmt.Errorf("%s: ReadBlobs: stream ended %d bytes before the blob's end: %w", b.g, b.left, io.ErrUnexpectedEOF)
			}
			return 0, err
		}
		if b.msg.GetStart() != nil {
			return 0, fmt.Errorf("%s: ReadBlobs: next blob started %d bytes before the end of one: %w", b.g, b.left, errBatchProtocol)
		}
	}
	if int64(len(b.data)) > b.left {
		return 0, fmt.Errorf("%s: ReadBlobs: more bytes than the blob's size: %w", b.g, errBatchProtocol)
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	b.left -= int64(n)
	return n, nil
}
