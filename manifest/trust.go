package manifest

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"os"
	"sort"

	"aead.dev/minisign"
)

// Trust is a set of trusted minisign public keys. A signature verifies if it
// was made by any key of the set. A Trust is immutable after construction
// and safe for concurrent use.
type Trust struct {
	keys map[uint64]minisign.PublicKey
}

// LoadTrust reads minisign public key files (the two-line .pub file, or a
// bare base64 key line) and returns the set of their keys. At least one
// path is required (ErrNoTrustedKeys).
func LoadTrust(paths ...string) (*Trust, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("trust: give at least one public key file: %w", ErrNoTrustedKeys)
	}
	contents := make([][]byte, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("trust: read public key: %w", err)
		}
		if _, err := parsePublicKey(b); err != nil {
			return nil, fmt.Errorf("trust: public key %s: %w", p, err)
		}
		contents = append(contents, b)
	}
	return NewTrust(contents...)
}

// NewTrust returns the set of the public keys given as the contents of
// minisign .pub files (or bare base64 key lines). At least one key is
// required (ErrNoTrustedKeys).
func NewTrust(pubFileContents ...[]byte) (*Trust, error) {
	if len(pubFileContents) == 0 {
		return nil, fmt.Errorf("trust: give at least one public key: %w", ErrNoTrustedKeys)
	}
	t := &Trust{keys: make(map[uint64]minisign.PublicKey, len(pubFileContents))}
	for i, b := range pubFileContents {
		k, err := parsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("trust: public key #%d: %w", i+1, err)
		}
		if old, ok := t.keys[k.ID()]; ok && !old.Equal(k) {
			return nil, fmt.Errorf("trust: two different public keys share the key ID %s: %w",
				formatKeyID(k.ID()), ErrBadKey)
		}
		t.keys[k.ID()] = k
	}
	return t, nil
}

func parsePublicKey(b []byte) (minisign.PublicKey, error) {
	raw, err := decodeKeyText(b)
	if err != nil {
		return minisign.PublicKey{}, fmt.Errorf("not a minisign public key (%v): %w", err, ErrBadKey)
	}
	if len(raw) != publicKeySize || string(raw[:2]) != sigAlgLegacy {
		return minisign.PublicKey{}, fmt.Errorf("not a minisign ed25519 public key (%d bytes): %w", len(raw), ErrBadKey)
	}
	var k minisign.PublicKey
	if err := k.UnmarshalText([]byte(base64.StdEncoding.EncodeToString(raw))); err != nil {
		return minisign.PublicKey{}, fmt.Errorf("%v: %w", err, ErrBadKey)
	}
	return k, nil
}

// KeyIDs returns the IDs of the trusted keys, sorted, as minisign prints
// them.
func (t *Trust) KeyIDs() []string {
	if t == nil {
		return nil
	}
	ids := make([]string, 0, len(t.keys))
	for id := range t.keys {
		ids = append(ids, formatKeyID(id))
	}
	sort.Strings(ids)
	return ids
}

// Verify checks that sig (the bytes of a .minisig file) is a valid
// signature of data by a trusted key, including its trusted comment. Both
// legacy ("Ed") and prehashed ("ED") signatures are accepted. Errors:
// ErrMissingSignature if sig is empty, ErrUntrustedKey if the signing key is
// not in t, ErrBadSignature if sig is malformed or does not match data.
func (t *Trust) Verify(data, sig []byte) error { return t.verify(data, sig, "document") }

func (t *Trust) verify(data, sig []byte, what string) error {
	if t == nil {
		return fmt.Errorf("verify %s: nil Trust: %w", what, ErrNoTrustedKeys)
	}
	if len(bytes.TrimSpace(sig)) == 0 {
		return fmt.Errorf("verify %s: %w", what, ErrMissingSignature)
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return fmt.Errorf("verify %s: malformed signature (%v): %w", what, err, ErrBadSignature)
	}
	k, ok := t.keys[s.KeyID]
	if !ok {
		return fmt.Errorf("verify %s: signed by key %s, trusted are %v: %w", what, formatKeyID(s.KeyID), t.KeyIDs(), ErrUntrustedKey)
	}
	if !minisign.Verify(k, data, sig) {
		return fmt.Errorf("verify %s: signature by key %s does not match the %d bytes of the document: %w",
			what, formatKeyID(s.KeyID), len(data), ErrBadSignature)
	}
	return nil
}

// VerifyLatest verifies sig over data, then parses and validates data as a
// latest.json document.
func (t *Trust) VerifyLatest(data, sig []byte) (*Latest, error) {
	if err := t.verify(data, sig, LatestName); err != nil {
		return nil, err
	}
	return ParseLatest(data)
}

// VerifyManifest verifies sig over data, then parses and validates data as
// a manifest.json document. If latest is not nil, it also checks that data
// is the manifest latest points at: its SHA-256 is latest.ManifestSHA256,
// product and version are equal, and the manifest's serial is not above
// latest's (ErrMismatch otherwise).
//
// The serials may differ: a manifest's serial is the one its version was
// first published under, and Resign publishes the same version again under
// a higher serial with a new latest.json that pins the unchanged manifest
// by its digest. The digest is what binds the pair.
func (t *Trust) VerifyManifest(data, sig []byte, latest *Latest) (*Manifest, error) {
	if err := t.verify(data, sig, ManifestName); err != nil {
		return nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, err
	}
	if latest == nil {
		return m, nil
	}
	if err := latest.Names(m, SHA256Hex(data)); err != nil {
		return nil, err
	}
	return m, nil
}

// Names checks that m, whose document has the SHA-256 sha (hex), is the
// manifest l points at: sha is l.ManifestSHA256, product and version are
// equal, and m's serial is not above l's (ErrMismatch otherwise; see
// VerifyManifest). A caller that verified a manifest once and meets it
// again beside another latest.json (dpcache loadtest) checks only this.
func (l *Latest) Names(m *Manifest, sha string) error {
	if subtle.ConstantTimeCompare([]byte(sha), []byte(l.ManifestSHA256)) != 1 {
		return fmt.Errorf("%s of %s %s has sha256 %s, %s says %s: %w",
			ManifestName, m.Product, m.Version, sha, LatestName, l.ManifestSHA256, ErrMismatch)
	}
	if m.Product != l.Product || m.Version != l.Version || m.Serial > l.Serial {
		return fmt.Errorf("%s is %s %s serial %d, %s says %s %s serial %d: %w",
			ManifestName, m.Product, m.Version, m.Serial, LatestName, l.Product, l.Version, l.Serial, ErrMismatch)
	}
	return nil
}
