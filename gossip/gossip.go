package gossip

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Gossip is one DP's membership in the cluster: its metadata, its holdings,
// and what it has learnt of every other DP. All methods are safe for
// concurrent use; none blocks on the network except Run, Join and Close.
type Gossip struct {
	cfg            Config
	log            *slog.Logger
	ml             *memberlist.Memberlist
	queue          *memberlist.TransmitLimitedQueue // our broadcasts: own deltas and relays
	meta           []byte                           // NodeMeta, immutable
	maxMsg         int                              // largest broadcast, bytes
	numLive        atomic.Int32                     // alive members incl. self, for queue.NumNodes (read under the queue's lock)
	stopDials      context.CancelFunc               // ends our NetTransport's outgoing dials
	dropped        atomic.Uint64                    // messages, parts and certificates dropped: malformed, forged, a clock from the future, untrusted
	trust          *keyBook                         // members' keys; nil without Config.Identity
	unsignedLogged atomic.Bool                      // an unsigned part was ignored and said so

	// keyring is memberlist's, nil when gossip is not encrypted; keyMu
	// serializes SetKeys (the keyring locks each of its own calls, not a
	// sequence of them).
	keyring *memberlist.Keyring
	keyMu   sync.Mutex

	// mu guards the fields below. It is held only for in-memory work, and
	// while holding it we never call into memberlist (memberlist calls our
	// event delegate with its own node lock held); queueing a broadcast
	// under mu is fine, the queue never calls back into Gossip.
	mu      sync.Mutex
	clock   uint64               // Lamport clock of our own state
	members map[string]*member   // from memberlist events, self included
	entries map[string]*known    // holdings by node name, self included
	changed chan struct{}        // closed and replaced on every change
	id      *identity            // our certificate and key; nil without Config.Identity
	held    map[heldKey]heldPart // parts signed by keys not known yet

	// life serializes Run's start and stop with Close; it guards the fields
	// below. Not taken by memberlist callbacks.
	life    sync.Mutex
	running bool
	closed  bool
	closeCh chan struct{} // closed when the Gossip closes
	runDone chan struct{} // closed when Run returns; nil before Run

	joinFailing bool // only Run's goroutine: the last rejoin attempt failed
}

// retransmitFactor multiplies memberlist's RetransmitMult for holdings
// broadcasts. Each member relays a message RetransmitMult×⌈log10(N+1)⌉
// times to random members, so a member is missed by all of them with
// probability about e^-(that count); memberlist's 4 gives e^-8 at 20 members,
// a miss in about a hundred changes, and a missed member then waits for a
// push/pull (30s on LAN). Twice that makes a miss negligible (e^-16) for a
// few kilobytes per change across the cluster.
const retransmitFactor = 2

// known is an entry with the local time of its last change.
type known struct {
	entry
	seen time.Time
}

// New validates cfg and creates the memberlist: it binds the gossip sockets
// (TCP and UDP) and memberlist starts its listeners and its probe, gossip and
// push/pull timers right away, so the bound address is known (LocalAddr) and
// others may already join this node. It contacts no one: Run does. Call Run,
// or Close if Run is never called.
func New(cfg Config) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cfg.Join = slices.Clone(cfg.Join)
	cfg.Keys, cfg.SecretKey = cfg.keys(), nil
	logger := cfg.Logger.With("component", "gossip", "name", cfg.Name)

	start := uint64(time.Now().UnixNano()) // a restarted node's clock starts above its old one
	g := &Gossip{
		cfg:     cfg,
		log:     logger,
		meta:    encodeMeta(cfg.meta()),
		clock:   start,
		members: make(map[string]*member),
		entries: map[string]*known{cfg.Name: {
			entry: entry{
				Name:     cfg.Name,
				Versions: versionsPart{Clock: start, Versions: map[string][]uint64{}},
				Fetching: fetchingPart{Clock: start},
			},
			seen: time.Now(),
		}},
		changed: make(chan struct{}),
		closeCh: make(chan struct{}),
		held:    make(map[heldKey]heldPart),
	}
	if cfg.Identity != nil {
		g.trust = newKeyBook(cfg.Roots)
	}
	dialCtx, stopDials := context.WithCancel(context.Background())
	g.stopDials = stopDials

	mlLog := newMemberlistLogger(logger)
	mc := cfg.memberlistConfig(&delegate{g}, mlLog)
	var own *netTransport
	if mc.Transport == nil {
		nt, err := newNetTransport(dialCtx, mc.BindAddr, mc.BindPort, mlLog)
		if err != nil {
			stopDials()
			return nil, fmt.Errorf("%w (BindAddr %q; is another process using the port?)", err, cfg.BindAddr)
		}
		if mc.BindPort == 0 {
			mc.BindPort = nt.GetAutoBindPort()
			if cfg.AdvertiseAddr == "" {
				mc.AdvertisePort = mc.BindPort
			}
		}
		own, mc.Transport = nt, nt
	}
	g.maxMsg = maxBroadcastSize(mc)
	g.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(g.numLive.Load()) },
		RetransmitMult: retransmitFactor * mc.RetransmitMult,
	}
	if g.refreshIdentity() {
		g.mu.Lock()
		g.sealSelfLocked(msgVersions)
		g.sealSelfLocked(msgFetching)
		g.mu.Unlock()
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		stopDials()
		if own != nil {
			_ = own.Shutdown()
		}
		return nil, fmt.Errorf("gossip: start memberlist for %q: %w", cfg.Name, err)
	}
	g.ml = ml
	g.keyring = mc.Keyring // also the one memberlist made of Memberlist.SecretKey
	return g, nil
}

