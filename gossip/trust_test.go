package gossip

import (
	"bytes"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/dpcache/dpcache/pki"
)

// testCA is a site CA made by package pki in a temporary directory.
type testCA struct {
	dir   string
	roots *pki.CertPool
}

func newTestCA(tb testing.TB) *testCA {
	tb.Helper()
	dir := tb.TempDir()
	if err := pki.InitCA(dir, "test site CA"); err != nil {
		tb.Fatal(err)
	}
	roots, err := pki.LoadCertPool(filepath.Join(dir, pki.CACertFile), testLogger())
	if err != nil {
		tb.Fatal(err)
	}
	return &testCA{dir: dir, roots: roots}
}

// issue returns a certificate of the CA for name with role.
func (ca *testCA) issue(tb testing.TB, name string, role pki.Role) *pki.KeyPair {
	tb.Helper()
	prefix := filepath.Join(ca.dir, string(role)+"-"+name)
	if err := pki.Issue(ca.dir, pki.IssueRequest{Name: name, Role: role, Hosts: []string{"127.0.0.1"}}, prefix); err != nil {
		tb.Fatal(err)
	}
	kp, err := pki.LoadKeyPair(prefix+".pem", prefix+".key", testLogger())
	if err != nil {
		tb.Fatal(err)
	}
	return kp
}

// signedConfig is testConfig with a dp certificate of ca for name.
func (ca *testCA) config(tb testing.TB, name string, join ...string) Config {
	cfg := testConfig(name, "site-a", join...)
	cfg.Identity = ca.issue(tb, name, pki.RoleDP)
	cfg.Roots = ca.roots
	return cfg
}

func mustIdentity(tb testing.TB, kp *pki.KeyPair) *identity {
	tb.Helper()
	id, err := newIdentity(kp.Certificate())
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// signedVersions is a versions broadcast about name signed by id.
func signedVersions(tb testing.TB, id *identity, name string, clock uint64, vs map[string][]uint64) []byte {
	tb.Helper()
	body, _ := appendVersionsBody(nil, versionsPart{Clock: clock, Versions: vs}, 0)
	s, err := id.sign(msgVersions, name, body)
	if err != nil {
		tb.Fatal(err)
	}
	return encodeSigned(msgVersions, name, s)
}

// versionsOf returns what g believes name holds.
func versionsOf(g *Gossip, name string) map[string][]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if k := g.entries[name]; k != nil {
		return cloneVersions(k.Versions.Versions)
	}
	return nil
}

