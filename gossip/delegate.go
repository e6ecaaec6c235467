package gossip

import (
	"bytes"
	"sort"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks: memberlist.Delegate and
// memberlist.EventDelegate. It is a separate, unexported type so that the
// callbacks are not part of Gossip's API.
//
// None of them blocks: they decode (copying out of memberlist's buffers,
// which are reused after the call), merge under Gossip.mu (memory only, no
// I/O, never a call into memberlist) and queue broadcasts. The Delegate
// methods run concurrently from memberlist's packet handler, gossip, probe
// and push/pull goroutines; the EventDelegate methods run one at a time, with
// memberlist's node lock held, which is why nothing holding Gossip.mu may
// call into memberlist.
type delegate struct{ g *Gossip }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

// NodeMeta returns the metadata encoded once by New (name, site, gRPC and
// HTTP addresses; Validate checked it fits memberlist.MetaMaxSize). Called
// when memberlist builds an alive message; takes no lock.
func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.g.meta) > limit {
		d.g.log.Error("node metadata does not fit; sending none", "size", len(d.g.meta), "limit", limit)
		return nil
	}
	return d.g.meta
}

// NotifyMsg handles a broadcast received from memberlist's packet handler
// goroutine: decode, merge if newer, relay if newer. Malformed messages are
// dropped.
func (d *delegate) NotifyMsg(buf []byte) {
	m, err := decodeMessage(buf)
	if err != nil {
		d.g.dropped.Add(1)
		d.g.log.Debug("dropped a malformed gossip message", "len", len(buf), "err", err)
		return
	}
	if m.Type == msgCert {
		d.g.learnChains([][][]byte{m.Chain}, true)
		return
	}
	d.g.applyMessage(m, buf)
}

// GetBroadcasts hands memberlist the queued broadcasts that fit in limit
// bytes; the queue has its own lock.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.g.queue.GetBroadcasts(overhead, limit)
}

// LocalState returns everything this node knows, for a push/pull (join or
// periodic anti-entropy); encoded under Gossip.mu.
func (d *delegate) LocalState(join bool) []byte {
	g := d.g
	g.mu.Lock()
	defer g.mu.Unlock()
	entries := make([]entry, 0, len(g.entries))
	for _, k := range g.entries {
		entries = append(entries, k.entry)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	if g.trust != nil {
		return encodeStateSigned(g.cfg.Name, g.trust.chains(time.Now()), entries)
	}
	return encodeState(g.cfg.Name, entries)
}

// MergeRemoteState merges the state a peer sent in a push/pull.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	st, err := decodeState(buf)
	if err != nil {
		d.g.dropped.Add(1)
		d.g.log.Debug("dropped malformed push/pull state", "len", len(buf), "err", err)
		return
	}
	if d.g.trust != nil && len(st.Chains) > 0 {
		d.g.learnChains(st.Chains, false)
	}
	d.g.mergeState(st.From, st.Entries)
}

// NotifyJoin records a member that memberlist found alive.
func (d *delegate) NotifyJoin(n *memberlist.Node) { d.g.memberUp(n) }

// NotifyUpdate records a member's new metadata or address.
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.g.memberUp(n) }

// NotifyLeave records a member that memberlist found dead or that left.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.g.memberDown(n) }

func (g *Gossip) memberUp(n *memberlist.Node) {
	meta, err := decodeMeta(n.Meta) // copies
	ok := err == nil && meta.Name == n.Name
	addr := n.Address()
	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.members[n.Name]
	isNew := m == nil
	if isNew {
		m = &member{name: n.Name}
		g.members[n.Name] = m
	}
	if !ok && (isNew || m.metaOK) {
		g.log.Warn("member without valid dpcache metadata; ignored for lookups", "member", n.Name, "addr", addr, "err", err)
	}
	if !m.alive {
		m.since = time.Now()
	}
	m.meta, m.metaOK, m.addr, m.alive = meta, ok, addr, true
	g.countLiveLocked()
	g.notifyLocked()
}

