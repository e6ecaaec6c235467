package gossip

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/dpcache/dpcache/pki"
)

// Signed holdings (DESIGN.md, "Trust on a hostile network": with DP
// certificates, a member's holdings are signed by it, so no member can
// state another's).
//
// A DP with a certificate (Config.Identity) signs every versions, fetching
// and leave part it originates, over (context, type, name, body), and sends
// it in format 2 with the id of its key. Receivers accept a part only when
// it verifies with a key from a certificate that chains to Config.Roots,
// carries the dp role and names the member the part describes. Certificates
// travel in gossip itself: each DP broadcasts its chain (msgCert) when it
// starts or its certificate changes, and push/pull state carries every
// chain a DP trusts, so a newcomer learns all keys at its first push/pull.
// A certificate is self-authenticating (the CA signed it), so it may come
// from anyone.
//
// A part whose key id is unknown is held back, at most maxHeld of them,
// until its certificate arrives (a new member, a rotated certificate); one
// whose key id belongs to another member, or whose signature does not
// verify, is forged: dropped and counted.

// CertificateSource is where a DP's certificate and private key come from
// (a *pki.KeyPair): Certificate returns the current one, its Leaf or
// Certificate[0] the member's own, named by its common name.
type CertificateSource interface {
	Certificate() *tls.Certificate
}

// RootSource is where the CA certificates that members' certificates must
// chain to come from (a *pki.CertPool): Pool returns the current ones.
type RootSource interface {
	Pool() *x509.CertPool
}

// signContext starts every signed message. It is longer than 32 bytes so
// that no signature a DP makes in a TLS handshake (over client random,
// server random, ...) can be taken for a gossip part's.
const signContext = "dpcache gossip format 2: a member's own holdings, signed by that member\x00"

// Bounds of what a node keeps of others' keys and unverified parts.
const (
	keysPerName = 2    // a member's current key and the one it rotated from
	maxKeyNames = 4096 // members whose keys are kept
	maxHeld     = 256  // parts held back until their key is known
	heldTTL     = 10 * time.Minute
	recheckCert = time.Minute // a chain seen is verified again after this
)

// signedBytes is what a member signs for a part of type typ about itself.
func signedBytes(typ byte, name string, body []byte) []byte {
	b := make([]byte, 0, len(signContext)+1+binary.MaxVarintLen32+len(name)+len(body))
	b = append(b, signContext...)
	b = append(b, typ)
	b = appendString(b, name)
	return append(b, body...)
}

// identity is this node's certificate and key, for signing.
type identity struct {
	cert   *tls.Certificate // as CertificateSource returned it
	leaf   *x509.Certificate
	key    keyID
	signer crypto.Signer
	sigMax int // longest signature the key makes
}

func newIdentity(c *tls.Certificate) (*identity, error) {
	if c == nil || len(c.Certificate) == 0 {
		return nil, errors.New("no certificate")
	}
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
	}
	signer, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("the private key cannot sign")
	}
	n, err := sigMax(leaf.PublicKey)
	if err != nil {
		return nil, err
	}
	return &identity{cert: c, leaf: leaf, key: keyIDOf(leaf), signer: signer, sigMax: n}, nil
}

// sigMax is the length of pub's longest signature; an error for a key
// that cannot sign gossip.
func sigMax(pub crypto.PublicKey) (int, error) {
	n := 0
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		n = 2*((k.Curve.Params().BitSize+7)/8) + 9 // DER: two integers, each may gain a zero byte
	case ed25519.PublicKey:
		n = ed25519.SignatureSize
	case *rsa.PublicKey:
		n = k.Size()
	default:
		return 0, fmt.Errorf("key type %T cannot sign gossip", pub)
	}
	if n > maxSigLen {
		return 0, fmt.Errorf("signatures of %d bytes are too long for gossip", n)
	}
	return n, nil
}

// sign signs a part of type typ about name (this node) with body.
func (id *identity) sign(typ byte, name string, body []byte) (*seal, error) {
	msg := signedBytes(typ, name, body)
	var sig []byte
	var err error
	if _, ok := id.leaf.PublicKey.(ed25519.PublicKey); ok {
		sig, err = id.signer.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		h := sha256.Sum256(msg)
		sig, err = id.signer.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	if err != nil {
		return nil, err
	}
	return &seal{Body: body, Key: id.key, Sig: sig}, nil
}

// keyIDOf names a certificate's key.
func keyIDOf(c *x509.Certificate) keyID {
	h := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	var id keyID
	copy(id[:], h[:])
	return id
}

// verifySig reports whether sig is pub's signature of msg, made as
// identity.sign makes them.
func verifySig(pub crypto.PublicKey, msg, sig []byte) bool {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(k, h[:], sig)
	case *rsa.PublicKey:
		h := sha256.Sum256(msg)
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, h[:], sig) == nil
	}
	return false
}