func TestTrust_KeyBook(t *testing.T) {
	t.Parallel()
	ca, other := newTestCA(t), newTestCA(t)
	a := mustIdentity(t, ca.issue(t, "dp-a", pki.RoleDP))
	b := mustIdentity(t, ca.issue(t, "dp-b", pki.RoleDP))
	now := time.Now()
	kb := newKeyBook(ca.roots)
	for _, id := range []*identity{a, b} {
		if name, isNew, err := kb.learn(id.cert.Certificate, now); err != nil || !isNew || name != id.leaf.Subject.CommonName {
			t.Fatalf("learn %s: %q %v %v", id.leaf.Subject.CommonName, name, isNew, err)
		}
	}
	if _, isNew, err := kb.learn(a.cert.Certificate, now); isNew || err != nil {
		t.Errorf("learning a chain again: new %v, %v", isNew, err)
	}
	for _, tt := range []struct {
		name string
		kp   *pki.KeyPair
	}{
		{"another CA", other.issue(t, "dp-x", pki.RoleDP)},
		{"endpoint role", ca.issue(t, "dp-y", pki.RoleEndpoint)},
		{"admin role", ca.issue(t, "dp-z", pki.RoleAdmin)},
	} {
		if _, isNew, err := kb.learn(tt.kp.Certificate().Certificate, now); err == nil || isNew {
			t.Errorf("%s: learnt (new %v), want refused", tt.name, isNew)
		}
	}

	body, _ := appendVersionsBody(nil, versionsPart{Clock: 7, Versions: map[string][]uint64{"av": {3}}}, 0)
	s, err := a.sign(msgVersions, "dp-a", body)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Sig) > a.sigMax {
		t.Errorf("signature of %d bytes, sigMax %d", len(s.Sig), a.sigMax)
	}
	tampered := *s
	tampered.Body = slices.Clone(s.Body)
	tampered.Body[len(tampered.Body)-1]++
	lying, _ := a.sign(msgVersions, "dp-b", body) // dp-a signs a part about dp-b
	unknown := *s
	unknown.Key = keyID{9, 9, 9}
	for _, tt := range []struct {
		name  string
		typ   byte
		about string
		s     *seal
		want  verdict
	}{
		{"own part", msgVersions, "dp-a", s, verified},
		{"unsigned", msgVersions, "dp-a", nil, unsigned},
		{"body changed", msgVersions, "dp-a", &tampered, forged},
		{"other type", msgFetching, "dp-a", s, forged},
		{"another member's key", msgVersions, "dp-b", lying, forged},
		{"relabelled", msgVersions, "dp-b", s, forged},
		{"unknown key", msgVersions, "dp-a", &unknown, unknownKey},
		{"unknown member", msgVersions, "dp-c", &unknown, unknownKey},
	} {
		if got := kb.check(tt.typ, tt.about, tt.s, now); got != tt.want {
			t.Errorf("%s: verdict %d, want %d", tt.name, got, tt.want)
		}
	}
	if got := kb.check(msgVersions, "dp-a", s, a.leaf.NotAfter.Add(time.Second)); got != unknownKey {
		t.Errorf("key past its certificate's end: verdict %d, want unknown", got)
	}
	if n := len(kb.chains(now)); n != 2 {
		t.Errorf("%d chains, want 2", n)
	}
}

// A member's key rotates: the new one and the previous one verify, the one
// before is forgotten (certificates issued within a second have the same
// NotBefore: the one learnt last counts as newest).
func TestTrust_KeyBook_Rotation(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	kb := newKeyBook(ca.roots)
	var ids []*identity
	for i := range 3 {
		id := mustIdentity(t, ca.issue(t, "dp-a", pki.RoleDP))
		ids = append(ids, id)
		if _, isNew, err := kb.learn(id.cert.Certificate, time.Now()); err != nil || !isNew {
			t.Fatalf("key %d: new %v, %v", i, isNew, err)
		}
	}
	for i, id := range ids {
		s, _ := id.sign(msgLeave, "dp-a", leaveBody(1))
		want := verified
		if i == 0 {
			want = unknownKey
		}
		if got := kb.check(msgLeave, "dp-a", s, time.Now()); got != want {
			t.Errorf("key %d: verdict %d, want %d", i, got, want)
		}
	}
}

func TestMessages_SignedRoundTrip(t *testing.T) {
	t.Parallel()
	id := mustIdentity(t, newTestCA(t).issue(t, "dp-a", pki.RoleDP))
	vs := map[string][]uint64{"av": {1, 2}, "mods": {7}}
	b := signedVersions(t, id, "dp-a", 42, vs)
	m, err := decodeMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "dp-a" || m.Versions.Clock != 42 || !reflect.DeepEqual(m.Versions.Versions, vs) || m.seal() == nil {
		t.Fatalf("decoded %+v", m)
	}
	if re := encodeSigned(m.Type, m.Name, m.seal()); !bytes.Equal(re, b) {
		t.Fatal("a signed broadcast does not re-encode to its bytes")
	}
	cm, err := decodeMessage(encodeCertMsg(id.cert.Certificate))
	if err != nil || !reflect.DeepEqual(cm.Chain, id.cert.Certificate) {
		t.Fatalf("certificate message: %v", err)
	}
	e := entry{Name: "dp-a", Versions: m.Versions, Fetching: fetchingPart{Clock: 1, Digests: []string{}}}
	st, err := decodeState(encodeStateSigned("dp-b", [][][]byte{id.cert.Certificate}, []entry{e}))
	if err != nil {
		t.Fatal(err)
	}
	if st.From != "dp-b" || len(st.Chains) != 1 || !reflect.DeepEqual(st.Entries, []entry{e}) {
		t.Fatalf("signed state: %+v", st)
	}
}

