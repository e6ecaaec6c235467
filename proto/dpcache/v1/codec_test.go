package dpcachev1

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// countingPool is a mem.BufferPool that records every buffer it hands out
// and how many times each comes back, to prove that buffers are freed
// exactly once: never leaked, never freed twice (a double free returns a
// buffer to the pool while someone still reads it).
type countingPool struct {
	mu    sync.Mutex
	owned map[*[]byte]bool
	puts  map[*[]byte]int
	alien int // Put of a buffer this pool did not create
}

func newCountingPool() *countingPool {
	return &countingPool{owned: map[*[]byte]bool{}, puts: map[*[]byte]int{}}
}

// Get returns a buffer of length n with room enough (at least 4 KiB) that
// mem.NewBuffer reference-counts it rather than treating it as a plain
// slice.
func (p *countingPool) Get(n int) *[]byte {
	b := make([]byte, n, max(n, 4096))
	p.mu.Lock()
	p.owned[&b] = true
	p.mu.Unlock()
	return &b
}

func (p *countingPool) Put(b *[]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.owned[b] {
		p.alien++
		return
	}
	p.puts[b]++
}

// buffer returns a reference-counted mem.Buffer holding a copy of data.
func (p *countingPool) buffer(data []byte) mem.Buffer {
	b := p.Get(len(data))
	copy(*b, data)
	return mem.NewBuffer(b, p)
}

// check fails the test unless every buffer handed out came back exactly
// once.
func (p *countingPool) check(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.alien > 0 {
		t.Errorf("%d buffers the pool never handed out were returned to it", p.alien)
	}
	leaked, double := 0, 0
	for b := range p.owned {
		switch n := p.puts[b]; {
		case n == 0:
			leaked++
		case n > 1:
			double++
		}
	}
	if leaked > 0 || double > 0 {
		t.Errorf("of %d buffers, %d were never freed and %d were freed more than once", len(p.owned), leaked, double)
	}
}

// freed reports how many buffers have come back so far.
func (p *countingPool) freed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.puts)
}

// splitAt returns msg as a BufferSlice cut at the given offsets (sorted,
// repeats allowed: a repeated offset makes an empty buffer), every buffer
// reference-counted by pool.
func splitAt(pool *countingPool, msg []byte, cuts ...int) mem.BufferSlice {
	var s mem.BufferSlice
	prev := 0
	for _, c := range append(cuts, len(msg)) {
		s = append(s, pool.buffer(msg[prev:c]))
		prev = c
	}
	return s
}

// splits returns the ways a test cuts a message of n bytes: whole, in two
// at every offset, in three around every offset, one byte per buffer, and
// with empty buffers at both ends and in the middle. Long messages get a
// sample of cuts.
func splits(n int) [][]int {
	out := [][]int{nil, {0}, {n}, {0, 0, n / 2, n / 2, n, n}}
	step := 1
	if n > 600 {
		step = n/97 + 1
	}
	for i := 1; i < n; i += step {
		out = append(out, []int{i})
		if i+1 < n {
			out = append(out, []int{i - 1, i + 1})
		}
	}
	if n <= 600 {
		every := make([]int, 0, n)
		for i := 1; i < n; i++ {
			every = append(every, i)
		}
		out = append(out, every)
	}
	return out
}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + 7)
	}
	return b
}