// Run joins the cluster (Config.Join) and keeps the node in it until ctx
// ends: every RejoinInterval, while the node is alone or any member it knew
// is dead, it contacts Config.Join and the dead members' addresses again, so
// a partition heals by itself. It also forgets members dead or left for
// longer than ForgetAfter. When ctx ends it announces that it leaves, waits
// up to LeaveTimeout for memberlist's leave to go out, and shuts memberlist
// down; it returns nil once everything it started has stopped (the error of
// Shutdown otherwise). Close makes Run return too, without leaving (the
// others see the node dead). Run may be called once; it returns ErrRunning
// while another Run is running and ErrClosed after the Gossip has closed.
func (g *Gossip) Run(ctx context.Context) error {
	g.life.Lock()
	switch {
	case g.closed:
		g.life.Unlock()
		return ErrClosed
	case g.running:
		g.life.Unlock()
		return ErrRunning
	}
	g.running = true
	done := make(chan struct{})
	g.runDone = done
	g.life.Unlock()
	defer close(done)

	// A join attempt in progress must not hold up the stop.
	stop := context.AfterFunc(ctx, g.stopDials)
	defer stop()

	g.maintain()
	t := time.NewTicker(g.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return g.shutdown(true)
		case <-g.closeCh:
			return nil
		case <-t.C:
			g.maintain()
		}
	}
}

// Close shuts the node down without leaving: the others will find it dead.
// It makes a running Run return and waits for it. It is safe to call more
// than once and concurrently with Run.
func (g *Gossip) Close() error {
	err := g.shutdown(false)
	g.life.Lock()
	done := g.runDone
	g.life.Unlock()
	if done != nil {
		<-done
	}
	return err
}

// shutdown stops memberlist once; with leave it first announces the leave.
func (g *Gossip) shutdown(leave bool) error {
	g.life.Lock()
	defer g.life.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	close(g.closeCh)
	if leave {
		g.announceLeave()
		if err := g.ml.Leave(g.cfg.LeaveTimeout); err != nil {
			g.log.Warn("leave not gossiped in time; members that missed the direct leave message will find this node dead instead of left", "timeout", g.cfg.LeaveTimeout, "err", err)
		}
	}
	g.stopDials()
	if err := g.ml.Shutdown(); err != nil {
		return fmt.Errorf("gossip: shut down memberlist: %w", err)
	}
	return nil
}

// announceLeave tells every live member, directly and by broadcast, that
// this node leaves on purpose, so that they report it "left" rather than
// "dead" (memberlist's own leave message does not reach its applications'
// event handlers as such).
func (g *Gossip) announceLeave() {
	g.mu.Lock()
	g.clock++
	self := g.entries[g.cfg.Name]
	self.LeaveClock = g.clock
	msg := g.announceLocked(msgLeave)
	g.notifyLocked()
	// Addresses from our own copies: the *Node values memberlist.Members
	// returns are its live records, which it rewrites concurrently.
	var to []*memberlist.Node
	for name, m := range g.members {
		if name == g.cfg.Name || !m.alive {
			continue
		}
		host, port, err := net.SplitHostPort(m.addr)
		p, perr := strconv.Atoi(port)
		if ip := net.ParseIP(host); err == nil && perr == nil && ip != nil {
			to = append(to, &memberlist.Node{Name: name, Addr: ip, Port: uint16(p)})
		}
	}
	g.mu.Unlock()
	if msg == nil {
		return
	}
	for _, n := range to {
		_ = g.ml.SendBestEffort(n, msg) // best effort; the broadcast and push/pull back it up
	}
}

