package dpcachev1

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Codec is the gRPC codec dpcache servers and clients force (grpc.ForceServerCodecV2,
// grpc.ForceCodecV2). On the wire it is the standard "proto" codec, so stock
// tools such as grpcurl interoperate; it differs only in how blob chunks
// move through memory:
//
//   - A server sends a *BlobChunk in place of a *ReadBlobResponse: the chunk's
//     buffer goes to the transport as is, behind a few header bytes, instead
//     of being copied into a freshly marshalled message.
//   - A client receiving a *ReadBlobResponse gets the bytes copied once,
//     straight from the transport's buffers into Data, reusing Data's
//     capacity across messages.
//
// Every other message is handled by the standard proto codec.
type Codec struct{}

var protoCodec = encoding.GetCodecV2("proto")

// BlobChunk is a ReadBlobResponse whose Data is a reference-counted buffer.
// Passing it to SendMsg hands the reference to gRPC, which frees it once the
// bytes are written: the sender must not use or free Data afterwards.
type BlobChunk struct {
	Data mem.Buffer
	// Size is the blob's total size; sent only when non-zero.
	Size uint64
}

// Name implements encoding.CodecV2. It is "proto": the wire format is
// unchanged.
func (Codec) Name() string { return "proto" }

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	c, ok := v.(*BlobChunk)
	if !ok {
		return protoCodec.Marshal(v)
	}
	var hdr []byte
	if c.Size != 0 {
		hdr = protowire.AppendTag(hdr, 2, protowire.VarintType)
		hdr = protowire.AppendVarint(hdr, c.Size)
	}
	if c.Data == nil || c.Data.Len() == 0 {
		if c.Data != nil {
			c.Data.Free()
		}
		return mem.BufferSlice{mem.SliceBuffer(hdr)}, nil
	}
	hdr = protowire.AppendTag(hdr, 1, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(c.Data.Len()))
	return mem.BufferSlice{mem.SliceBuffer(hdr), c.Data}, nil
}

// BlobFrames is a ReadBlobResponse received without copying: Data holds
// references to the transport's buffers. Pass it to RecvMsg in place of a
// *ReadBlobResponse; the receiver owns the references and must Free Data
// once it has consumed the bytes (RecvMsg into the same BlobFrames frees the
// previous ones).
type BlobFrames struct {
	Data mem.BufferSlice
	// Size is the blob's total size, set in the first message only.
	Size uint64
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*BlobFrames); ok {
		return unmarshalFrames(data, f)
	}
	m, ok := v.(*ReadBlobResponse)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	r := data.Reader()
	defer r.Close()
	m.Data = m.Data[:0]
	m.Size = 0
	for r.Remaining() > 0 {
		tag, err := readVarint(r)
		if err != nil {
			return err
		}
		num, typ := protowire.DecodeTag(tag)
		switch {
		case num == 1 && typ == protowire.BytesType:
			n, err := readVarint(r)
			if err != nil {
				return err
			}
			if n > uint64(r.Remaining()) {
				return errors.New("dpcache.v1.ReadBlobResponse: data length exceeds message")
			}
			// Repeated occurrences of a bytes field: the last one wins.
			if uint64(cap(m.Data)) < n {
				m.Data = make([]byte, n)
			}
			m.Data = m.Data[:n]
			if _, err := io.ReadFull(r, m.Data); err != nil {
				return err
			}
		case num == 2 && typ == protowire.VarintType:
			if m.Size, err = readVarint(r); err != nil {
				return err
			}
		default:
			if err := skipField(r, typ); err != nil {
				return fmt.Errorf("dpcache.v1.ReadBlobResponse: field %d: %w", num, err)
			}
		}
	}
	return nil
}

func readVarint(r io.ByteReader) (uint64, error) {
	var x uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, errors.New("dpcache.v1: truncated varint")
		}
		x |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return x, nil
		}
	}
	return 0, errors.New("dpcache.v1: varint overflow")
}

func skipField(r *mem.Reader, typ protowire.Type) error {
	var n uint64
	switch typ {
	case protowire.VarintType:
		_, err := readVarint(r)
		return err
	case protowire.Fixed32Type:
		n = 4
	case protowire.Fixed64Type:
		n = 8
	case protowire.BytesType:
		var err error
		if n, err = readVarint(r); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unsupported wire type %d", typ)
	}
	if n > uint64(r.Remaining()) {
		return errors.New("truncated field")
	}
	_, err := r.Discard(int(n))
	return err
}

// unmarshalFrames parses a ReadBlobResponse whose data field is taken as
// references to data's buffers.
func unmarshalFrames(data mem.BufferSlice, f *BlobFrames) error {
	f.Data.Free()
	f.Data, f.Size = nil, 0
	// The message is small fields plus one large bytes field; parse the
	// header bytes with a reader, then reference the payload in place.
	r := data.Reader()
	defer r.Close()
	total := r.Remaining()
	for r.Remaining() > 0 {
		tag, err := readVarint(r)
		if err != nil {
			return err
		}
		num, typ := protowire.DecodeTag(tag)
		switch {
		case num == 1 && typ == protowire.BytesType:
			n, err := readVarint(r)
			if err != nil {
				return err
			}
			if n > uint64(r.Remaining()) {
				return errors.New("dpcache.v1.ReadBlobResponse: data length exceeds message")
			}
			start := total - r.Remaining()
			f.Data.Free()
			f.Data = sliceRefs(data, start, start+int(n))
			if _, err := r.Discard(int(n)); err != nil {
				return err
			}
		case num == 2 && typ == protowire.VarintType:
			if f.Size, err = readVarint(r); err != nil {
				return err
			}
		default:
			if err := skipField(r, typ); err != nil {
				return fmt.Errorf("dpcache.v1.ReadBlobResponse: field %d: %w", num, err)
			}
		}
	}
	return nil
}

// sliceRefs returns bytes [start, end) of s as new references to its
// buffers (no bytes are copied).
func sliceRefs(s mem.BufferSlice, start, end int) mem.BufferSlice {
	var out mem.BufferSlice
	pos := 0
	for _, b := range s {
		l := b.Len()
		if lo, hi := max(start-pos, 0), min(end-pos, l); lo < hi {
			out = append(out, b.Slice(lo, hi))
		}
		pos += l
		if pos >= end {
			break
		}
	}
	return out
}
