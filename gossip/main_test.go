package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger discards logs unless GOSSIP_TEST_LOG is set (then: debug to
// stderr). Not t.Log: memberlist may log after a test returns.
func testLogger() *slog.Logger {
	if os.Getenv("GOSSIP_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastMemberlist is memberlist's LAN config with timers for in-process
// clusters on loopback (like memberlist's testConfigNet, faster): failures
// are found in well under a second, push/pull twice a second, and dead
// members are no longer gossiped to after 200ms, so that only Run's rejoin
// loop can heal a partition.
func fastMemberlist() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.TCPTimeout = time.Second
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = 80 * time.Millisecond
	c.SuspicionMult = 4
	c.SuspicionMaxTimeoutMult = 2
	c.GossipInterval = 20 * time.Millisecond
	c.PushPullInterval = 500 * time.Millisecond
	c.GossipToTheDeadTime = 200 * time.Millisecond
	return c
}

var grpcPort atomic.Int32

// testConfig is a Config for node name of site on 127.0.0.1, port 0, fast
// timers.
func testConfig(name, site string, join ...string) Config {
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Site = site
	p := 20000 + grpcPort.Add(1)
	cfg.GRPCAddr = fmt.Sprintf("127.0.0.1:%d", p)
	cfg.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", p+10000)
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Join = join
	cfg.RejoinInterval = 100 * time.Millisecond
	cfg.LeaveTimeout = time.Second
	cfg.Memberlist = fastMemberlist()
	cfg.Logger = testLogger()
	return cfg
}

// testNode is a Gossip whose Run runs in a goroutine until stop.
type testNode struct {
	*Gossip
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// startNode creates a node from cfg and runs it; the test's cleanup stops it.
func startNode(tb testing.TB, cfg Config) *testNode {
	tb.Helper()
	g, err := New(cfg)
	if err != nil {
		tb.Fatalf("New(%s): %v", cfg.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	n := &testNode{Gossip: g, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- g.Run(ctx) }()
	tb.Cleanup(func() { _ = n.stop() })
	return n
}

// stop ends Run (a graceful leave) and returns its error.
func (n *testNode) stop() error {
	n.once.Do(func() {
		n.cancel()
		select {
		case n.err = <-n.done:
		case <-time.After(30 * time.Second):
			n.err = errors.New("Run did not return within 30s of its context ending")
		}
	})
	return n.err
}

// kill closes the node without leaving, like a crash.
func (n *testNode) kill() error {
	err := n.Close()
	n.stop()
	return err
}

// eventually polls cond until it returns nil or timeout passes.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not true after %v: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// cluster starts n nodes named prefix0..prefixN-1, the site of node i being
// sites[i%len(sites)]; all join node 0. It returns once every node sees all
// n alive.
func cluster(tb testing.TB, prefix string, n int, sites ...string) []*testNode {
	tb.Helper()
	if len(sites) == 0 {
		sites = []string{"site-a"}
	}
	nodes := make([]*testNode, 0, n)
	for i := range n {
		var join []string
		if i > 0 {
			join = []string{nodes[0].LocalAddr()}
		}
		nodes = append(nodes, startNode(tb, testConfig(fmt.Sprintf("%s%d", prefix, i), sites[i%len(sites)], join...)))
	}
	waitAlive(tb, nodes, nodes, 20*time.Second)
	return nodes
}

// waitAlive waits until every observer sees every node of want alive.
func waitAlive(tb testing.TB, observers, want []*testNode, timeout time.Duration) {
	tb.Helper()
	eventually(tb, timeout, "all alive", func() error {
		for _, o := range observers {
			for _, w := range want {
				if s := stateOf(o.Gossip, w.cfg.Name); s != StateAlive {
					return fmt.Errorf("%s sees %s %q", o.cfg.Name, w.cfg.Name, s)
				}
			}
		}
		return nil
	})
}

// stateOf returns the state g sees for name, "" if unknown.
func stateOf(g *Gossip, name string) State {
	for _, m := range g.Members() {
		if m.Name == name {
			return m.State
		}
	}
	return ""
}

func names(ms []Member) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.Name
	}
	return strings.Join(s, ",")
}

// partition is a network between test nodes that can be split in two
// groups: while split, packets between the groups are dropped and streams
// refused.
type partition struct {
	mu    sync.Mutex
	group map[string]int // gossip address → group
	split bool
}

func (p *partition) setSplit(v bool) {
	p.mu.Lock()
	p.split = v
	p.mu.Unlock()
}

func (p *partition) blocked(from, to string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	gf, okf := p.group[from]
	gt, okt := p.group[to]
	return p.split && okf && okt && gf != gt
}

// partTransport is a memberlist.Transport around a NetTransport on
// 127.0.0.1 that obeys a partition. It implements only Transport (not
// NodeAwareTransport), so memberlist sends everything through WriteTo and
// DialTimeout.
type partTransport struct {
	inner *memberlist.NetTransport
	addr  string
	p     *partition
}

var errPartitioned = errors.New("test partition: connection refused")

func newPartTransport(tb testing.TB, p *partition, group int) *partTransport {
	tb.Helper()
	var nt *memberlist.NetTransport
	var err error
	for range 10 { // port 0: the UDP port may be taken
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{"127.0.0.1"},
			Logger:    log.New(io.Discard, "", 0),
		})
		if err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("NewNetTransport: %v", err)
	}
	t := &partTransport{inner: nt, addr: net.JoinHostPort("127.0.0.1", fmt.Sprint(nt.GetAutoBindPort())), p: p}
	p.mu.Lock()
	if p.group == nil {
		p.group = make(map[string]int)
	}
	p.group[t.addr] = group
	p.mu.Unlock()
	return t
}

func (t *partTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *partTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.p.blocked(t.addr, addr) {
		return time.Now(), nil // lost on the way
	}
	return t.inner.WriteTo(b, addr)
}

func (t *partTransport) PacketCh() <-chan *memberlist.Packet { return t.inner.PacketCh() }

func (t *partTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.p.blocked(t.addr, addr) {
		return nil, errPartitioned
	}
	return t.inner.DialTimeout(addr, timeout)
}

func (t *partTransport) StreamCh() <-chan net.Conn { return t.inner.StreamCh() }
func (t *partTransport) Shutdown() error           { return t.inner.Shutdown() }
