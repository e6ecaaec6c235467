package gossip

import (
	"bytes"
	"encoding/binary"
	"sort"

	"github.com/dpcache/dpcache/manifest"
)

// Wire format. Every message starts with a type byte and a format byte, then
// a body of uvarints and length-prefixed strings (encoding/binary). A node
// ignores a message whose type or format it does not know, so a newer format
// can be introduced beside the old one during a rolling upgrade.
//
//	meta      name, site, grpc, http                       (NodeMeta, ≤ memberlist.MetaMaxSize)
//	versions  name, clock, flags, n × (product, serials)   (broadcast: one node's holdings)
//	fetching  name, clock, flags, n × digest               (broadcast: one node's fetches)
//	leave     name, clock                                  (broadcast: a node leaves on purpose)
//	state     from, n × (name, versions part, fetching part, leave clock)
//	          (push/pull: everything the sender knows; from is the sender)
//	cert      n × certificate (DER)                        (broadcast: a member's chain, leaf first)
//
// Serials are sorted and written as deltas. A digest that is 64 lowercase hex
// characters (a SHA-256) is written as its 32 raw bytes.
//
// Format 2 (wireSigned) is what a DP with a certificate sends (trust.go):
//
//	versions, fetching, leave   name, body, key id (8 bytes), signature
//	state     from, k × chain (n × DER), n × (name, 3 × (sealed?, body[, key id, signature]))
//
// where body is the format-1 body after the name (from the clock on) and the
// signature is the member's over (type, name, body): the exact bytes are
// kept and relayed, so a part stays verifiable however it travels.
const (
	msgMeta     byte = 1
	msgVersions byte = 2
	msgFetching byte = 3
	msgLeave    byte = 4
	msgState    byte = 5
	msgCert     byte = 6

	// wireFormat is the body format of every message type; bump it (and keep
	// decoding the previous one) when a body changes.
	wireFormat byte = 1
	// wireSigned is format 2: versions, fetching, leave and state with
	// their members' signatures.
	wireSigned byte = 2

	keyIDLen  = 8    // bytes of a key id: SHA-256 of the key's SubjectPublicKeyInfo, truncated
	maxSigLen = 1024 // longest signature accepted (RSA-8192 is 1024 bytes)
	maxChain  = 4    // certificates in a chain

	flagTruncated byte = 1 << 0

	digestString byte = 0
	digestSHA256 byte = 1
)

// nodeMeta is what memberlist carries for a node in its alive messages.
type nodeMeta struct {
	Name, Site, GRPCAddr, HTTPAddr string
}

// keyID names a member's key in its signatures.
type keyID [keyIDLen]byte

// seal is a member's signature of one of its parts, with the part's body
// exactly as signed (and as relayed).
type seal struct {
	Body []byte // the body: clock onward
	Key  keyID
	Sig  []byte
}

// versionsPart is one node's product versions at one clock.
type versionsPart struct {
	Clock     uint64
	Truncated bool                // a broadcast that did not carry every product
	Versions  map[string][]uint64 // product → sorted, distinct serials
	Seal      *seal               // its member's signature; nil: unsigned
}

// fetchingPart is one node's in-flight fetches at one clock.
type fetchingPart struct {
	Clock     uint64
	Truncated bool     // a broadcast that did not carry every digest
	Digests   []string // sorted, distinct
	Seal      *seal    // its member's signature; nil: unsigned
}

// entry is everything gossip knows about one node's holdings: the unit of
// push/pull state.
type entry struct {
	Name       string
	Versions   versionsPart
	Fetching   fetchingPart
	LeaveClock uint64 // the clock at which the node announced it was leaving; 0: never
	LeaveSeal  *seal  // the node's signature of its leave; nil: unsigned
}

// state is decoded push/pull state.
type state struct {
	From    string
	Entries []entry
	Chains  [][][]byte // format 2: members' certificate chains (DER, leaf first)
}

// message is a decoded broadcast.
type message struct {
	Type      byte
	Name      string
	Versions  versionsPart // msgVersions
	Fetching  fetchingPart // msgFetching
	Clock     uint64       // msgLeave
	LeaveSeal *seal        // msgLeave: its member's signature; nil: unsigned
	Chain     [][]byte     // msgCert
}

// seal returns the message's signature, whatever its type; nil: unsigned.
func (m message) seal() *seal {
	switch m.Type {
	case msgVersions:
		return m.Versions.Seal
	case msgFetching:
		return m.Fetching.Seal
	case msgLeave:
		return m.LeaveSeal
	}
	return nil
}