// unknown appends fields that ReadBlobResponse does not define (or defines
// with another wire type), which decoders must skip.
func unknown(b []byte) []byte {
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, 1<<62)
	b = protowire.AppendTag(b, 4, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 0xdeadbeef)
	b = protowire.AppendTag(b, 5, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 0x0123456789abcdef)
	b = protowire.AppendTag(b, 6, protowire.BytesType)
	b = protowire.AppendBytes(b, payload(200))
	b = protowire.AppendTag(b, 7, protowire.BytesType)
	b = protowire.AppendBytes(b, nil)
	// Known numbers with the wrong wire type are unknown fields too.
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 99)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("not a varint"))
	b = protowire.AppendTag(b, 1, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 1)
	// The largest field number.
	b = protowire.AppendTag(b, protowire.MaxValidNumber, protowire.VarintType)
	b = protowire.AppendVarint(b, 0)
	return b
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// validMessages are encodings of ReadBlobResponse that proto.Unmarshal
// accepts.
func validMessages(t testing.TB) map[string][]byte {
	big := payload(70_001)
	msgs := map[string][]byte{
		"empty":                marshal(t, &ReadBlobResponse{}),
		"size only":            marshal(t, &ReadBlobResponse{Size: 1}),
		"max size":             marshal(t, &ReadBlobResponse{Size: 1<<64 - 1}),
		"one byte":             marshal(t, &ReadBlobResponse{Data: []byte{0}}),
		"127 bytes":            marshal(t, &ReadBlobResponse{Data: payload(127)}),
		"128 bytes and size":   marshal(t, &ReadBlobResponse{Data: payload(128), Size: 1 << 40}),
		"300 bytes and size":   marshal(t, &ReadBlobResponse{Data: payload(300), Size: 300}),
		"70001 bytes and size": marshal(t, &ReadBlobResponse{Data: big, Size: uint64(len(big))}),
	}
	// Field order is free on the wire: size after data, as Codec.Marshal
	// writes it before.
	var b []byte
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, 1234)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, payload(40))
	msgs["size before data"] = b
	msgs["unknown fields after"] = unknown(marshal(t, &ReadBlobResponse{Data: payload(50), Size: 50}))
	msgs["unknown fields before"] = append(unknown(nil), marshal(t, &ReadBlobResponse{Data: payload(50), Size: 50})...)
	msgs["unknown fields only"] = unknown(nil)
	// Repeated scalar fields: the last one wins.
	b = marshal(t, &ReadBlobResponse{Data: payload(60), Size: 1})
	b = append(b, marshal(t, &ReadBlobResponse{Data: []byte("second"), Size: 2})...)
	msgs["repeated fields"] = b
	b = marshal(t, &ReadBlobResponse{Data: payload(60)})
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, nil)
	msgs["data then empty data"] = b
	// A non-minimal varint (padded with 0x80 bytes) is still valid.
	msgs["padded varint"] = []byte{0x10, 0x85, 0x80, 0x80, 0x00}
	return msgs
}

// decodeBoth decodes in with Codec into a *ReadBlobResponse and into a
// *BlobFrames and returns what each decoded (frames materialised).
func decodeBoth(in mem.BufferSlice) (r *ReadBlobResponse, rerr error, f *BlobFrames, ferr error) {
	r = &ReadBlobResponse{}
	rerr = Codec{}.Unmarshal(in, r)
	f = &BlobFrames{}
	ferr = Codec{}.Unmarshal(in, f)
	return r, rerr, f, ferr
}

func TestCodec_Name(t *testing.T) {
	t.Parallel()
	if got := (Codec{}).Name(); got != "proto" {
		t.Errorf("Name() = %q, want \"proto\" (the wire format is the standard one)", got)
	}
	if encoding.GetCodecV2("proto") == nil {
		t.Fatal("the standard proto codec is not registered")
	}
}