// A DP with many products broadcasts signed parts that fit a packet,
// truncated, and keeps the whole part signed for push/pull.
func TestGossip_Signed_Truncated(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	r := newSigned(t, ca, "trunc-r")
	for i := range 300 {
		r.SetVersions(fmt.Sprintf("product-%03d", i), []uint64{uint64(i) + 1, uint64(i) + 1000})
	}
	kb := newKeyBook(ca.roots)
	r.mu.Lock()
	kb.addOwn("trunc-r", r.id)
	full := r.entries["trunc-r"].Versions
	r.mu.Unlock()
	if full.Seal == nil || kb.check(msgVersions, "trunc-r", full.Seal, time.Now()) != verified {
		t.Fatal("the whole versions part is not signed")
	}
	var got *message
	for _, b := range r.queue.GetBroadcasts(0, 1<<20) {
		if len(b) > r.maxMsg {
			t.Errorf("a broadcast of %d bytes, max %d", len(b), r.maxMsg)
		}
		if m, err := decodeMessage(b); err == nil && m.Type == msgVersions {
			got = &m
		}
	}
	if got == nil || !got.Versions.Truncated || len(got.Versions.Versions) == 0 {
		t.Fatalf("versions broadcast: %+v", got)
	}
	if v := kb.check(msgVersions, "trunc-r", got.seal(), time.Now()); v != verified {
		t.Errorf("truncated broadcast: verdict %d", v)
	}
}

// newSigned starts a node of ca without joining anyone.
func newSigned(t *testing.T, ca *testCA, name string) *testNode {
	t.Helper()
	return startNode(t, ca.config(t, name))
}

// A member's signed part reaches another member relayed by a third (as a
// broadcast and in push/pull state) and still verifies; a part one member
// signs about another is dropped and counted; an unsigned part is ignored.
func TestGossip_Signed_RelayAndForgery(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	a, b, c := newSigned(t, ca, "sig-a"), newSigned(t, ca, "sig-b"), newSigned(t, ca, "sig-c")
	ida, idb := mustIdentity(t, a.cfg.Identity.(*pki.KeyPair)), mustIdentity(t, b.cfg.Identity.(*pki.KeyPair))
	for _, n := range []*testNode{b, c} {
		n.learnChains([][][]byte{ida.cert.Certificate, idb.cert.Certificate}, false)
	}
	clock := uint64(time.Now().UnixNano())
	(&delegate{b.Gossip}).NotifyMsg(signedVersions(t, ida, "sig-a", clock, map[string][]uint64{"av": {5}}))
	if got := versionsOf(b.Gossip, "sig-a"); !reflect.DeepEqual(got, map[string][]uint64{"av": {5}}) {
		t.Fatalf("b: sig-a holds %v, want av 5", got)
	}
	// c gets it in b's push/pull state.
	(&delegate{c.Gossip}).MergeRemoteState((&delegate{b.Gossip}).LocalState(false), false)
	if got := versionsOf(c.Gossip, "sig-a"); !reflect.DeepEqual(got, map[string][]uint64{"av": {5}}) {
		t.Fatalf("c: sig-a holds %v after b's state, want av 5", got)
	}

	// b forges a part about a with its own key, and one with a's key id.
	dc := &delegate{c.Gossip}
	dropped := c.Dropped()
	dc.NotifyMsg(signedVersions(t, idb, "sig-a", clock+10, map[string][]uint64{"av": {99}}))
	forged := signedVersions(t, ida, "sig-a", clock+11, map[string][]uint64{"av": {6}})
	forged[len(forged)-1] ^= 1 // the signature's last byte
	dc.NotifyMsg(forged)
	// And in push/pull state, where it names itself as the sender.
	body, _ := appendVersionsBody(nil, versionsPart{Clock: clock + 12, Versions: map[string][]uint64{"av": {98}}}, 0)
	s, _ := idb.sign(msgVersions, "sig-a", body)
	dc.MergeRemoteState(encodeStateSigned("sig-b", nil, []entry{{Name: "sig-a", Versions: versionsPart{Clock: clock + 12, Versions: map[string][]uint64{"av": {98}}, Seal: s}}}), false)
	if got := c.Dropped() - dropped; got != 3 {
		t.Errorf("dropped %d, want 3", got)
	}
	// Unsigned, about a: ignored, not counted.
	unsigned, _ := encodeVersionsMsg("sig-a", versionsPart{Clock: clock + 20, Versions: map[string][]uint64{"av": {97}}}, 0)
	dc.NotifyMsg(unsigned)
	if got := versionsOf(c.Gossip, "sig-a"); !reflect.DeepEqual(got, map[string][]uint64{"av": {5}}) {
		t.Fatalf("c: sig-a holds %v after forgeries, want av 5", got)
	}
	// A forged part about c itself does not move c's clock.
	c.mu.Lock()
	before := c.clock
	c.mu.Unlock()
	dc.NotifyMsg(signedVersions(t, idb, "sig-c", before+1000, map[string][]uint64{"av": {96}}))
	c.mu.Lock()
	after := c.clock
	c.mu.Unlock()
	if after != before {
		t.Errorf("a forged part about c moved its clock from %d to %d", before, after)
	}
}