// Join contacts the given gossip addresses (host:port) now and merges state
// with each one reached. It returns how many were reached, and an error
// wrapping ErrJoin if none was. Run joins Config.Join by itself; Join is for
// an operator's explicit request.
func (g *Gossip) Join(addrs ...string) (int, error) {
	g.life.Lock()
	closed := g.closed
	g.life.Unlock()
	if closed {
		return 0, ErrClosed
	}
	if len(addrs) == 0 {
		return 0, fmt.Errorf("%w: no address given", ErrJoin)
	}
	n, err := g.ml.Join(addrs)
	if n == 0 {
		return 0, fmt.Errorf("%w: contacting %v: %v", ErrJoin, addrs, err)
	}
	return n, nil
}

// maintain forgets long-gone members and rejoins when alone or when members
// it knew are dead. Only Run's goroutine calls it.
func (g *Gossip) maintain() {
	g.forget(time.Now())
	g.refreshIdentity()
	g.expireHeld(time.Now())
	addrs := g.rejoinAddrs()
	if len(addrs) == 0 {
		return
	}
	n, err := g.Join(addrs...)
	switch {
	case err != nil && !g.joinFailing:
		g.joinFailing = true
		g.log.Warn("cannot reach the cluster; retrying", "addrs", addrs, "every", g.cfg.RejoinInterval, "err", err)
	case err != nil:
		g.log.Debug("rejoin failed", "addrs", addrs, "err", err)
	case g.joinFailing:
		g.joinFailing = false
		g.log.Info("joined the cluster", "reached", n, "of", len(addrs))
	default:
		g.log.Debug("joined", "reached", n, "of", len(addrs))
	}
}