// TestCodec_MarshalBlobChunk: what Codec.Marshal makes of a BlobChunk is a
// ReadBlobResponse to any standard decoder, and the chunk's buffer goes out
// as is, freed once when gRPC frees the message.
func TestCodec_MarshalBlobChunk(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		data []byte // nil: no buffer at all
		// empty: a non-nil buffer of length 0 (a pooled one)
		empty bool
		size  uint64
	}{
		{name: "nothing"},
		{name: "size only", size: 5},
		{name: "max size", size: 1<<64 - 1},
		{name: "empty buffer", empty: true},
		{name: "empty buffer and size", empty: true, size: 9},
		{name: "one byte", data: []byte{42}},
		{name: "one byte and size", data: []byte{0}, size: 1},
		{name: "127 bytes", data: payload(127)},
		{name: "128 bytes", data: payload(128), size: 128},
		{name: "256 KiB", data: payload(256 << 10), size: 1 << 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool := newCountingPool()
			c := &BlobChunk{Size: tt.size}
			switch {
			case tt.empty:
				c.Data = pool.buffer(nil)
			case tt.data != nil:
				c.Data = pool.buffer(tt.data)
			}
			var dataPtr *byte
			if len(tt.data) > 0 {
				dataPtr = &c.Data.ReadOnlyData()[0]
			}
			out, err := Codec{}.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if dataPtr != nil {
				// The chunk's bytes are not copied.
				last := out[len(out)-1].ReadOnlyData()
				if &last[0] != dataPtr {
					t.Error("Marshal copied the chunk's bytes instead of passing its buffer on")
				}
			}
			wire := out.Materialize()
			var got ReadBlobResponse
			if err := proto.Unmarshal(wire, &got); err != nil {
				t.Fatalf("proto.Unmarshal of Marshal's output: %v", err)
			}
			if !bytes.Equal(got.GetData(), tt.data) || got.GetSize() != tt.size {
				t.Errorf("decoded data %d bytes, size %d; want %d bytes, size %d", len(got.GetData()), got.GetSize(), len(tt.data), tt.size)
			}
			if len(got.ProtoReflect().GetUnknown()) != 0 {
				t.Errorf("decoded message has unknown fields %x", got.ProtoReflect().GetUnknown())
			}
			// The codec's own decoders read the multi-buffer output too.
			r, rerr, f, ferr := decodeBoth(out)
			if rerr != nil || ferr != nil {
				t.Fatalf("Codec.Unmarshal of Marshal's output: %v, %v", rerr, ferr)
			}
			if !bytes.Equal(r.Data, tt.data) || r.Size != tt.size {
				t.Errorf("Codec into *ReadBlobResponse: %d bytes, size %d", len(r.Data), r.Size)
			}
			if !bytes.Equal(f.Data.Materialize(), tt.data) || f.Size != tt.size {
				t.Errorf("Codec into *BlobFrames: %d bytes, size %d", f.Data.Len(), f.Size)
			}
			f.Data.Free()
			// gRPC frees the marshalled message once written.
			out.Free()
			pool.check(t)
		})
	}
}

// TestCodec_MarshalOther: every other message goes through the standard
// codec.
func TestCodec_MarshalOther(t *testing.T) {
	t.Parallel()
	msgs := []proto.Message{
		&GetLatestRequest{Product: "kes", Forwarded: true},
		&GetLatestResponse{Latest: &SignedDocument{Data: []byte(`{"product":"kes"}`), Signature: []byte("sig")}},
		&ReadBlobRequest{Sha256: "ab", Offset: 1 << 33},
		&ReadBlobResponse{Data: payload(1000), Size: 1000},
		&EndpointStatus{Id: "e1", Product: "kes", Serial: 7},
	}
	for _, m := range msgs {
		out, err := Codec{}.Marshal(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		got := m.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(out.Materialize(), got); err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if !proto.Equal(got, m) {
			t.Errorf("%T: round trip gave %v, want %v", m, got, m)
		}
		back := m.ProtoReflect().New().Interface()
		if _, ok := back.(*ReadBlobResponse); !ok {
			if err := (Codec{}).Unmarshal(out, back); err != nil || !proto.Equal(back, m) {
				t.Errorf("%T: Codec.Unmarshal gave %v, %v", m, back, err)
			}
		}
		out.Free()
	}
	if _, err := (Codec{}).Marshal("not a message"); err == nil {
		t.Error("Marshal of a string: no error")
	}
	if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer{0x0a, 0x01, 'x'}}, new(int)); err == nil {
		t.Error("Unmarshal into an *int: no error")
	}
}

// TestCodec_Unmarshal: both of the codec's decoders agree with
// proto.Unmarshal on every valid encoding, however the transport cut it
// into buffers, and free every buffer exactly once.
func TestCodec_Unmarshal(t *testing.T) {
	t.Parallel()
	for name, msg := range validMessages(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var want ReadBlobResponse
			if err := proto.Unmarshal(msg, &want); err != nil {
				t.Fatalf("proto.Unmarshal: %v", err)
			}
			pool := newCountingPool()
			for _, cuts := range splits(len(msg)) {
				in := splitAt(pool, msg, cuts...)
				r, rerr, f, ferr := decodeBoth(in)
				// gRPC frees the received buffers after Unmarshal: the
				// frames must hold their own references.
				in.Free()
				if rerr != nil {
					t.Fatalf("cut at %v: into *ReadBlobResponse: %v", cuts, rerr)
				}
				if ferr != nil {
					t.Fatalf("cut at %v: into *BlobFrames: %v", cuts, ferr)
				}
				if !bytes.Equal(r.Data, want.Data) || r.Size != want.Size {
					t.Fatalf("cut at %v: *ReadBlobResponse got %d bytes, size %d; want %d bytes, size %d", cuts, len(r.Data), r.Size, len(want.Data), want.Size)
				}
				if got := f.Data.Materialize(); !bytes.Equal(got, want.Data) || f.Size != want.Size {
					t.Fatalf("cut at %v: *BlobFrames got %d bytes, size %d; want %d bytes, size %d", cuts, len(got), f.Size, len(want.Data), want.Size)
				}
				f.Data.Free()
			}
			pool.check(t)
		})
	}
}