func (g *Gossip) memberDown(n *memberlist.Node) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := g.members[n.Name]
	if m == nil {
		m = &member{name: n.Name, addr: n.Address()}
		g.members[n.Name] = m
	}
	m.alive, m.since = false, time.Now()
	g.countLiveLocked()
	g.notifyLocked()
}

func (g *Gossip) countLiveLocked() {
	n := 0
	for _, m := range g.members {
		if m.alive {
			n++
		}
	}
	g.numLive.Store(int32(n))
}

// applyMessage merges a broadcast about another node if it is newer than
// what is known (and, with Config.Identity, signed by that node), and
// relays it so that it spreads epidemically. A message about this node
// with a higher clock than ours (state from before a restart) makes us
// re-announce ours above it.
func (g *Gossip) applyMessage(m message, raw []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.admitLocked(m, raw, true) {
		g.notifyLocked()
	}
}

// mergeState merges push/pull state from node from. Only from's own entry
// is relayed as broadcasts (it is news from its source); the rest spreads
// by further push/pulls.
func (g *Gossip) mergeState(from string, entries []entry) {
	g.mu.Lock()
	defer g.mu.Unlock()
	changed := false
	for _, e := range entries {
		for _, m := range e.parts() {
			if g.admitLocked(m, nil, e.Name == from) {
				changed = true
			}
		}
	}
	if changed {
		g.notifyLocked()
	}
}

// admitLocked merges one part (a broadcast, or a part of push/pull state)
// if it is newer than what is known and, with Config.Identity, signed by
// the node it describes; a part signed by a key not known yet is held
// back. raw is the broadcast as received (nil: a part of state). With
// relay, a merged part is queued as a broadcast. It reports whether the
// part was merged.
func (g *Gossip) admitLocked(m message, raw []byte, relay bool) bool {
	c := m.clock()
	if futureClock(c) {
		g.dropped.Add(1)
		g.log.Warn("dropped a gossip message with a clock from the future (forged or corrupt)", "about", m.Name, "kind", kindName(m.Type), "clock", c)
		return false
	}
	now := time.Now()
	if m.Name == g.cfg.Name {
		if c <= g.clock {
			return false
		}
		if g.trust != nil {
			if v := g.trust.check(m.Type, m.Name, m.seal(), now); v != verified {
				if v == forged {
					g.dropForgedLocked(m)
				}
				return false
			}
		}
		g.witnessLocked(c)
		return false
	}
	k := g.entries[m.Name]
	if k == nil {
		k = &known{entry: entry{Name: m.Name}}
	}
	if !k.newerPart(m) {
		return false
	}
	if g.trust != nil {
		switch g.trust.check(m.Type, m.Name, m.seal(), now) {
		case unsigned:
			if g.unsignedLogged.CompareAndSwap(false, true) {
				g.log.Warn("ignoring unsigned gossip about members: with a certificate, a DP accepts only holdings signed by the member they describe; give every DP --tls-cert", "about", m.Name)
			}
			return false
		case forged:
			g.dropForgedLocked(m)
			return false
		case unknownKey:
			g.holdLocked(m, now)
			return false
		}
	}
	k.mergePart(m)
	k.seen = now
	g.entries[m.Name] = k
	if relay {
		g.relayLocked(m, raw)
	}
	return true
}

func (g *Gossip) dropForgedLocked(m message) {
	g.dropped.Add(1)
	g.log.Warn("dropped gossip not signed by the member it describes (forged)", "about", m.Name, "kind", kindName(m.Type), "key", keyHex(m.seal().Key))
}