// parts returns the messages that carry e's parts (versions, fetching,
// leave), as if each had come as a broadcast.
func (e *entry) parts() [3]message {
	return [3]message{
		{Type: msgVersions, Name: e.Name, Versions: e.Versions},
		{Type: msgFetching, Name: e.Name, Fetching: e.Fetching},
		{Type: msgLeave, Name: e.Name, Clock: e.LeaveClock, LeaveSeal: e.LeaveSeal},
	}
}

// clock returns the message's clock, whatever its type.
func (m message) clock() uint64 {
	switch m.Type {
	case msgVersions:
		return m.Versions.Clock
	case msgFetching:
		return m.Fetching.Clock
	}
	return m.Clock
}

// ---- encoding ----

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func header(typ byte, sizeHint int) []byte {
	b := make([]byte, 0, 2+sizeHint)
	return append(b, typ, wireFormat)
}

func encodeMeta(m nodeMeta) []byte {
	b := header(msgMeta, len(m.Name)+len(m.Site)+len(m.GRPCAddr)+len(m.HTTPAddr)+8)
	b = appendString(b, m.Name)
	b = appendString(b, m.Site)
	b = appendString(b, m.GRPCAddr)
	return appendString(b, m.HTTPAddr)
}

func appendSerials(b []byte, serials []uint64) []byte {
	b = binary.AppendUvarint(b, uint64(len(serials)))
	var prev uint64
	for i, s := range serials {
		if i == 0 {
			b = binary.AppendUvarint(b, s)
		} else {
			b = binary.AppendUvarint(b, s-prev)
		}
		prev = s
	}
	return b
}

func sortedProducts(v map[string][]uint64) []string {
	ps := make([]string, 0, len(v))
	for p := range v {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// appendVersionsBody appends clock, flags and products. With max > 0 it stops
// before the product that would make b longer than max, and sets the
// truncated flag; it reports whether it did.
func appendVersionsBody(b []byte, p versionsPart, max int) ([]byte, bool) {
	var items []byte
	n := 0
	truncated := p.Truncated
	for _, prod := range sortedProducts(p.Versions) {
		item := appendSerials(appendString(nil, prod), p.Versions[prod])
		if max > 0 && len(b)+binary.MaxVarintLen64+1+binary.MaxVarintLen32+len(items)+len(item) > max {
			truncated = true
			break
		}
		items = append(items, item...)
		n++
	}
	b = binary.AppendUvarint(b, p.Clock)
	b = append(b, flags(truncated))
	b = binary.AppendUvarint(b, uint64(n))
	return append(b, items...), truncated
}

func appendDigest(b []byte, d string) []byte {
	if dg, err := manifest.ParseDigest(d); err == nil {
		b = append(b, digestSHA256)
		return append(b, dg[:]...)
	}
	b = append(b, digestString)
	return appendString(b, d)
}

// appendFetchingBody is appendVersionsBody for digests.
func appendFetchingBody(b []byte, p fetchingPart, max int) ([]byte, bool) {
	var items []byte
	n := 0
	truncated := p.Truncated
	for _, d := range p.Digests {
		item := appendDigest(nil, d)
		if max > 0 && len(b)+binary.MaxVarintLen64+1+binary.MaxVarintLen32+len(items)+len(item) > max {
			truncated = true
			break
		}
		items = append(items, item...)
		n++
	}
	b = binary.AppendUvarint(b, p.Clock)
	b = append(b, flags(truncated))
	b = binary.AppendUvarint(b, uint64(n))
	return append(b, items...), truncated
}

func flags(truncated bool) byte {
	if truncated {
		return flagTruncated
	}
	return 0
}

// encodeVersionsMsg encodes a versions broadcast of at most max bytes (max
// ≤ 0: no limit); it reports whether products were left out to fit.
func encodeVersionsMsg(name string, p versionsPart, max int) ([]byte, bool) {
	b := appendString(header(msgVersions, 64), name)
	return appendVersionsBody(b, p, max)
}

// encodeFetchingMsg encodes a fetching broadcast of at most max bytes (max
// ≤ 0: no limit); it reports whether digests were left out to fit.
func encodeFetchingMsg(name string, p fetchingPart, max int) ([]byte, bool) {
	b := appendString(header(msgFetching, 64), name)
	return appendFetchingBody(b, p, max)
}

func encodeLeaveMsg(name string, clock uint64) []byte {
	b := appendString(header(msgLeave, len(name)+12), name)
	return binary.AppendUvarint(b, clock)
}

// encodeSigned encodes a signed broadcast (format 2) of a part: its type,
// its member's name and the seal.
func encodeSigned(typ byte, name string, s *seal) []byte {
	b := appendString(header2(typ, len(name)+len(s.Body)+len(s.Sig)+16), name)
	return appendSeal(append(b, s.Body...), s)
}

func header2(typ byte, sizeHint int) []byte {
	b := make([]byte, 0, 2+sizeHint)
	return append(b, typ, wireSigned)
}

func appendSeal(b []byte, s *seal) []byte {
	b = append(b, s.Key[:]...)
	return appendString(b, string(s.Sig))
}

// signedSize is the length of encodeSigned's message for a name and a body
// of bodyLen bytes, with a signature of at most sigMax bytes.
func signedSize(name string, bodyLen, sigMax int) int {
	return 2 + binary.MaxVarintLen32 + len(name) + bodyLen + keyIDLen + binary.MaxVarintLen32 + sigMax
}

// encodeCertMsg encodes a member's certificate chain (DER, leaf first).
func encodeCertMsg(chain [][]byte) []byte {
	b := header(msgCert, 600*len(chain))
	return appendChain(b, chain)
}

func appendChain(b []byte, chain [][]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(chain)))
	for _, c := range chain {
		b = appendString(b, string(c))
	}
	return b
}

