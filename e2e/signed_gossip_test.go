package e2e

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestE2E_SignedGossip_Forgery: three DPs with mTLS, and a fourth member
// with a valid dp certificate of its own (dp-forger, from the same `dpcache
// ca issue`) that lies: it gossips, as broadcasts and in push/pull state, a
// versions part about dp-2 claiming a serial dp-2 does not hold, at a clock
// above dp-2's, signed with its own key. The honest DPs never list that
// serial for dp-2, and each counts the drop in /metrics.
//
// The forger is memberlist itself, driven by this test and writing gossip's
// documented wire format (gossip/messages.go) by hand, as an attacker would.
func TestE2E_SignedGossip_Forgery(t *testing.T) {
	t.Parallel()
	work, k, _, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 16 << 10})

	site := newSitePKI(t, work, "ca")
	admin := site.issue(t, "alice", "admin")
	var dps []*clusterDP
	var join []string
	for _, name := range []string{"dp-1", "dp-2", "dp-3"} {
		dp := startClusterDP(t, name, "paris", repo, k.pub, join, tlsNodeFlags(site.issue(t, name, "dp", "127.0.0.1"), site.ca)...)
		dps = append(dps, dp)
		join = append(join, dp.Gossip)
	}
	waitTLSMembers(t, dps, site.ca, admin)
	// dp-2 really holds serial 1 (an endpoint updated through it).
	update(t, "grpcs://"+dps[1].GRPC, filepath.Join(work, "ep"), k.pub, site.issue(t, "pc-1", "endpoint").flags(site.ca)...)
	for _, obs := range dps {
		waitDetail(t, eventually, obs.Name+" to see dp-2 hold serial 1", func() (bool, string) {
			r := dpcache(t, append([]string{"status", "--node", "grpcs://" + obs.GRPC, "--json"}, admin.flags(site.ca)...)...)
			if r.code != 0 {
				return false, r.String()
			}
			m, _ := decodeStatus(t, []byte(r.stdout)).member("dp-2")
			return m.holds(1), r.stdout
		})
	}
	before := make([]int, len(dps))
	for i, dp := range dps {
		before[i] = droppedMetric(t, dp, site.ca, admin)
	}

	const forgedSerial = 777
	f := startForger(t, site.issue(t, "dp-forger", "dp", "127.0.0.1"), "dp-2", forgedSerial, dps[0].Gossip)
	defer f.Shutdown()

	for i, dp := range dps {
		waitDetail(t, eventually, dp.Name+" to count the forgery as dropped", func() (bool, string) {
			n := droppedMetric(t, dp, site.ca, admin)
			return n > before[i], "dpcache_gossip_dropped_messages_total " + strconv.Itoa(n)
		})
	}
	// Several push/pulls and gossip rounds later, still nobody believes it.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, obs := range dps {
			r := mustRun(t, append([]string{"status", "--node", "grpcs://" + obs.GRPC, "--json"}, admin.flags(site.ca)...)...)
			m, ok := decodeStatus(t, []byte(r.stdout)).member("dp-2")
			if !ok || m.holds(forgedSerial) || !m.holds(1) {
				t.Fatalf("%s lists dp-2 with %v, want serial 1 and never %d:\n%s", obs.Name, m.Versions, forgedSerial, r.stdout)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// droppedMetric reads dpcache_gossip_dropped_messages_total from a DP's
// /metrics with an admin certificate.
func droppedMetric(t *testing.T, dp *clusterDP, ca string, admin certPair) int {
	t.Helper()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	kp, err := tls.LoadX509KeyPair(admin.cert, admin.key)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{kp}}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + dp.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^dpcache_gossip_dropped_messages_total ([0-9.e+]+)$`).FindSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		t.Fatalf("/metrics of %s: %d, no dropped counter:\n%s", dp.Name, resp.StatusCode, body)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return int(v)
}

// The forger's wire format: gossip/messages.go and gossip/trust.go.
const (
	wireMeta, wireVersions, wireState, wireCert = 1, 2, 5, 6
	wireFormat1, wireFormat2                    = 1, 2
	// signContext is what every signed part starts with (gossip/trust.go).
	signContext = "dpcache gossip format 2: a member's own holdings, signed by that member\x00"
)

func appendStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// forger is a memberlist member that gossips its certificate and a lie.
type forger struct {
	meta, cert, forged, state []byte
}

func (f *forger) NodeMeta(int) []byte                    { return f.meta }
func (f *forger) NotifyMsg([]byte)                       {}
func (f *forger) GetBroadcasts(_, _ int) [][]byte        { return [][]byte{f.cert, f.forged} }
func (f *forger) LocalState(bool) []byte                 { return f.state }
func (f *forger) MergeRemoteState(buf []byte, join bool) {}

// startForger joins join as dp-forger with the certificate pair and
// gossips that victim holds serial of the test's product, signed with the
// forger's own key.
func startForger(t *testing.T, pair certPair, victim string, serial uint64, join string) *memberlist.Memberlist {
	t.Helper()
	kp, err := tls.LoadX509KeyPair(pair.cert, pair.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	key := kp.PrivateKey.(*ecdsa.PrivateKey)
	keyID := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)

	// versions body: clock (an hour ahead: it would win), flags, 1 product.
	body := binary.AppendUvarint(nil, uint64(time.Now().Add(time.Hour).UnixNano()))
	body = append(body, 0, 1)
	body = appendStr(body, product)
	body = binary.AppendUvarint(body, 1)
	body = binary.AppendUvarint(body, serial)
	signed := appendStr(append([]byte(signContext), wireVersions), victim)
	h := sha256.Sum256(append(signed, body...))
	sig, err := ecdsa.SignASN1(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	seal := appendStr(append([]byte(nil), keyID[:8]...), string(sig))

	f := &forger{}
	f.forged = append(appendStr([]byte{wireVersions, wireFormat2}, victim), body...)
	f.forged = append(f.forged, seal...)
	chain := binary.AppendUvarint(nil, 1)
	chain = appendStr(chain, string(kp.Certificate[0]))
	f.cert = append([]byte{wireCert, wireFormat1}, chain...)
	// state: from, 1 chain, 1 entry (victim: sealed versions, empty
	// unsigned fetching, no leave).
	st := appendStr([]byte{wireState, wireFormat2}, "dp-forger")
	st = append(binary.AppendUvarint(st, 1), chain...)
	st = binary.AppendUvarint(st, 1)
	st = appendStr(st, victim)
	st = append(append(st, 1), body...)
	st = append(st, seal...)
	st = append(st, 0, 0, 0, 0) // fetching: unsigned, clock 0, flags 0, no digest
	st = append(st, 0, 0)       // leave: unsigned, clock 0
	f.state = st
	f.meta = appendStr(appendStr(appendStr(appendStr([]byte{wireMeta, wireFormat1}, "dp-forger"), "paris"), "127.0.0.1:1"), "")

	cfg := memberlist.DefaultLANConfig()
	cfg.Name = "dp-forger"
	cfg.BindAddr = "127.0.0.1"
	cfg.BindPort = 0
	cfg.AdvertiseAddr = "127.0.0.1"
	cfg.GossipInterval = 50 * time.Millisecond
	cfg.PushPullInterval = time.Second
	cfg.Delegate = f
	cfg.Logger = log.New(io.Discard, "", 0)
	ml, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ml.Join([]string{join}); err != nil {
		ml.Shutdown()
		t.Fatal(err)
	}
	return ml
}