// verdict is what a keyBook says of a part.
type verdict int

const (
	verified   verdict = iota // signed by the member it describes
	unsigned                  // no signature
	forged                    // another member's key, or a signature that does not verify
	unknownKey                // signed by a key not known (yet)
)

// memberKey is a member's public key, from a certificate that verified.
type memberKey struct {
	id        keyID
	pub       crypto.PublicKey
	chain     [][]byte
	notBefore time.Time
	notAfter  time.Time
}

// keyBook holds the members' keys, by name and by key id. Safe for
// concurrent use; its lock is taken alone (never with Gossip.mu held
// across a call that takes Gossip.mu).
type keyBook struct {
	roots RootSource // nil: the system roots

	mu     sync.Mutex
	byName map[string][]*memberKey // newest first, ≤ keysPerName
	byID   map[keyID]string
	seen   map[[sha256.Size]byte]time.Time // chains verified (or refused) lately
}

func newKeyBook(roots RootSource) *keyBook {
	return &keyBook{roots: roots, byName: map[string][]*memberKey{}, byID: map[keyID]string{}, seen: map[[sha256.Size]byte]time.Time{}}
}

// learn verifies a chain (DER, leaf first) and keeps its key under the
// leaf's common name. It reports the name, whether the key is new, and why
// the chain was refused. A chain seen within recheckCert is skipped
// (name "", nothing new, no error).
func (kb *keyBook) learn(chain [][]byte, now time.Time) (string, bool, error) {
	h := sha256.New()
	for _, c := range chain {
		h.Write(binary.AppendUvarint(nil, uint64(len(c))))
		h.Write(c)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	kb.mu.Lock()
	if at, ok := kb.seen[sum]; ok && now.Sub(at) < recheckCert {
		kb.mu.Unlock()
		return "", false, nil
	}
	if len(kb.seen) >= 4*maxKeyNames {
		clear(kb.seen)
	}
	kb.seen[sum] = now
	kb.mu.Unlock()

	k, name, err := kb.verifyChain(chain, now)
	if err != nil {
		return name, false, err
	}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	return name, kb.addLocked(name, k), nil
}

// verifyChain checks that chain's leaf chains to the roots and is a dp
// certificate; it returns the leaf's key and name.
func (kb *keyBook) verifyChain(chain [][]byte, now time.Time) (*memberKey, string, error) {
	if len(chain) == 0 {
		return nil, "", errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, "", fmt.Errorf("certificate: %w", errMalformed)
		}
		certs[i] = c
	}
	leaf := certs[0]
	name, role := pki.Identify(leaf)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if kb.roots != nil {
		opts.Roots = kb.roots.Pool()
	}
	if _, err := leaf.Verify(opts); err != nil {
		return nil, name, fmt.Errorf("the certificate of %q: %w", name, errUntrusted)
	}
	if role != pki.RoleDP {
		return nil, name, fmt.Errorf("the certificate of %q has role %q, want dp: %w", name, role, errUntrusted)
	}
	if _, err := sigMax(leaf.PublicKey); err != nil {
		return nil, name, fmt.Errorf("the certificate of %q: %w", name, errUntrusted)
	}
	k := &memberKey{id: keyIDOf(leaf), pub: leaf.PublicKey, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}
	for _, c := range chain {
		k.chain = append(k.chain, slices.Clone(c))
	}
	return k, name, nil
}

// addLocked keeps k under name, newest first, at most keysPerName; it
// reports whether k was new and kept.
func (kb *keyBook) addLocked(name string, k *memberKey) bool {
	keys := kb.byName[name]
	for _, o := range keys {
		if o.id == k.id {
			return false
		}
	}
	if keys == nil && len(kb.byName) >= maxKeyNames {
		return false
	}
	keys = append([]*memberKey{k}, keys...) // on a tie, the key learnt last wins
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].notBefore.After(keys[j].notBefore) })
	kept := true
	for _, old := range keys[min(len(keys), keysPerName):] {
		delete(kb.byID, old.id)
		kept = kept && old != k
	}
	keys = keys[:min(len(keys), keysPerName)]
	kb.byName[name] = keys
	for _, o := range keys {
		kb.byID[o.id] = name
	}
	return kept
}

// addOwn keeps this node's own key, whether or not it chains to the roots.
func (kb *keyBook) addOwn(name string, id *identity) {
	k := &memberKey{id: id.key, pub: id.leaf.PublicKey, chain: id.cert.Certificate, notBefore: id.leaf.NotBefore, notAfter: id.leaf.NotAfter}
	kb.mu.Lock()
	defer kb.mu.Unlock()
	kb.addLocked(name, k)
}