// leaveBody is the body of a leave: its clock.
func leaveBody(clock uint64) []byte { return binary.AppendUvarint(nil, clock) }

// encodeStateSigned encodes push/pull state in format 2: the chains of the
// members' certificates, then every entry with each part's exact signed
// body and seal (an unsigned part, such as one never set, has none).
func encodeStateSigned(from string, chains [][][]byte, entries []entry) []byte {
	b := header2(msgState, 128*len(entries)+600*len(chains))
	b = appendString(b, from)
	b = binary.AppendUvarint(b, uint64(len(chains)))
	for _, c := range chains {
		b = appendChain(b, c)
	}
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = appendString(b, e.Name)
		var body []byte
		if e.Versions.Seal == nil {
			body, _ = appendVersionsBody(nil, e.Versions, 0)
		}
		b = appendPart(b, e.Versions.Seal, body)
		if e.Fetching.Seal == nil {
			body, _ = appendFetchingBody(nil, e.Fetching, 0)
		}
		b = appendPart(b, e.Fetching.Seal, body)
		b = appendPart(b, e.LeaveSeal, leaveBody(e.LeaveClock))
	}
	return b
}

// appendPart appends a part of format-2 state: sealed, its seal's body and
// the seal; else unsigned, body.
func appendPart(b []byte, s *seal, body []byte) []byte {
	if s == nil {
		return append(append(b, 0), body...)
	}
	return appendSeal(append(append(b, 1), s.Body...), s)
}

// encodeState encodes the push/pull state of node from: every entry, never
// truncated (a stream has no packet limit).
func encodeState(from string, entries []entry) []byte {
	b := header(msgState, 128*len(entries))
	b = appendString(b, from)
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = appendString(b, e.Name)
		b, _ = appendVersionsBody(b, e.Versions, 0)
		b, _ = appendFetchingBody(b, e.Fetching, 0)
		b = binary.AppendUvarint(b, e.LeaveClock)
	}
	return b
}

// ---- decoding ----

// decoder reads a message. Every read checks bounds; the first failure makes
// every later read return zero values and err is set, so decoding garbage
// never panics and never allocates more than the input can justify.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errMalformed
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads an element count, each element taking at least minSize bytes.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)/minSize) {
		d.fail()
		return 0
	}
	return int(n)
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	s := string(d.b[:n]) // copies: the caller's buffer may be reused
	d.b = d.b[n:]
	return s
}

func (d *decoder) raw(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail()
		return nil
	}
	r := d.b[:n]
	d.b = d.b[n:]
	return r
}

// header reads the type, which must be want, and the format: 1, or 2
// when signed allows it.
func (d *decoder) header(want byte, signed bool) byte {
	if typ := d.byte(); typ != want {
		d.fail()
	}
	f := d.byte()
	if f != wireFormat && !(signed && f == wireSigned) {
		d.fail()
	}
	return f
}

// seal reads a key id and a signature after a body that started at start
// (the decoder's remaining input before the body was read).
func (d *decoder) seal(start []byte) *seal {
	if d.err != nil {
		return nil
	}
	body := bytes.Clone(start[:len(start)-len(d.b)])
	var s seal
	copy(s.Key[:], d.raw(keyIDLen))
	n := d.uvarint()
	if d.err != nil || n == 0 || n > maxSigLen {
		d.fail()
		return nil
	}
	s.Sig = bytes.Clone(d.raw(int(n)))
	if d.err != nil {
		return nil
	}
	s.Body = body
	return &s
}

// chain reads a certificate chain: 1 to maxChain certificates.
func (d *decoder) chain() [][]byte {
	n := d.count(2)
	if d.err == nil && (n == 0 || n > maxChain) {
		d.fail()
	}
	out := make([][]byte, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		c := d.string()
		if d.err == nil && c == "" {
			d.fail()
		}
		out = append(out, []byte(c))
	}
	return out
}

