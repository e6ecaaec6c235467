package gossip

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestGossip_Join5(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "join", 5)
	eventually(t, 10*time.Second, "every node sees every other, with its metadata", func() error {
		for _, n := range nodes {
			ms := n.Members()
			if len(ms) != 5 {
				return fmt.Errorf("%s sees %d members: %s", n.cfg.Name, len(ms), names(ms))
			}
			locals := 0
			for i, m := range ms {
				want := nodes[i].cfg
				if m.Name != want.Name || m.Site != want.Site || m.GRPCAddr != want.GRPCAddr || m.HTTPAddr != want.HTTPAddr ||
					m.Addr != nodes[i].LocalAddr() || m.State != StateAlive {
					return fmt.Errorf("%s sees %+v, want %s at %s", n.cfg.Name, m, want.Name, nodes[i].LocalAddr())
				}
				if m.Local {
					locals++
					if m.Name != n.cfg.Name {
						t.Fatalf("%s marks %s local", n.cfg.Name, m.Name)
					}
				}
			}
			if locals != 1 {
				t.Fatalf("%s has %d local members", n.cfg.Name, locals)
			}
			if got := n.Live("site-a"); len(got) != 5 {
				return fmt.Errorf("%s: Live(site-a) = %s", n.cfg.Name, names(got))
			}
			if got := n.Live("elsewhere"); len(got) != 0 {
				t.Fatalf("%s: Live(elsewhere) = %s", n.cfg.Name, names(got))
			}
		}
		return nil
	})
}

func TestGossip_HoldingsConverge(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "conv", 5, "site-a", "site-b")
	for i, n := range nodes {
		n.SetVersions("kes-db", []uint64{uint64(100 + i), 1})
		n.SetVersions("modules", []uint64{7})
		n.SetFetching([]string{digest(i), digest(100)})
	}
	// Everyone holds serial 1 of kes-db; node i alone holds 100+i and fetches digest(i).
	eventually(t, 10*time.Second, "holdings converge", func() error {
		for _, o := range nodes {
			if got := o.Holders("", "kes-db", 1); len(got) != 5 {
				return fmt.Errorf("%s: holders of kes-db 1: %s", o.cfg.Name, names(got))
			}
			if got := o.Holders("site-a", "kes-db", 1); len(got) != 3 {
				return fmt.Errorf("%s: site-a holders of kes-db 1: %s", o.cfg.Name, names(got))
			}
			if got := o.Fetchers("", digest(100)); len(got) != 5 {
				return fmt.Errorf("%s: fetchers of digest 100: %s", o.cfg.Name, names(got))
			}
			for i, n := range nodes {
				if got := o.Holders("", "kes-db", uint64(100+i)); names(got) != n.cfg.Name {
					return fmt.Errorf("%s: holders of kes-db %d: %s", o.cfg.Name, 100+i, names(got))
				}
				if got := o.Fetchers(n.cfg.Site, digest(i)); names(got) != n.cfg.Name {
					return fmt.Errorf("%s: fetchers of digest %d: %s", o.cfg.Name, i, names(got))
				}
			}
		}
		return nil
	})
	// Replace: node 0 drops kes-db, stops fetching; node 1 moves to serial 2.
	nodes[0].SetVersions("kes-db", nil)
	nodes[0].SetFetching(nil)
	nodes[1].SetVersions("kes-db", []uint64{1, 2})
	eventually(t, 10*time.Second, "updates converge", func() error {
		for _, o := range nodes {
			ms := o.Members()
			if ms[0].Versions["kes-db"] != nil || len(ms[0].Fetching) != 0 || !reflect.DeepEqual(ms[0].Versions["modules"], []uint64{7}) {
				return fmt.Errorf("%s sees %s with %v fetching %v", o.cfg.Name, ms[0].Name, ms[0].Versions, ms[0].Fetching)
			}
			if got := o.Holders("", "kes-db", 2); names(got) != nodes[1].cfg.Name {
				return fmt.Errorf("%s: holders of kes-db 2: %s", o.cfg.Name, names(got))
			}
		}
		return nil
	})
}