// TestCodec_UnmarshalUnknownGroup: an unknown field of the (deprecated but
// valid) group wire type is skipped by proto.Unmarshal; the codec, which
// claims the standard wire format, must skip it too.
func TestCodec_UnmarshalUnknownGroup(t *testing.T) {
	t.Parallel()
	msg := marshal(t, &ReadBlobResponse{Data: []byte("abc"), Size: 3})
	msg = protowire.AppendTag(msg, 9, protowire.StartGroupType)
	msg = protowire.AppendTag(msg, 1, protowire.VarintType)
	msg = protowire.AppendVarint(msg, 5)
	msg = protowire.AppendTag(msg, 9, protowire.EndGroupType)
	var want ReadBlobResponse
	if err := proto.Unmarshal(msg, &want); err != nil {
		t.Fatalf("proto.Unmarshal: %v", err)
	}
	pool := newCountingPool()
	in := splitAt(pool, msg)
	r, rerr, f, ferr := decodeBoth(in)
	in.Free()
	if rerr != nil || ferr != nil {
		t.Errorf("a message with an unknown group field: *ReadBlobResponse: %v; *BlobFrames: %v; proto.Unmarshal accepts it", rerr, ferr)
	} else if string(r.Data) != "abc" || r.Size != 3 || string(f.Data.Materialize()) != "abc" || f.Size != 3 {
		t.Errorf("decoded %q/%d and %q/%d, want \"abc\"/3", r.Data, r.Size, f.Data.Materialize(), f.Size)
	}
	f.Data.Free()
	pool.check(t)
}

// TestCodec_Truncated: every prefix of a valid encoding decodes exactly as
// proto.Unmarshal decodes it (a prefix that ends between fields is a valid
// shorter message) or is an error when proto.Unmarshal says so; never a
// panic, never a leaked or doubly freed buffer.
func TestCodec_Truncated(t *testing.T) {
	t.Parallel()
	for name, msg := range validMessages(t) {
		if len(msg) > 1000 {
			msg = msg[:1000] // prefixes of the big one: the header matters
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pool := newCountingPool()
			for n := range len(msg) {
				prefix := msg[:n]
				var want ReadBlobResponse
				perr := proto.Unmarshal(prefix, &want)
				for _, cuts := range [][]int{nil, {n / 2}} {
					in := splitAt(pool, prefix, cuts...)
					r, rerr, f, ferr := decodeBoth(in)
					in.Free()
					switch {
					case perr != nil && (rerr == nil || ferr == nil):
						t.Errorf("prefix of %d bytes (%x...): proto.Unmarshal fails (%v) but the codec accepts it (*ReadBlobResponse: %v, *BlobFrames: %v)", n, head(prefix), perr, rerr, ferr)
					case perr == nil && (rerr != nil || ferr != nil):
						t.Errorf("prefix of %d bytes: valid, but the codec fails: %v, %v", n, rerr, ferr)
					case perr == nil:
						if !bytes.Equal(r.Data, want.Data) || r.Size != want.Size || !bytes.Equal(f.Data.Materialize(), want.Data) || f.Size != want.Size {
							t.Errorf("prefix of %d bytes decoded differently from proto.Unmarshal", n)
						}
					}
					// After an error the caller still owns what the frames
					// reference (RecvMsg into the same frames, or Close,
					// frees it).
					f.Data.Free()
				}
			}
			pool.check(t)
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 16)] }