// A part signed by a key not known yet is held back, then merged when the
// certificate arrives; a forgery held back is dropped once its signer's
// certificate shows whose key it is.
func TestGossip_Signed_UnknownKeyHeldBack(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	r := newSigned(t, ca, "held-r")
	ida := mustIdentity(t, ca.issue(t, "held-a", pki.RoleDP))
	idf := mustIdentity(t, ca.issue(t, "held-f", pki.RoleDP))
	d := &delegate{r.Gossip}
	clock := uint64(time.Now().UnixNano())
	d.NotifyMsg(signedVersions(t, ida, "held-a", clock, map[string][]uint64{"av": {4}}))
	d.NotifyMsg(signedVersions(t, idf, "held-v", clock, map[string][]uint64{"av": {99}})) // f lies about v
	if got := versionsOf(r.Gossip, "held-a"); got != nil {
		t.Fatalf("merged %v before the key was known", got)
	}
	r.mu.Lock()
	held := len(r.held)
	r.mu.Unlock()
	if held != 2 {
		t.Fatalf("%d parts held back, want 2", held)
	}
	dropped := r.Dropped()
	d.NotifyMsg(encodeCertMsg(ida.cert.Certificate))
	if got := versionsOf(r.Gossip, "held-a"); !reflect.DeepEqual(got, map[string][]uint64{"av": {4}}) {
		t.Fatalf("after a's certificate: %v, want av 4", got)
	}
	d.MergeRemoteState(encodeStateSigned("held-f", [][][]byte{idf.cert.Certificate}, nil), false)
	if got := r.Dropped() - dropped; got != 1 {
		t.Errorf("dropped %d once f's key is known, want 1", got)
	}
	if got := versionsOf(r.Gossip, "held-v"); got != nil {
		t.Errorf("held-v holds %v", got)
	}
	r.mu.Lock()
	held = len(r.held)
	r.mu.Unlock()
	if held != 0 {
		t.Errorf("%d parts still held", held)
	}
	// Held parts are bounded.
	idx := mustIdentity(t, ca.issue(t, "held-x", pki.RoleDP))
	for i := range maxHeld + 10 {
		d.NotifyMsg(signedVersions(t, idx, fmt.Sprintf("held-n%d", i), clock, map[string][]uint64{"av": {1}}))
	}
	r.mu.Lock()
	held = len(r.held)
	r.mu.Unlock()
	if held != maxHeld {
		t.Errorf("%d parts held, want the bound %d", held, maxHeld)
	}
	r.expireHeld(time.Now().Add(heldTTL + time.Minute))
	r.mu.Lock()
	held = len(r.held)
	r.mu.Unlock()
	if held != 0 {
		t.Errorf("%d parts held after their time, want 0", held)
	}
}