// check says whether s is name's signature of a part of type typ.
func (kb *keyBook) check(typ byte, name string, s *seal, now time.Time) verdict {
	if s == nil {
		return unsigned
	}
	kb.mu.Lock()
	var k *memberKey
	for _, o := range kb.byName[name] {
		if o.id == s.Key {
			k = o
		}
	}
	owner, known := kb.byID[s.Key]
	kb.mu.Unlock()
	switch {
	case k == nil && known && owner != name:
		return forged
	case k == nil || now.After(k.notAfter):
		return unknownKey
	case !verifySig(k.pub, signedBytes(typ, name, s.Body), s.Sig):
		return forged
	}
	return verified
}

// chains returns the chains of the keys not expired, by name.
func (kb *keyBook) chains(now time.Time) [][][]byte {
	kb.mu.Lock()
	defer kb.mu.Unlock()
	names := make([]string, 0, len(kb.byName))
	for n := range kb.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	var out [][][]byte
	for _, n := range names {
		for _, k := range kb.byName[n] {
			if now.Before(k.notAfter) {
				out = append(out, k.chain)
			}
		}
	}
	return out
}

// keyHex names a key in logs (never the key itself).
func keyHex(id keyID) string { return hex.EncodeToString(id[:]) }

// kindName names a part's type in logs.
func kindName(typ byte) string {
	switch typ {
	case msgVersions:
		return "versions"
	case msgFetching:
		return "fetching"
	case msgLeave:
		return "leave"
	}
	return fmt.Sprint(typ)
}

// refreshIdentity takes Config.Identity's current certificate into use
// when it changed (at New, then every RejoinInterval): its key signs from
// now on, and its chain is broadcast. It reports whether it changed.
func (g *Gossip) refreshIdentity() bool {
	if g.cfg.Identity == nil {
		return false
	}
	c := g.cfg.Identity.Certificate()
	g.mu.Lock()
	cur := g.id
	g.mu.Unlock()
	if cur != nil && cur.cert == c {
		return false
	}
	id, err := newIdentity(c)
	if err != nil {
		g.log.Warn("cannot sign gossip with this DP's certificate; the previous one stays in use", "err", err)
		return false
	}
	if name, _ := pki.Identify(id.leaf); name != g.cfg.Name {
		g.log.Warn("this DP's certificate names another DP; members refuse its holdings", "certificate_name", name)
	}
	if _, _, err := g.trust.learn(c.Certificate, time.Now()); err != nil {
		g.log.Warn("this DP's certificate is not trusted by the CA it trusts; members refuse its holdings", "err", err)
	}
	g.trust.addOwn(g.cfg.Name, id)
	g.mu.Lock()
	g.id = id
	g.mu.Unlock()
	if b := encodeCertMsg(c.Certificate); len(b) <= g.maxMsg {
		g.queue.QueueBroadcast(newBroadcast(msgCert, g.cfg.Name, b))
	} else {
		g.log.Debug("certificate chain too long for a broadcast; push/pull carries it", "bytes", len(b), "max_bytes", g.maxMsg)
	}
	if cur != nil {
		g.log.Info("signing this DP's holdings with its new certificate", "key", keyHex(id.key))
	}
	return true
}

// signLocked signs a part of this node; nil (logged) if the key fails.
func (g *Gossip) signLocked(typ byte, body []byte) *seal {
	s, err := g.id.sign(typ, g.cfg.Name, body)
	if err != nil {
		g.log.Warn("cannot sign this DP's holdings; members will not see this change", "kind", kindName(typ), "err", err)
		return nil
	}
	return s
}

// sealSelfLocked signs this node's whole part of type typ and keeps the
// seal with it, for push/pull.
func (g *Gossip) sealSelfLocked(typ byte) *seal {
	self := g.entries[g.cfg.Name]
	var s *seal
	switch typ {
	case msgVersions:
		body, _ := appendVersionsBody(nil, self.Versions, 0)
		s = g.signLocked(typ, body)
		self.Versions.Seal = s
	case msgFetching:
		body, _ := appendFetchingBody(nil, self.Fetching, 0)
		s = g.signLocked(typ, body)
		self.Fetching.Seal = s
	case msgLeave:
		s = g.signLocked(typ, leaveBody(self.LeaveClock))
		self.LeaveSeal = s
	}
	return s
}

