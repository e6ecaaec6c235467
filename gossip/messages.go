package gossip

import (
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
//
// Serials are sorted and written as deltas. A digest that is 64 lowercase hex
// characters (a SHA-256) is written as its 32 raw bytes.
const (
	msgMeta     byte = 1
	msgVersions byte = 2
	msgFetching byte = 3
	msgLeave    byte = 4
	msgState    byte = 5

	// wireFormat is the body format of every message type; bump it (and keep
	// decoding the previous one) when a body changes.
	wireFormat byte = 1

	flagTruncated byte = 1 << 0

	digestString byte = 0
	digestSHA256 byte = 1
)

// nodeMeta is what memberlist carries for a node in its alive messages.
type nodeMeta struct {
	Name, Site, GRPCAddr, HTTPAddr string
}

// versionsPart is one node's product versions at one clock.
type versionsPart struct {
	Clock     uint64
	Truncated bool                // a broadcast that did not carry every product
	Versions  map[string][]uint64 // product → sorted, distinct serials
}

// fetchingPart is one node's in-flight fetches at one clock.
type fetchingPart struct {
	Clock     uint64
	Truncated bool     // a broadcast that did not carry every digest
	Digests   []string // sorted, distinct
}

// entry is everything gossip knows about one node's holdings: the unit of
// push/pull state.
type entry struct {
	Name       string
	Versions   versionsPart
	Fetching   fetchingPart
	LeaveClock uint64 // the clock at which the node announced it was leaving; 0: never
}

// message is a decoded broadcast.
type message struct {
	Type     byte
	Name     string
	Versions versionsPart // msgVersions
	Fetching fetchingPart // msgFetching
	Clock    uint64       // msgLeave
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

func (d *decoder) header(want byte) {
	if typ := d.byte(); typ != want {
		d.fail()
	}
	if f := d.byte(); f != wireFormat {
		d.fail()
	}
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
	d.header(msgMeta)
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
		d.header(msgVersions)
		m.Name = d.name()
		m.Versions = d.versionsBody()
	case msgFetching:
		d.header(msgFetching)
		m.Name = d.name()
		m.Fetching = d.fetchingBody()
	case msgLeave:
		d.header(msgLeave)
		m.Name = d.name()
		m.Clock = d.uvarint()
	default:
		d.fail()
	}
	if err := d.end(); err != nil {
		return message{}, err
	}
	return m, nil
}

// decodeState decodes push/pull state: the sender's name and its entries.
func decodeState(b []byte) (string, []entry, error) {
	d := decoder{b: b}
	d.header(msgState)
	from := d.name()
	n := d.count(8)
	entries := make([]entry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		var e entry
		e.Name = d.name()
		e.Versions = d.versionsBody()
		e.Fetching = d.fetchingBody()
		e.LeaveClock = d.uvarint()
		entries = append(entries, e)
	}
	if err := d.end(); err != nil {
		return "", nil, err
	}
	return from, entries, nil
}