// Nodes that see the same members agree on every owner. (Under heavy load
// a node may briefly find another dead and rejoin it, so agreement is
// polled.)
func TestGossip_OwnersAgree(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "own", 5, "north", "south")
	eventually(t, 20*time.Second, "owners agree", func() error {
		for i := range 200 {
			d := digest(i)
			for _, site := range []string{"north", "south", ""} {
				want := names(nodes[0].Owners(site, d))
				for _, n := range nodes[1:] {
					if got := names(n.Owners(site, d)); got != want {
						return fmt.Errorf("owners of %s in %q: %s sees %s, %s sees %s", d, site, nodes[0].cfg.Name, want, n.cfg.Name, got)
					}
				}
			}
			for _, m := range nodes[0].Owners("north", d) {
				if m.Site != "north" {
					t.Fatalf("Owners(north) includes %s of %s", m.Name, m.Site)
				}
			}
		}
		if n := len(nodes[0].Owners("north", digest(1))); n != 3 {
			return fmt.Errorf("north has %d owners in failover order, want 3", n)
		}
		return nil
	})
}

func TestGossip_FailureDetected(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "fail", 4)
	victim := nodes[3]
	victim.SetVersions("p", []uint64{1})
	eventually(t, 10*time.Second, "holdings known", func() error {
		for _, o := range nodes[:3] {
			if len(o.Holders("", "p", 1)) != 1 {
				return fmt.Errorf("%s does not see the victim's holdings", o.cfg.Name)
			}
		}
		return nil
	})
	if err := victim.kill(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	eventually(t, 10*time.Second, "victim dead", func() error {
		for _, o := range nodes[:3] {
			if s := stateOf(o.Gossip, victim.cfg.Name); s != StateDead {
				return fmt.Errorf("%s sees %s %q", o.cfg.Name, victim.cfg.Name, s)
			}
		}
		return nil
	})
	eventually(t, 10*time.Second, "the dead are not used", func() error {
		for _, o := range nodes[:3] {
			if len(o.Live("")) != 3 || len(o.Holders("", "p", 1)) != 0 {
				return fmt.Errorf("%s: live %s, holders %s", o.cfg.Name, names(o.Live("")), names(o.Holders("", "p", 1)))
			}
			for i := range 100 {
				for _, m := range o.Owners("", digest(i)) {
					if m.Name == victim.cfg.Name {
						return fmt.Errorf("%s still ranks the dead %s as an owner", o.cfg.Name, m.Name)
					}
				}
			}
		}
		return nil
	})
	if err := victim.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestGossip_GracefulLeave(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "leave", 4)
	ch := nodes[0].Changed()
	if err := nodes[3].stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	eventually(t, 10*time.Second, "member left", func() error {
		for _, o := range nodes[:3] {
			if s := stateOf(o.Gossip, nodes[3].cfg.Name); s != StateLeft {
				return fmt.Errorf("%s sees %s %q", o.cfg.Name, nodes[3].cfg.Name, s)
			}
		}
		return nil
	})
	select {
	case <-ch:
	default:
		t.Error("Changed not closed by a leave")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nodes[3].Run(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Run returned: %v, want ErrClosed", err)
	}
}

// A restarted node (same name) wins over what the cluster remembers of it:
// its fresh, empty holdings replace the old ones.
func TestGossip_RestartWins(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "restart", 3)
	old := nodes[2]
	old.SetVersions("p", []uint64{1, 2})
	old.SetFetching([]string{digest(1)})
	eventually(t, 10*time.Second, "holdings known", func() error {
		if got := nodes[0].Holders("", "p", 2); len(got) != 1 {
			return fmt.Errorf("holders: %s", names(got))
		}
		return nil
	})
	if err := old.stop(); err != nil { // leave, so that the name may come back at a new address
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "left", func() error {
		if s := stateOf(nodes[0].Gossip, old.cfg.Name); s != StateLeft {
			return fmt.Errorf("state %q", s)
		}
		return nil
	})
	reborn := startNode(t, testConfig(old.cfg.Name, old.cfg.Site, nodes[0].LocalAddr()))
	reborn.SetVersions("q", []uint64{5})
	eventually(t, 10*time.Second, "restart wins", func() error {
		for _, o := range nodes[:2] {
			for _, m := range o.Members() {
				if m.Name != old.cfg.Name {
					continue
				}
				if m.State != StateAlive || m.Addr != reborn.LocalAddr() || m.Versions["p"] != nil || len(m.Fetching) != 0 || !m.Holds("q", 5) {
					return fmt.Errorf("%s sees %+v", o.cfg.Name, m)
				}
			}
		}
		return nil
	})
}