// part reads a part of format-2 state: a sealed flag, the body that read
// reads, and the seal when sealed.
func (d *decoder) part(read func()) *seal {
	sealed := d.byte()
	if sealed > 1 {
		d.fail()
	}
	start := d.b
	read()
	if sealed == 0 {
		return nil
	}
	return d.seal(start)
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	return d.err
}

func (d *decoder) name() string {
	s := d.string()
	if d.err == nil && s == "" {
		d.fail()
	}
	return s
}

func (d *decoder) versionsBody() versionsPart {
	var p versionsPart
	p.Clock = d.uvarint()
	p.Truncated = d.byte()&flagTruncated != 0
	n := d.count(2)
	if n > 0 {
		p.Versions = make(map[string][]uint64, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		prod := d.string()
		k := d.count(1)
		serials := make([]uint64, 0, k)
		var prev uint64
		for j := 0; j < k && d.err == nil; j++ {
			v := d.uvarint()
			if j > 0 {
				if v == 0 || prev+v < prev { // not increasing, or overflow
					d.fail()
					break
				}
				v += prev
			}
			serials = append(serials, v)
			prev = v
		}
		if _, dup := p.Versions[prod]; dup || k == 0 {
			d.fail()
		}
		p.Versions[prod] = serials
	}
	return p
}

func (d *decoder) fetchingBody() fetchingPart {
	var p fetchingPart
	p.Clock = d.uvarint()
	p.Truncated = d.byte()&flagTruncated != 0
	n := d.count(2)
	p.Digests = make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		var s string
		switch d.byte() {
		case digestSHA256:
			var dg manifest.Digest
			copy(dg[:], d.raw(len(dg)))
			s = dg.String()
		case digestString:
			s = d.string()
		default:
			d.fail()
		}
		if i > 0 && s <= p.Digests[i-1] { // sorted and distinct, as encoded
			d.fail()
		}
		p.Digests = append(p.Digests, s)
	}
	return p
}

func decodeMeta(b []byte) (nodeMeta, error) {
	d := decoder{b: b}
	d.header(msgMeta, false)
	m := nodeMeta{Name: d.name(), Site: d.string(), GRPCAddr: d.string(), HTTPAddr: d.string()}
	return m, d.end()
}

// decodeMessage decodes a broadcast (versions, fetching or leave).
func decodeMessage(b []byte) (message, error) {
	d := decoder{b: b}
	var m message
	if len(b) > 0 {
		m.Type = b[0]
	}
	switch m.Type {
	case msgVersions:
		f := d.header(msgVersions, true)
		m.Name = d.name()
		start := d.b
		m.Versions = d.versionsBody()
		if f == wireSigned {
			m.Versions.Seal = d.seal(start)
		}
	case msgFetching:
		f := d.header(msgFetching, true)
		m.Name = d.name()
		start := d.b
		m.Fetching = d.fetchingBody()
		if f == wireSigned {
			m.Fetching.Seal = d.seal(start)
		}
	case msgLeave:
		f := d.header(msgLeave, true)
		m.Name = d.name()
		start := d.b
		m.Clock = d.uvarint()
		if f == wireSigned {
			m.LeaveSeal = d.seal(start)
		}
	case msgCert:
		d.header(msgCert, false)
		m.Chain = d.chain()
	default:
		d.fail()
	}
	if err := d.end(); err != nil {
		return message{}, err
	}
	return m, nil
}

// decodeState decodes push/pull state (format 1 or 2): the sender's name,
// its entries and, in format 2, certificate chains.
func decodeState(b []byte) (state, error) {
	d := decoder{b: b}
	f := d.header(msgState, true)
	var st state
	st.From = d.name()
	if f == wireSigned {
		k := d.count(4)
		st.Chains = make([][][]byte, 0, k)
		for i := 0; i < k && d.err == nil; i++ {
			st.Chains = append(st.Chains, d.chain())
		}
	}
	n := d.count(8)
	st.Entries = make([]entry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		var e entry
		e.Name = d.name()
		if f == wireSigned {
			e.Versions.Seal = d.part(func() { e.Versions = d.versionsBody() })
			e.Fetching.Seal = d.part(func() { e.Fetching = d.fetchingBody() })
			e.LeaveSeal = d.part(func() { e.LeaveClock = d.uvarint() })
		} else {
			e.Versions = d.versionsBody()
			e.Fetching = d.fetchingBody()
			e.LeaveClock = d.uvarint()
		}
		st.Entries = append(st.Entries, e)
	}
	if err := d.end(); err != nil {
		return state{}, err
	}
	return st, nil
}
