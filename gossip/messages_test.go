package gossip

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func digest(i int) string {
	s := sha256.Sum256([]byte(fmt.Sprint(i)))
	return hex.EncodeToString(s[:])
}

func TestMessages_RoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  message
		enc  func(message) []byte
	}{
		{"versions", message{Type: msgVersions, Name: "dp-1", Versions: versionsPart{Clock: 1 << 62, Versions: map[string][]uint64{
			"kes-db": {1, 2, 1 << 40}, "modules": {7},
		}}}, func(m message) []byte { b, _ := encodeVersionsMsg(m.Name, m.Versions, 0); return b }},
		{"versions none", message{Type: msgVersions, Name: "dp-1", Versions: versionsPart{Clock: 3}},
			func(m message) []byte { b, _ := encodeVersionsMsg(m.Name, m.Versions, 0); return b }},
		{"versions truncated flag kept", message{Type: msgVersions, Name: "n", Versions: versionsPart{Clock: 3, Truncated: true, Versions: map[string][]uint64{"p": {1}}}},
			func(m message) []byte { b, _ := encodeVersionsMsg(m.Name, m.Versions, 0); return b }},
		{"fetching sha256 and other", message{Type: msgFetching, Name: "dp-2", Fetching: fetchingPart{Clock: 9, Digests: []string{
			digest(1), "ABC", strings.Repeat("f", 64), "sha256:" + digest(2),
		}}}, func(m message) []byte {
			m.Fetching.Digests = normalizeDigests(m.Fetching.Digests)
			b, _ := encodeFetchingMsg(m.Name, m.Fetching, 0)
			return b
		}},
		{"fetching none", message{Type: msgFetching, Name: "dp-2", Fetching: fetchingPart{Clock: 1, Digests: []string{}}},
			func(m message) []byte { b, _ := encodeFetchingMsg(m.Name, m.Fetching, 0); return b }},
		{"leave", message{Type: msgLeave, Name: "dp-3", Clock: 42}, func(m message) []byte { return encodeLeaveMsg(m.Name, m.Clock) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := decodeMessage(tt.enc(tt.msg))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			want := tt.msg
			if want.Type == msgFetching {
				want.Fetching.Digests = normalizeDigests(want.Fetching.Digests)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestMessages_StateAndMetaRoundTrip(t *testing.T) {
	t.Parallel()
	entries := []entry{
		{Name: "a", Versions: versionsPart{Clock: 5, Versions: map[string][]uint64{"p": {1, 3}}}, Fetching: fetchingPart{Clock: 6, Digests: []string{digest(1)}}},
		{Name: "b", Versions: versionsPart{Clock: 1, Truncated: true}, Fetching: fetchingPart{Clock: 2, Truncated: true, Digests: []string{}}, LeaveClock: 9},
	}
	st, err := decodeState(encodeState("a", entries))
	if err != nil {
		t.Fatal(err)
	}
	if st.From != "a" || !reflect.DeepEqual(st.Entries, entries) {
		t.Fatalf("state round trip: from %q\n got %+v\nwant %+v", st.From, st.Entries, entries)
	}
	meta := nodeMeta{Name: "dp", Site: "paris", GRPCAddr: "10.0.0.1:9000", HTTPAddr: ""}
	gotMeta, err := decodeMeta(encodeMeta(meta))
	if err != nil || gotMeta != meta {
		t.Fatalf("meta round trip: %+v, %v", gotMeta, err)
	}
}

// A broadcast never exceeds the packet budget: a long Fetching list (or
// many products) is cut and flagged truncated.
func TestMessages_BroadcastTruncated(t *testing.T) {
	t.Parallel()
	max := maxBroadcastSize(memberlist.DefaultLANConfig())
	var ds []string
	for i := range 500 {
		ds = append(ds, digest(i))
	}
	ds = normalizeDigests(ds)
	b, truncated := encodeFetchingMsg("dp-with-a-long-name", fetchingPart{Clock: 1 << 60, Digests: ds}, max)
	if !truncated || len(b) > max {
		t.Fatalf("fetching: %d bytes (max %d), truncated %v", len(b), max, truncated)
	}
	m, err := decodeMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Fetching.Truncated || !reflect.DeepEqual(m.Fetching.Digests, ds[:len(m.Fetching.Digests)]) {
		t.Fatalf("truncated fetching: flag %v, %d digests, not a prefix of the list", m.Fetching.Truncated, len(m.Fetching.Digests))
	}
	t.Logf("a %d-byte broadcast carries %d SHA-256 digests", max, len(m.Fetching.Digests))
	if len(m.Fetching.Digests) < 30 {
		t.Errorf("only %d digests per broadcast", len(m.Fetching.Digests))
	}

	vs := map[string][]uint64{}
	for i := range 200 {
		vs[fmt.Sprintf("product-%03d", i)] = []uint64{uint64(i), uint64(i) + 1000}
	}
	b, truncated = encodeVersionsMsg("dp", versionsPart{Clock: 7, Versions: vs}, max)
	if !truncated || len(b) > max {
		t.Fatalf("versions: %d bytes (max %d), truncated %v", len(b), max, truncated)
	}
	if m, err = decodeMessage(b); err != nil || !m.Versions.Truncated || len(m.Versions.Versions) == 0 {
		t.Fatalf("truncated versions: %+v, %v", m.Versions, err)
	}
	// Fits: not truncated.
	b, truncated = encodeFetchingMsg("dp", fetchingPart{Clock: 1, Digests: ds[:10]}, max)
	if truncated || len(b) > max {
		t.Fatalf("10 digests: %d bytes, truncated %v", len(b), truncated)
	}
}

func TestMessages_DecodeRejects(t *testing.T) {
	t.Parallel()
	good, _ := encodeVersionsMsg("n", versionsPart{Clock: 1, Versions: map[string][]uint64{"p": {1, 2}}}, 0)
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown type", []byte{99, wireFormat}},
		{"unknown format", append([]byte{msgVersions, wireFormat + 1}, good[2:]...)},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(append([]byte{}, good...), 0)},
		{"empty name", encodeLeaveMsg("", 1)},
		{"huge count", []byte{msgFetching, wireFormat, 1, 'n', 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"serials not increasing", []byte{msgVersions, wireFormat, 1, 'n', 1, 0, 1, 1, 'p', 2, 5, 0}},
		{"serial overflow", []byte{msgVersions, wireFormat, 1, 'n', 1, 0, 1, 1, 'p', 2,
			0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 5}},
		{"product without serials", []byte{msgVersions, wireFormat, 1, 'n', 1, 0, 1, 1, 'p', 0}},
		{"digests unsorted", []byte{msgFetching, wireFormat, 1, 'n', 1, 0, 2, 0, 1, 'b', 0, 1, 'a'}},
		{"bad digest kind", []byte{msgFetching, wireFormat, 1, 'n', 1, 0, 1, 7, 1, 'a'}},
		{"state as broadcast", encodeState("n", nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if m, err := decodeMessage(tt.b); err == nil {
				t.Fatalf("decoded %+v", m)
			}
		})
	}
	if _, err := decodeState(good); err == nil {
		t.Error("decodeState accepted a broadcast")
	}
	if _, err := decodeMeta(encodeLeaveMsg("n", 1)); err == nil {
		t.Error("decodeMeta accepted a leave message")
	}
}

// FuzzDecode: no input makes a decoder panic, and whatever decodes
// re-encodes to the same value.
func FuzzDecode(f *testing.F) {
	v, _ := encodeVersionsMsg("dp", versionsPart{Clock: 3, Versions: map[string][]uint64{"p": {1, 9}, "q": {4}}}, 0)
	fe, _ := encodeFetchingMsg("dp", fetchingPart{Clock: 4, Digests: []string{digest(1), "x"}}, 0)
	f.Add(v)
	f.Add(fe)
	f.Add(encodeLeaveMsg("dp", 5))
	f.Add(encodeState("dp", []entry{{Name: "dp", Versions: versionsPart{Clock: 1, Versions: map[string][]uint64{"p": {1}}}, Fetching: fetchingPart{Clock: 2, Digests: []string{"d"}}}}))
	f.Add(encodeMeta(nodeMeta{Name: "dp", Site: "s", GRPCAddr: "h:1"}))
	f.Add([]byte{})
	// Format 2: signed parts, a certificate chain, signed state.
	for _, s := range fuzzSignedSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := decodeMessage(b); err == nil {
			var re []byte
			switch {
			case m.seal() != nil:
				re = encodeSigned(m.Type, m.Name, m.seal())
			case m.Type == msgCert:
				re = encodeCertMsg(m.Chain)
			case m.Type == msgVersions:
				re, _ = encodeVersionsMsg(m.Name, m.Versions, 0)
			case m.Type == msgFetching:
				re, _ = encodeFetchingMsg(m.Name, m.Fetching, 0)
			case m.Type == msgLeave:
				re = encodeLeaveMsg(m.Name, m.Clock)
			}
			m2, err := decodeMessage(re)
			if err != nil || !reflect.DeepEqual(m, m2) {
				t.Fatalf("re-encoding %+v gave %+v, %v", m, m2, err)
			}
		}
		if st, err := decodeState(b); err == nil {
			re := encodeState(st.From, st.Entries)
			if st.Chains != nil {
				re = encodeStateSigned(st.From, st.Chains, st.Entries)
			}
			st2, err := decodeState(re)
			if err != nil || !reflect.DeepEqual(st, st2) {
				t.Fatalf("re-encoding state %+v gave %+v, %v", st, st2, err)
			}
		}
		if m, err := decodeMeta(b); err == nil {
			if m2, err := decodeMeta(encodeMeta(m)); err != nil || m2 != m {
				t.Fatalf("re-encoding meta %+v gave %+v, %v", m, m2, err)
			}
		}
	})
}

// fuzzSignedSeeds are format-2 messages with made-up signatures (decoding
// does not verify them).
func fuzzSignedSeeds() [][]byte {
	sig := func(body []byte) *seal {
		return &seal{Body: body, Key: keyID{1, 2, 3, 4, 5, 6, 7, 8}, Sig: bytes.Repeat([]byte{0x30}, 72)}
	}
	vb, _ := appendVersionsBody(nil, versionsPart{Clock: 3, Versions: map[string][]uint64{"p": {1, 9}}}, 0)
	fb, _ := appendFetchingBody(nil, fetchingPart{Clock: 4, Digests: []string{digest(1), "x"}}, 0)
	vs := sig(vb)
	chain := [][]byte{bytes.Repeat([]byte{0x30, 0x82}, 40)}
	return [][]byte{
		encodeSigned(msgVersions, "dp", vs),
		encodeSigned(msgFetching, "dp", sig(fb)),
		encodeSigned(msgLeave, "dp", sig(leaveBody(5))),
		encodeCertMsg(chain),
		encodeStateSigned("dp", [][][]byte{chain}, []entry{
			{Name: "dp", Versions: versionsPart{Clock: 3, Versions: map[string][]uint64{"p": {1, 9}}, Seal: vs}, Fetching: fetchingPart{Clock: 1, Digests: []string{}}},
		}),
	}
}
