package gossip

import (
	"hash/fnv"
	"slices"
	"sort"
	"time"
)

// State is a member's state as this node sees it: memberlist's
// NodeStateType by name.
type State string

// The states of a member.
const (
	// StateAlive: the member answers probes (or has not yet been found to
	// fail).
	StateAlive State = "alive"
	// StateSuspect is memberlist's suspect state. memberlist v0.7.0 does not
	// expose it to applications (Node.State is never filled in for events or
	// Members(); hashicorp/memberlist#266, #321), so Gossip reports a suspect
	// member as alive until memberlist declares it dead. The constant exists
	// so that callers can handle it once memberlist exposes it.
	StateSuspect State = "suspect"
	// StateDead: memberlist declared the member failed. Gossip keeps
	// retrying its address (see Config.Join).
	StateDead State = "dead"
	// StateLeft: the member left on purpose (its Run ended). It is not
	// retried.
	StateLeft State = "left"
)

// Member is one distribution point as this node sees it. A Member is a copy:
// callers may keep and modify it.
type Member struct {
	Name     string
	Site     string
	GRPCAddr string // advertised gRPC address host:port
	HTTPAddr string // advertised HTTP address host:port; "" if the DP serves none
	Addr     string // gossip address host:port
	State    State
	// Versions maps a product to the serials this DP holds whole, ascending.
	Versions map[string][]uint64
	// Fetching lists the blob digests this DP is fetching from upstream now,
	// sorted. A broadcast may carry only part of a long list (see the package
	// caveats); push/pull state brings the rest.
	Fetching []string
	Local    bool // this member is the node itself
}

// Holds reports whether m holds serial of product whole.
func (m *Member) Holds(product string, serial uint64) bool {
	_, ok := slices.BinarySearch(m.Versions[product], serial)
	return ok
}

// IsFetching reports whether m is fetching digest now.
func (m *Member) IsFetching(digest string) bool {
	_, ok := slices.BinarySearch(m.Fetching, digest)
	return ok
}

// member is what memberlist's events told us about a node.
type member struct {
	name   string
	meta   nodeMeta
	metaOK bool      // meta decoded and names this node; a member without valid meta is never used
	addr   string    // gossip address
	alive  bool      // after NotifyJoin/NotifyUpdate; false after NotifyLeave
	since  time.Time // last change of alive
}

// newer reports whether a part at (clock, truncated) replaces the part held
// at (curClock, curTruncated): a higher clock wins; at the same clock, a full
// part (push/pull) replaces a truncated one (a broadcast), never the reverse.
func newer(clock uint64, truncated bool, curClock uint64, curTruncated bool) bool {
	return clock > curClock || (clock == curClock && curTruncated && !truncated)
}

// mergeVersions applies p to e if it is newer; it reports whether it was.
func (e *entry) mergeVersions(p versionsPart) bool {
	if !newer(p.Clock, p.Truncated, e.Versions.Clock, e.Versions.Truncated) {
		return false
	}
	e.Versions = p
	return true
}

// mergeFetching applies p to e if it is newer; it reports whether it was.
func (e *entry) mergeFetching(p fetchingPart) bool {
	if !newer(p.Clock, p.Truncated, e.Fetching.Clock, e.Fetching.Truncated) {
		return false
	}
	e.Fetching = p
	return true
}

// newerPart reports whether the part m carries would replace e's.
func (e *entry) newerPart(m message) bool {
	switch m.Type {
	case msgVersions:
		return newer(m.Versions.Clock, m.Versions.Truncated, e.Versions.Clock, e.Versions.Truncated)
	case msgFetching:
		return newer(m.Fetching.Clock, m.Fetching.Truncated, e.Fetching.Clock, e.Fetching.Truncated)
	case msgLeave:
		return m.Clock > e.LeaveClock
	}
	return false
}

// mergePart applies the part m carries if it is newer; it reports whether
// it was.
func (e *entry) mergePart(m message) bool {
	switch m.Type {
	case msgVersions:
		return e.mergeVersions(m.Versions)
	case msgFetching:
		return e.mergeFetching(m.Fetching)
	case msgLeave:
		if e.mergeLeave(m.Clock) {
			e.LeaveSeal = m.LeaveSeal
			return true
		}
	}
	return false
}

// mergeLeave records a leave announced at clock; it reports whether that
// changed anything.
func (e *entry) mergeLeave(clock uint64) bool {
	if clock <= e.LeaveClock {
		return false
	}
	e.LeaveClock = clock
	return true
}

// leaving reports whether the node's latest word was that it leaves: a node
// that comes back announces holdings at a higher clock, which clears it.
func (e *entry) leaving() bool {
	return e.LeaveClock != 0 && e.LeaveClock > e.Versions.Clock && e.LeaveClock > e.Fetching.Clock
}

// maxClock is the highest clock e carries.
func (e *entry) maxClock() uint64 {
	return max(e.Versions.Clock, e.Fetching.Clock, e.LeaveClock)
}

// cloneVersions returns a deep copy of v.
func cloneVersions(v map[string][]uint64) map[string][]uint64 {
	if len(v) == 0 {
		return nil
	}
	c := make(map[string][]uint64, len(v))
	for p, s := range v {
		c[p] = slices.Clone(s)
	}
	return c
}

// normalizeSerials returns serials sorted and without duplicates, in a new
// slice.
func normalizeSerials(serials []uint64) []uint64 {
	s := slices.Clone(serials)
	slices.Sort(s)
	return slices.Compact(s)
}

// normalizeDigests returns digests sorted and without duplicates, in a new
// slice.
func normalizeDigests(digests []string) []string {
	d := slices.Clone(digests)
	sort.Strings(d)
	return slices.Compact(d)
}

// rendezvousScore is the weight of member name for key in highest random
// weight hashing: FNV-1a over key, a zero byte and the name, then the
// splitmix64 finalizer to spread similar names apart. It depends on nothing
// but its arguments, so every node computes the same ranking.
func rendezvousScore(key, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(name))
	z := h.Sum64()
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	z ^= z >> 31
	return z
}

// RankNames ranks member names for key as Owners does: RankNames(...)[0]
// owns key among those members. For tools and tests that must predict the
// owner from names alone.
func RankNames(key string, names []string) []string {
	ms := make([]Member, len(names))
	for i, n := range names {
		ms[i].Name = n
	}
	rankByRendezvous(key, ms)
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// rankByRendezvous sorts ms in place, highest weight for key first (ties,
// which need a 64-bit collision, broken by name).
func rankByRendezvous(key string, ms []Member) {
	scores := make(map[string]uint64, len(ms))
	for _, m := range ms {
		scores[m.Name] = rendezvousScore(key, m.Name)
	}
	sort.Slice(ms, func(i, j int) bool {
		si, sj := scores[ms[i].Name], scores[ms[j].Name]
		if si != sj {
			return si > sj
		}
		return ms[i].Name < ms[j].Name
	})
}