// relayLocked queues a merged part as a broadcast: a signed one as signed
// (if it fits a packet; push/pull carries it otherwise), an unsigned one as
// received, or re-encoded when it came in state.
func (g *Gossip) relayLocked(m message, raw []byte) {
	if s := m.seal(); s != nil {
		if b := encodeSigned(m.Type, m.Name, s); len(b) <= g.maxMsg {
			g.queue.QueueBroadcast(newBroadcast(m.Type, m.Name, b))
		}
		return
	}
	if raw != nil {
		g.queue.QueueBroadcast(newBroadcast(m.Type, m.Name, bytes.Clone(raw)))
		return
	}
	switch m.Type {
	case msgVersions:
		g.queueVersionsLocked(m.Name, m.Versions)
	case msgFetching:
		g.queueFetchingLocked(m.Name, m.Fetching)
	case msgLeave:
		g.queue.QueueBroadcast(newBroadcast(msgLeave, m.Name, encodeLeaveMsg(m.Name, m.Clock)))
	}
}

// maxClockLead is how far past the wall clock (in nanoseconds) a clock
// may be. A node's clock starts at the wall clock when it starts and grows
// by one per change, so a day's lead allows any clock skew between DPs and
// any number of changes, while a forged clock near 2^64, which would make
// ours wrap past zero, is refused.
const maxClockLead = uint64(24 * time.Hour)

// futureClock reports whether c is past the wall clock by more than
// maxClockLead: no DP can have sent it.
func futureClock(c uint64) bool {
	return c > uint64(time.Now().UnixNano())+maxClockLead
}

// witnessLocked handles a clock seen in a message about this node. Above our
// own clock, it is state from an earlier run of this node (or a clock that
// went backwards across a restart): move past it and re-announce our state,
// so that ours wins everywhere.
func (g *Gossip) witnessLocked(c uint64) {
	if c <= g.clock {
		return
	}
	g.log.Info("older state of this node is circulating (restart?); announcing ours above it", "seen_clock", c, "clock", g.clock)
	g.clock = c
	self := g.entries[g.cfg.Name]
	g.clock++
	self.Versions.Clock, self.Versions.Truncated = g.clock, false
	g.clock++
	self.Fetching.Clock, self.Fetching.Truncated = g.clock, false
	g.announceLocked(msgVersions)
	g.announceLocked(msgFetching)
	if self.LeaveClock != 0 { // we are leaving: say so again, above
		g.clock++
		self.LeaveClock = g.clock
		g.announceLocked(msgLeave)
	}
	g.notifyLocked()
}

func (g *Gossip) queueVersionsLocked(name string, p versionsPart) {
	msg, truncated := encodeVersionsMsg(name, p, g.maxMsg)
	if truncated && name == g.cfg.Name {
		g.log.Debug("versions broadcast truncated to fit a packet; push/pull carries the rest", "products", len(p.Versions), "max_bytes", g.maxMsg)
	}
	g.queue.QueueBroadcast(newBroadcast(msgVersions, name, msg))
}

func (g *Gossip) queueFetchingLocked(name string, p fetchingPart) {
	msg, truncated := encodeFetchingMsg(name, p, g.maxMsg)
	if truncated && name == g.cfg.Name {
		g.log.Debug("fetching broadcast truncated to fit a packet; push/pull carries the rest", "digests", len(p.Digests), "max_bytes", g.maxMsg)
	}
	g.queue.QueueBroadcast(newBroadcast(msgFetching, name, msg))
}

// broadcast is one queued message. Its name is the message type and the
// node it is about, so a newer message about the same thing replaces an
// older one still in the queue (memberlist.NamedBroadcast).
type broadcast struct {
	name string
	msg  []byte
}

var _ memberlist.NamedBroadcast = (*broadcast)(nil)

func newBroadcast(typ byte, node string, msg []byte) *broadcast {
	return &broadcast{name: string([]byte{typ}) + node, msg: msg}
}

// Invalidates reports whether b replaces other: same type, same node.
func (b *broadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(memberlist.NamedBroadcast)
	return ok && o.Name() == b.name
}

// Name is the queue's key for b.
func (b *broadcast) Name() string { return b.name }

// Message returns the encoded message.
func (b *broadcast) Message() []byte { return b.msg }

// Finished is called (under the queue's lock) when b is no longer sent.
func (b *broadcast) Finished() {}