// TestCodec_Malformed: encodings proto.Unmarshal rejects are rejected by
// both decoders too.
func TestCodec_Malformed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  []byte
	}{
		{"truncated tag", []byte{0x80}},
		{"tag varint of 11 bytes", append(bytes.Repeat([]byte{0xff}, 10), 0x01)},
		{"data length past the end", []byte{0x0a, 0x05, 'a', 'b'}},
		{"data length huge", append([]byte{0x0a}, binary.AppendUvarint(nil, 1<<63)...)},
		{"data length 2^64-1", append([]byte{0x0a}, binary.AppendUvarint(nil, 1<<64-1)...)},
		{"truncated data length", []byte{0x0a, 0x80}},
		{"truncated size", []byte{0x10, 0xff}},
		{"unknown bytes field past the end", []byte{0x32, 0x10, 1, 2, 3}},
		{"unknown fixed32 truncated", []byte{0x25, 1, 2}},
		{"unknown fixed64 truncated", []byte{0x29, 1, 2, 3, 4, 5, 6, 7}},
		{"wire type 6", []byte{0x0e, 0x00}},
		{"wire type 7", []byte{0x0f, 0x00}},
		{"end group without start", []byte{0x0c}},
		{"unterminated group", []byte{0x0b, 0x10, 0x01}},
	}
	testRejected(t, tests)
}

// TestCodec_InvalidNumbersRejected: field numbers outside 1..2^29-1 and
// varints that overflow 64 bits are not protobuf; proto.Unmarshal rejects
// them and so must a codec that claims the standard wire format.
func TestCodec_InvalidNumbersRejected(t *testing.T) {
	t.Parallel()
	testRejected(t, []struct {
		name string
		msg  []byte
	}{
		{"field number 0", []byte{0x00, 0x01}},
		{"field number 0 bytes", []byte{0x02, 0x00}},
		{"field number past the maximum", append(protowire.AppendVarint(nil, uint64(protowire.MaxValidNumber+1)<<3), 0x00)},
		{"size varint overflows 64 bits", append([]byte{0x10}, append(bytes.Repeat([]byte{0xff}, 9), 0x7f)...)},
	})
}

func testRejected(t *testing.T, tests []struct {
	name string
	msg  []byte
}) {
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := proto.Unmarshal(tt.msg, new(ReadBlobResponse)); err == nil {
				t.Fatalf("test bug: proto.Unmarshal accepts %x", tt.msg)
			}
			pool := newCountingPool()
			for _, cuts := range splits(len(tt.msg)) {
				in := splitAt(pool, tt.msg, cuts...)
				_, rerr, f, ferr := decodeBoth(in)
				in.Free()
				f.Data.Free()
				if rerr == nil || ferr == nil {
					t.Errorf("%x cut at %v: *ReadBlobResponse: %v, *BlobFrames: %v; want errors", tt.msg, cuts, rerr, ferr)
					break
				}
			}
			pool.check(t)
		})
	}
}

// TestCodec_BlobFramesNoCopy: frames reference the transport's buffers.
func TestCodec_BlobFramesNoCopy(t *testing.T) {
	t.Parallel()
	data := payload(5000)
	msg := marshal(t, &ReadBlobResponse{Data: data, Size: 1 << 20})
	start := bytes.Index(msg, data) // where the payload begins
	pool := newCountingPool()
	in := splitAt(pool, msg, start+1000, start+3000)
	var f BlobFrames
	if err := (Codec{}).Unmarshal(in, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Data) != 3 {
		t.Fatalf("frames hold %d buffers, want the 3 the payload spans", len(f.Data))
	}
	for i, b := range f.Data {
		want := &in[i].ReadOnlyData()[0]
		if i == 0 {
			want = &in[0].ReadOnlyData()[start]
		}
		if &b.ReadOnlyData()[0] != want {
			t.Errorf("frame %d does not point into the received buffer: bytes were copied", i)
		}
	}
	in.Free()
	if pool.freed() != 0 {
		t.Errorf("%d buffers went back to the pool while the frames still reference them", pool.freed())
	}
	if !bytes.Equal(f.Data.Materialize(), data) {
		t.Error("frames hold the wrong bytes")
	}
	f.Data.Free()
	pool.check(t)
}