// A cluster with certificates over 127.0.0.1: holdings spread signed; a
// member with a valid certificate of its own that lies about another is
// never believed, and the lie is counted.
func TestGossip_Signed_Cluster(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	first := startNode(t, ca.config(t, "sc0"))
	nodes := []*testNode{first}
	for i := 1; i < 3; i++ {
		nodes = append(nodes, startNode(t, ca.config(t, fmt.Sprintf("sc%d", i), first.LocalAddr())))
	}
	forger := startNode(t, ca.config(t, "sc-forger", first.LocalAddr()))
	all := append(slices.Clone(nodes), forger)
	waitAlive(t, all, all, 20*time.Second)
	victim := nodes[2]
	victim.SetVersions("av", []uint64{1})
	eventually(t, 20*time.Second, "the victim's signed holdings to reach every member", func() error {
		for _, n := range all {
			if hs := n.Holders("", "av", 1); len(hs) != 1 || hs[0].Name != victim.cfg.Name {
				return fmt.Errorf("%s sees holders of av 1: %s", n.cfg.Name, names(hs))
			}
		}
		return nil
	})
	before := make([]uint64, len(nodes))
	for i, n := range nodes {
		before[i] = n.Dropped()
	}
	// The forger broadcasts a versions part about the victim, signed with
	// its own (valid) key, at a clock above the victim's.
	forger.mu.Lock()
	body, _ := appendVersionsBody(nil, versionsPart{Clock: forger.clock + 1000, Versions: map[string][]uint64{"av": {1, 666}}}, 0)
	s := forger.signLocked(msgVersions, body)
	forger.queue.QueueBroadcast(newBroadcast(msgVersions, victim.cfg.Name, encodeSigned(msgVersions, victim.cfg.Name, s)))
	forger.mu.Unlock()
	eventually(t, 20*time.Second, "every honest member to drop the forgery", func() error {
		for i, n := range nodes {
			if n == victim {
				continue
			}
			if n.Dropped() == before[i] {
				return fmt.Errorf("%s dropped nothing", n.cfg.Name)
			}
		}
		return nil
	})
	for _, n := range nodes {
		if hs := n.Holders("", "av", 666); len(hs) != 0 {
			t.Errorf("%s believes the forgery: holders of av 666 %s", n.cfg.Name, names(hs))
		}
	}
}

// Without certificates nothing is signed and a DP with one ignores the
// unsigned parts.
func TestGossip_Signed_IgnoresUnsigned(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	plain := startNode(t, testConfig("mix-plain", "site-a"))
	signed := startNode(t, ca.config(t, "mix-signed", plain.LocalAddr()))
	waitAlive(t, []*testNode{plain, signed}, []*testNode{plain, signed}, 20*time.Second)
	plain.SetVersions("av", []uint64{3})
	signed.SetVersions("av", []uint64{4})
	eventually(t, 20*time.Second, "the plain DP to see the signed one's holdings", func() error {
		if hs := plain.Holders("", "av", 4); len(hs) != 1 {
			return fmt.Errorf("holders of av 4: %s", names(hs))
		}
		return nil
	})
	if hs := signed.Holders("", "av", 3); len(hs) != 0 {
		t.Errorf("the signed DP believes unsigned holdings: %s", names(hs))
	}
}
