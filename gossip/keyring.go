package gossip

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/memberlist"
)

// MaxKeyFileSize bounds a key file: a few hundred keys fit, and a file
// given by mistake (a log, a binary) is refused before it is read whole.
const MaxKeyFileSize = 64 << 10

// makeKeyHint ends the errors about a key: how to make a good one.
const makeKeyHint = "make a key with: head -c 32 /dev/urandom | base64"

// ReadKeyFile reads a key file of at most MaxKeyFileSize bytes and parses
// it with ParseKeyFile. Its errors name the file and wrap ErrKeyFile (or
// the error of opening or reading it).
func ReadKeyFile(file string) ([][]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("gossip key file %s: %w", file, err)
	}
	return ParseKeyFile(file, data)
}

// ParseKeyFile parses the contents of a key file; name (the file's path)
// is used only in errors. The file holds one key per line, base64
// (standard, padded, as `base64` prints it) of 16, 24 or 32 bytes
// (AES-128, -192, -256). Blank lines, lines starting with '#' and text
// after a '#' are ignored, as are spaces and a CRLF's CR around a key. A
// key given twice counts once, at its first line.
//
// It returns the keys in file order, the first being the one that
// encrypts (Gossip.SetKeys), or an error wrapping ErrKeyFile that names
// the file and, for a bad key, its line, and never quotes the line (it may
// hold a key). data longer than MaxKeyFileSize is refused.
func ParseKeyFile(name string, data []byte) ([][]byte, error) {
	if len(data) > MaxKeyFileSize {
		return nil, fmt.Errorf("%w %s: larger than %d bytes; is it the right file?", ErrKeyFile, name, MaxKeyFileSize)
	}
	data = bytes.TrimPrefix(data, []byte("\ufeff")) // a BOM some editors write
	var keys [][]byte
	for i, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w %s, line %d: "+format+"; "+makeKeyHint, append([]any{ErrKeyFile, name, i + 1}, args...)...)
		}
		key, err := base64.StdEncoding.Strict().DecodeString(line)
		if err != nil {
			return nil, bad("not a base64 key")
		}
		if err := memberlist.ValidateKey(key); err != nil {
			return nil, bad("a key of %d bytes; want 16, 24 or 32", len(key))
		}
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) }) {
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w %s: no key; put one base64 key per line (%s)", ErrKeyFile, name, makeKeyHint)
	}
	return keys, nil
}

// KeyFingerprint names key in logs without revealing it: the first 8 hex
// digits of its SHA-256.
func KeyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:4])
}

// fingerprints returns the fingerprints of keys, in order.
func fingerprints(keys [][]byte) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = KeyFingerprint(k)
	}
	return out
}

// validateKeys checks a keyring: at least one key, each of 16, 24 or 32
// bytes.
func validateKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return fmt.Errorf("no key")
	}
	for i, k := range keys {
		if memberlist.ValidateKey(k) != nil {
			return fmt.Errorf("key %d is %d bytes; use 16, 24 or 32 bytes (AES-128, -192, -256)", i, len(k))
		}
	}
	return nil
}

// SetKeys makes the keyring of a running Gossip hold exactly keys, keys[0]
// encrypting and every key decrypting, without leaving the cluster: it adds
// the new keys first, then makes keys[0] the primary, and only then removes
// the keys no longer listed, so no step drops a key still in use. A key
// rotation is three calls on every DP, each done on all DPs before the
// next: add the new key (second), move it first, remove the old one.
//
// It logs what changed by fingerprint (KeyFingerprint), never the keys. It
// returns ErrInvalidConfig for an empty list or a key of a bad size, and
// ErrNotEncrypted if the Gossip was created without keys (encryption is
// turned on or off only by a restart). Safe for concurrent use; calls are
// serialized.
func (g *Gossip) SetKeys(keys [][]byte) error {
	if err := validateKeys(keys); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if g.keyring == nil {
		return ErrNotEncrypted
	}
	g.keyMu.Lock()
	defer g.keyMu.Unlock()
	ring := g.keyring
	has := func(set [][]byte, k []byte) bool {
		return slices.ContainsFunc(set, func(x []byte) bool { return bytes.Equal(x, k) })
	}

	oldPrimary := slices.Clone(ring.GetPrimaryKey())
	var added, removed [][]byte
	for _, k := range keys {
		if !has(ring.GetKeys(), k) && !has(added, k) {
			if err := ring.AddKey(slices.Clone(k)); err != nil {
				return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
			}
			added = append(added, k)
		}
	}
	if !bytes.Equal(oldPrimary, keys[0]) {
		if err := ring.UseKey(keys[0]); err != nil {
			return fmt.Errorf("gossip keyring: use the first key: %w", err)
		}
	}
	// From the last key back: memberlist's RemoveKey shifts the keys after
	// the one removed in place, under the eyes of a packet being decrypted
	// with the old list; the last key has none after it, and in a rotation
	// the old key is last once the new one is first.
	cur := slices.Clone(ring.GetKeys())
	for i := len(cur) - 1; i > 0; i-- {
		if !has(keys, cur[i]) {
			if err := ring.RemoveKey(cur[i]); err != nil {
				return fmt.Errorf("gossip keyring: remove a key: %w", err)
			}
			removed = append(removed, cur[i])
		}
	}

	primary := ring.GetPrimaryKey()
	if len(added) == 0 && len(removed) == 0 && bytes.Equal(oldPrimary, primary) {
		g.log.Debug("gossip keys unchanged", "keys", len(keys), "primary", KeyFingerprint(primary))
		return nil
	}
	g.log.Info("gossip keys changed", "primary", KeyFingerprint(primary),
		"previous_primary", KeyFingerprint(oldPrimary),
		"added", fingerprints(added), "removed", fingerprints(removed), "keys", len(ring.GetKeys()))
	return nil
}

// KeyFingerprints returns the fingerprints (KeyFingerprint) of the keys
// gossip decrypts with, the one it encrypts with first; nil when gossip is
// not encrypted.
func (g *Gossip) KeyFingerprints() []string {
	if g.keyring == nil {
		return nil
	}
	g.keyMu.Lock()
	defer g.keyMu.Unlock()
	return fingerprints(g.keyring.GetKeys())
}