// TestCodec_BlobFramesReuse: receiving into the same frames frees the
// previous message's references, as documented.
func TestCodec_BlobFramesReuse(t *testing.T) {
	t.Parallel()
	pool := newCountingPool()
	var f BlobFrames
	var total int
	for i, n := range []int{3000, 10, 0, 7000, 1} {
		msg := marshal(t, &ReadBlobResponse{Data: payload(n), Size: uint64(i)})
		in := splitAt(pool, msg, len(msg)/3, 2*len(msg)/3)
		total += len(in)
		if err := (Codec{}).Unmarshal(in, &f); err != nil {
			t.Fatal(err)
		}
		in.Free()
		if !bytes.Equal(f.Data.Materialize(), payload(n)) || f.Size != uint64(i) {
			t.Fatalf("message %d: got %d bytes, size %d", i, f.Data.Len(), f.Size)
		}
		// Everything but this message's buffers is back in the pool.
		if got, want := pool.freed(), total-len(in); got < want {
			t.Fatalf("message %d: %d buffers freed, want at least %d: the previous frames were not freed", i, got, want)
		}
	}
	f.Data.Free()
	pool.check(t)
}

// TestCodec_ReadBlobResponseReuse: decoding into a message that held more
// data leaves exactly the new data, and resets a size the new message lacks.
func TestCodec_ReadBlobResponseReuse(t *testing.T) {
	t.Parallel()
	m := &ReadBlobResponse{}
	for i, want := range []*ReadBlobResponse{
		{Data: payload(5000), Size: 5000},
		{Data: []byte("short")},
		{Size: 9},
		{},
		{Data: payload(6000)},
	} {
		msg := marshal(t, want)
		if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(msg)}, m); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(m.Data, want.Data) || m.Size != want.Size {
			t.Fatalf("message %d: got %d bytes, size %d; want %d bytes, size %d", i, len(m.Data), m.Size, len(want.Data), want.Size)
		}
	}
}

// FuzzCodecUnmarshal: for any input, cut anywhere, neither decoder panics,
// both agree with each other, and when proto.Unmarshal accepts the input
// both accept it with the same data and size; every buffer is freed once.
func FuzzCodecUnmarshal(f *testing.F) {
	for _, msg := range validMessages(f) {
		if len(msg) < 4096 {
			f.Add(msg, uint64(0))
			f.Add(msg, uint64(len(msg)/2))
			f.Add(msg[:len(msg)/2], uint64(3))
		}
	}
	f.Add([]byte{0x0a, 0x05, 'a', 'b'}, uint64(1))
	f.Add([]byte{0x80}, uint64(0))
	f.Add(append(bytes.Repeat([]byte{0xff}, 10), 0x01), uint64(5))
	f.Fuzz(func(t *testing.T, msg []byte, seed uint64) {
		// Cut msg at a few pseudo-random offsets chosen by seed.
		rng := rand.New(rand.NewPCG(seed, uint64(len(msg))))
		var cuts []int
		if len(msg) > 0 {
			for range seed % 5 {
				cuts = append(cuts, rng.IntN(len(msg)+1))
			}
		}
		sortInts(cuts)
		pool := newCountingPool()
		in := splitAt(pool, msg, cuts...)
		r, rerr, fr, ferr := decodeBoth(in)
		in.Free()
		defer func() {
			fr.Data.Free()
			pool.check(t)
		}()
		if (rerr == nil) != (ferr == nil) {
			t.Fatalf("%x: the decoders disagree: *ReadBlobResponse: %v, *BlobFrames: %v", msg, rerr, ferr)
		}
		if rerr == nil && (!bytes.Equal(r.Data, fr.Data.Materialize()) || r.Size != fr.Size) {
			t.Fatalf("%x: the decoders decode differently", msg)
		}
		var want ReadBlobResponse
		if err := proto.Unmarshal(msg, &want); err != nil {
			return // the codec may be more lenient; it must only not panic
		}
		if rerr != nil {
			t.Fatalf("%x: proto.Unmarshal accepts it, the codec fails: %v", msg, rerr)
		}
		if !bytes.Equal(r.Data, want.Data) || r.Size != want.Size {
			t.Fatalf("%x: codec decoded %d bytes, size %d; proto.Unmarshal %d bytes, size %d", msg, len(r.Data), r.Size, len(want.Data), want.Size)
		}
	})
}

func sortInts(s []int) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