// announceLocked queues this node's part of type typ as a broadcast and
// returns it (nil if signing failed). With Config.Identity it is signed;
// the whole part's seal is kept for push/pull, and when the whole part
// does not fit a packet, a truncated one is signed and broadcast.
func (g *Gossip) announceLocked(typ byte) []byte {
	name := g.cfg.Name
	self := g.entries[name]
	if g.id == nil {
		switch typ {
		case msgVersions:
			g.queueVersionsLocked(name, self.Versions)
		case msgFetching:
			g.queueFetchingLocked(name, self.Fetching)
		case msgLeave:
			b := encodeLeaveMsg(name, self.LeaveClock)
			g.queue.QueueBroadcast(newBroadcast(msgLeave, name, b))
			return b
		}
		return nil
	}
	s := g.sealSelfLocked(typ)
	if s == nil {
		return nil
	}
	b := encodeSigned(typ, name, s)
	if len(b) > g.maxMsg {
		budget := g.maxMsg - signedSize(name, 0, g.id.sigMax)
		var body []byte
		switch typ {
		case msgVersions:
			body, _ = appendVersionsBody(nil, self.Versions, budget)
		case msgFetching:
			body, _ = appendFetchingBody(nil, self.Fetching, budget)
		}
		g.log.Debug("signed broadcast truncated to fit a packet; push/pull carries the rest", "kind", kindName(typ), "max_bytes", g.maxMsg)
		if s = g.signLocked(typ, body); s == nil {
			return nil
		}
		b = encodeSigned(typ, name, s)
	}
	g.queue.QueueBroadcast(newBroadcast(typ, name, b))
	return b
}

// learnChains verifies members' certificate chains and keeps their keys;
// with relay, a new one is broadcast on. Parts held back for a key now
// known are then admitted (or dropped as forged).
func (g *Gossip) learnChains(chains [][][]byte, relay bool) {
	if g.trust == nil {
		return
	}
	now := time.Now()
	added := false
	for _, c := range chains {
		name, isNew, err := g.trust.learn(c, now)
		if err != nil {
			g.dropped.Add(1)
			g.log.Warn("dropped a member's certificate", "member", name, "err", err)
			continue
		}
		if !isNew {
			continue
		}
		added = true
		g.log.Info("learnt a member's certificate", "member", name)
		if relay {
			g.queue.QueueBroadcast(newBroadcast(msgCert, name, encodeCertMsg(c)))
		}
	}
	if !added {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.releaseHeldLocked() {
		g.notifyLocked()
	}
}

// heldKey and heldPart: a part held back until its signer's key is known,
// one per member and type (the newest).
type heldKey struct {
	name string
	typ  byte
}

type heldPart struct {
	m  message
	at time.Time // when it was first held
}

// holdLocked holds m back until its key is known, replacing an older part
// of the same member and type; when maxHeld parts are held, the oldest is
// dropped.
func (g *Gossip) holdLocked(m message, now time.Time) {
	k := heldKey{m.Name, m.Type}
	if h, ok := g.held[k]; ok {
		var e entry
		e.mergePart(h.m)
		if !e.newerPart(m) {
			return
		}
		g.held[k] = heldPart{m: m, at: h.at}
		return
	}
	if len(g.held) >= maxHeld {
		var oldest heldKey
		var at time.Time
		for hk, h := range g.held {
			if at.IsZero() || h.at.Before(at) {
				oldest, at = hk, h.at
			}
		}
		delete(g.held, oldest)
		g.dropped.Add(1)
		g.log.Debug("dropped a part held back for an unknown key: too many held", "about", oldest.name, "max", maxHeld)
	}
	g.held[k] = heldPart{m: m, at: now}
	g.log.Debug("holding back a part signed by a key not known yet", "about", m.Name, "kind", kindName(m.Type), "key", keyHex(m.seal().Key))
}

// releaseHeldLocked admits the held parts whose key is now known (the
// others stay held); it reports whether any was merged.
func (g *Gossip) releaseHeldLocked() bool {
	list := make([]heldPart, 0, len(g.held))
	for k, h := range g.held {
		list = append(list, h)
		delete(g.held, k)
	}
	changed := false
	for _, h := range list {
		if g.admitLocked(h.m, nil, true) {
			changed = true
		}
		k := heldKey{h.m.Name, h.m.Type}
		if r, ok := g.held[k]; ok {
			r.at = h.at
			g.held[k] = r
		}
	}
	return changed
}

// expireHeld drops the parts held back for longer than heldTTL: their key
// never came.
func (g *Gossip) expireHeld(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, h := range g.held {
		if now.Sub(h.at) > heldTTL {
			delete(g.held, k)
			g.dropped.Add(1)
			g.log.Warn("dropped gossip signed by a key that no member's certificate has", "about", k.name, "kind", kindName(k.typ), "key", keyHex(h.m.seal().Key))
		}
	}
}