// A 2|2 partition: each side finds the other dead; once the network heals,
// all four see each other alive again, with no one calling Join: Run's
// rejoin loop does it (memberlist#222).
func TestGossip_RejoinAfterPartition(t *testing.T) {
	t.Parallel()
	p := &partition{}
	var nodes []*testNode
	for i := range 4 {
		cfg := testConfig(fmt.Sprintf("part%d", i), "site-a")
		cfg.Memberlist.Transport = newPartTransport(t, p, i/2)
		if i > 0 {
			cfg.Join = []string{nodes[0].LocalAddr()}
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	waitAlive(t, nodes, nodes, 20*time.Second)

	p.setSplit(true)
	left, right := nodes[:2], nodes[2:]
	eventually(t, 20*time.Second, "each side finds the other dead", func() error {
		for _, side := range [][2][]*testNode{{left, right}, {right, left}} {
			for _, o := range side[0] {
				for _, w := range side[1] {
					if s := stateOf(o.Gossip, w.cfg.Name); s != StateDead {
						return fmt.Errorf("%s sees %s %q", o.cfg.Name, w.cfg.Name, s)
					}
				}
			}
		}
		return nil
	})
	waitAlive(t, left, left, 10*time.Second)
	waitAlive(t, right, right, 10*time.Second)
	// Changes during the partition must cross once it heals.
	right[1].SetVersions("p", []uint64{42})
	// Hold the partition past GossipToTheDeadTime, so that memberlist no
	// longer gossips to the dead side by itself: only the rejoin loop can
	// heal it.
	<-time.After(3 * nodes[0].cfg.Memberlist.GossipToTheDeadTime)

	p.setSplit(false)
	waitAlive(t, nodes, nodes, 20*time.Second)
	eventually(t, 10*time.Second, "holdings cross the healed partition", func() error {
		for _, o := range left {
			if got := o.Holders("site-a", "p", 42); names(got) != right[1].cfg.Name {
				return fmt.Errorf("%s: holders %s", o.cfg.Name, names(got))
			}
		}
		return nil
	})
}

func TestGossip_Encryption(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef0123456789abcdef")
	cfgA := testConfig("enc-a", "s")
	cfgA.SecretKey = key
	a := startNode(t, cfgA)
	cfgB := testConfig("enc-b", "s", a.LocalAddr())
	cfgB.SecretKey = key
	b := startNode(t, cfgB)
	waitAlive(t, []*testNode{a, b}, []*testNode{a, b}, 10*time.Second)

	for _, tc := range []struct {
		name string
		key  []byte
	}{{"enc-wrong-key", []byte("fedcba9876543210")}, {"enc-no-key", nil}} {
		cfg := testConfig(tc.name, "s")
		cfg.SecretKey = tc.key
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := c.Join(a.LocalAddr()); !errors.Is(err, ErrJoin) {
			t.Errorf("%s joined %d nodes (err %v), want ErrJoin", tc.name, n, err)
		}
		if s := stateOf(a.Gossip, tc.name); s != "" {
			t.Errorf("the cluster knows %s (%q)", tc.name, s)
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}
	if got := names(b.Members()); got != "enc-a,enc-b" {
		t.Errorf("members: %s", got)
	}
}

func TestGossip_Lifecycle(t *testing.T) {
	t.Parallel()
	g, err := New(testConfig("life", "s"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	eventually(t, 5*time.Second, "running", func() error {
		g.life.Lock()
		defer g.life.Unlock()
		if !g.running {
			return errors.New("not yet")
		}
		return nil
	})
	if err := g.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run: %v, want ErrRunning", err)
	}
	if err := g.Close(); err != nil { // ends Run without leaving
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("Run after Close: %v", err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := g.Join("127.0.0.1:1"); !errors.Is(err, ErrClosed) {
		t.Errorf("Join after Close: %v", err)
	}
	if err := g.Run(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close: %v", err)
	}
}