// rejoinAddrs returns the addresses to contact: the dead members' (not those
// that left), plus Config.Join when the node is alone.
func (g *Gossip) rejoinAddrs() []string {
	self := g.LocalAddr()
	var addrs []string
	add := func(a string) {
		if a != "" && a != self && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	g.mu.Lock()
	alone := true
	for _, m := range g.members {
		if m.name != g.cfg.Name && m.alive {
			alone = false
		}
	}
	if alone {
		for _, a := range g.cfg.Join {
			add(a)
		}
	}
	for _, m := range g.members {
		if m.name != g.cfg.Name && g.stateLocked(m) == StateDead {
			add(m.addr)
		}
	}
	g.mu.Unlock()
	return addrs
}

// forget drops members dead or left since before now-ForgetAfter, and
// holdings of nodes that are not members and have not changed since then.
func (g *Gossip) forget(now time.Time) {
	cutoff := now.Add(-g.cfg.ForgetAfter)
	g.mu.Lock()
	defer g.mu.Unlock()
	dropped := false
	for name, m := range g.members {
		if name != g.cfg.Name && !m.alive && m.since.Before(cutoff) {
			delete(g.members, name)
			delete(g.entries, name)
			dropped = true
		}
	}
	for name, k := range g.entries {
		if _, ok := g.members[name]; !ok && name != g.cfg.Name && k.seen.Before(cutoff) {
			delete(g.entries, name)
			dropped = true
		}
	}
	if dropped {
		g.notifyLocked()
	}
}

// LocalAddr returns the gossip address (host:port) this node advertises:
// the one to give other DPs' Config.Join. It is the bound address unless
// BindAddr has no host (then memberlist picks a private IPv4 address) or
// AdvertiseAddr is set.
func (g *Gossip) LocalAddr() string {
	return g.ml.LocalNode().Address()
}

// SetVersions records that this DP holds the given serials of product whole
// (replacing what was recorded for product; none removes it) and broadcasts
// the DP's versions. A call that changes nothing sends nothing.
func (g *Gossip) SetVersions(product string, serials []uint64) {
	s := normalizeSerials(serials)
	g.mu.Lock()
	defer g.mu.Unlock()
	self := g.entries[g.cfg.Name]
	if slices.Equal(self.Versions.Versions[product], s) {
		return
	}
	if len(s) == 0 {
		delete(self.Versions.Versions, product)
	} else {
		self.Versions.Versions[product] = s
	}
	g.clock++
	self.Versions.Clock = g.clock
	self.seen = time.Now()
	g.announceLocked(msgVersions)
	g.notifyLocked()
}

// SetFetching records the blob digests this DP is fetching from upstream now
// (replacing the previous list) and broadcasts them. A call that changes
// nothing sends nothing.
func (g *Gossip) SetFetching(digests []string) {
	d := normalizeDigests(digests)
	g.mu.Lock()
	defer g.mu.Unlock()
	self := g.entries[g.cfg.Name]
	if slices.Equal(self.Fetching.Digests, d) {
		return
	}
	g.clock++
	self.Fetching = fetchingPart{Clock: g.clock, Digests: d}
	self.seen = time.Now()
	g.announceLocked(msgFetching)
	g.notifyLocked()
}

// Members returns every member known, this node included, with its state,
// sorted by name. Dead and left members stay for ForgetAfter.
func (g *Gossip) Members() []Member {
	return g.collect(func(*member, *known) bool { return true })
}

// Live returns the live members of site ("" = every site), this node
// included, sorted by name. Live means alive (memberlist v0.7.0 reports no
// suspect state; see StateSuspect) with valid metadata.
func (g *Gossip) Live(site string) []Member {
	return g.collect(func(m *member, _ *known) bool { return g.liveLocked(m, site) })
}

// Holders returns the live members of site ("" = every site) that hold
// serial of product whole, sorted by name.
func (g *Gossip) Holders(site, product string, serial uint64) []Member {
	return g.collect(func(m *member, k *known) bool {
		if !g.liveLocked(m, site) || k == nil {
			return false
		}
		_, ok := slices.BinarySearch(k.Versions.Versions[product], serial)
		return ok
	})
}

// Fetchers returns the live members of site ("" = every site) that are
// fetching digest from upstream now, sorted by name.
func (g *Gossip) Fetchers(site, digest string) []Member {
	return g.collect(func(m *member, k *known) bool {
		if !g.liveLocked(m, site) || k == nil {
			return false
		}
		_, ok := slices.BinarySearch(k.Fetching.Digests, digest)
		return ok
	})
}

// Owners returns the live members of site ("" = every site) ranked by
// rendezvous (highest random weight) hashing of digest and member name:
// Owners(...)[0] owns digest, the others follow in failover order. Nodes
// that see the same members compute the same ranking, and a member's
// arrival or departure moves only the digests it owns (or comes to own).
func (g *Gossip) Owners(site, digest string) []Member {
	ms := g.Live(site)
	rankByRendezvous(digest, ms)
	return ms
}

// Changed returns a channel that is closed at the next change of membership
// (join, leave, death, metadata) or of any member's Versions or Fetching;
// the caller then calls Changed again and re-reads what it needs. Changes
// are coalesced: several may happen before the caller looks.
func (g *Gossip) Changed() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

func (g *Gossip) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *Gossip) liveLocked(m *member, site string) bool {
	return m.alive && m.metaOK && (site == "" || m.meta.Site == site)
}

// stateLocked derives a member's state from memberlist's events and the
// leave announcements.
func (g *Gossip) stateLocked(m *member) State {
	if m.alive {
		return StateAlive
	}
	if k := g.entries[m.name]; k != nil && k.leaving() {
		return StateLeft
	}
	return StateDead
}

// collect returns copies of the members keep accepts, sorted by name.
func (g *Gossip) collect(keep func(*member, *known) bool) []Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Member
	for name, m := range g.members {
		k := g.entries[name]
		if !keep(m, k) {
			continue
		}
		mm := Member{
			Name:     name,
			Site:     m.meta.Site,
			GRPCAddr: m.meta.GRPCAddr,
			HTTPAddr: m.meta.HTTPAddr,
			Addr:     m.addr,
			State:    g.stateLocked(m),
			Local:    name == g.cfg.Name,
		}
		if k != nil {
			mm.Versions = cloneVersions(k.Versions.Versions)
			mm.Fetching = slices.Clone(k.Fetching.Digests)
		}
		out = append(out, mm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Dropped counts what gossip dropped since the start: malformed messages
// and push/pull states, parts with a clock from the future, and, with
// Config.Identity, parts not signed by the member they describe (forged),
// parts whose key never became known, and certificates not trusted.
func (g *Gossip) Dropped() uint64 { return g.dropped.Load() }
