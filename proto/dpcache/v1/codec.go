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
	switch m := v.(type) {
	case *BlobFrames:
		m.Data.Free()
		m.Data, m.Size = nil, 0
		return parseBlobResponse(data, &m.Size, func(r *mem.Reader, start, n int) error {
			// Reference the payload in place; the last occurrence wins.
			m.Data.Free()
			m.Data = sliceRefs(data, start, start+n)
			_, err := r.Discard(n)
			return err
		})
	case *ReadBlobResponse:
		m.Data, m.Size = m.Data[:0], 0
		return parseBlobResponse(data, &m.Size, func(r *mem.Reader, _, n int) error {
			// Copy once, reusing Data's capacity across messages.
			if cap(m.Data) < n {
				m.Data = make([]byte, n)
			}
			m.Data = m.Data[:n]
			_, err := io.ReadFull(r, m.Data)
			return err
		})
	default:
		return protoCodec.Unmarshal(data, v)
	}
}

// parseBlobResponse walks a ReadBlobResponse's fields as protobuf does
// (unknown fields, groups included, skipped; bad field numbers, truncated
// or overlong varints refused), setting *size and handing the data field's
// position to onData, which must consume its n bytes from r.
func parseBlobResponse(data mem.BufferSlice, size *uint64, onData func(r *mem.Reader, start, n int) error) error {
	r := data.Reader()
	defer r.Close()
	total := r.Remaining()
	for r.Remaining() > 0 {
		num, typ, err := readTag(r)
		if err != nil {
			return err
		}
		switch {
		case num == 1 && typ == protowire.BytesType:
			n, err := readVarint(r)
			if err != nil {
				return err
			}
			if n > uint64(r.Remaining()) {
				return errors.New("dpcache.v1.ReadBlobResponse: data length exceeds message")
			}
			if err := onData(r, total-r.Remaining(), int(n)); err != nil {
				return err
			}
		case num == 2 && typ == protowire.VarintType:
			if *size, err = readVarint(r); err != nil {
				return err
			}
		default:
			if err := skipField(r, num, typ, 0); err != nil {
				return fmt.Errorf("dpcache.v1.ReadBlobResponse: field %d: %w", num, err)
			}
		}
	}
	return nil
}

func readTag(r *mem.Reader) (protowire.Number, protowire.Type, error) {
	tag, err := readVarint(r)
	if err != nil {
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(tag)
	if tag>>3 > uint64(protowire.MaxValidNumber) || num < protowire.MinValidNumber {
		return 0, 0, fmt.Errorf("dpcache.v1.ReadBlobResponse: invalid field number %d", tag>>3)
	}
	return num, typ, nil
}

func readVarint(r io.ByteReader) (uint64, error) {
	var x uint64
	for i := 0; i < 10; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, errors.New("dpcache.v1: truncated varint")
		}
		if i == 9 && b > 1 {
			break
		}
		x |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return x, nil
		}
	}
	return 0, errors.New("dpcache.v1: varint overflow")
}

// skipField skips one field's value; for a group, every field up to its
// end tag.
func skipField(r *mem.Reader, num protowire.Number, typ protowire.Type, depth int) error {
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
	case protowire.StartGroupType:
		if depth > 100 {
			return errors.New("groups nested too deep")
		}
		for {
			if r.Remaining() == 0 {
				return errors.New("truncated group")
			}
			inner, t, err := readTag(r)
			if err != nil {
				return err
			}
			if t == protowire.EndGroupType {
				if inner != num {
					return fmt.Errorf("group %d ended by end tag %d", num, inner)
				}
				return nil
			}
			if err := skipField(r, inner, t, depth+1); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected wire type %d", typ)
	}
	if n > uint64(r.Remaining()) {
		return errors.New("truncated field")
	}
	_, err := r.Discard(int(n))
	return err
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
