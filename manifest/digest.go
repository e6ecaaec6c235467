package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Digest is a SHA-256 digest, the name of a blob and of a manifest in the
// repository. The zero Digest is the digest of nothing in particular; get
// one from ParseDigest or by converting sha256.Sum256's result.
type Digest [sha256.Size]byte

// ParseDigest parses a digest as the repository writes it: exactly 64
// lower-case hex characters (upper case is refused, so that one blob has one
// name). The error names the offending string and wraps ErrInvalid.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*sha256.Size {
		if len(s) > 80 {
			s = s[:80] + "..."
		}
		return d, fmt.Errorf("digest %q: want 64 hex characters: %w", s, ErrInvalid)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if '0' <= c && c <= '9' || 'a' <= c && c <= 'f' {
			continue
		}
		return d, fmt.Errorf("digest %q: character %q is not lower-case hex: %w", s, rune(c), ErrInvalid)
	}
	_, _ = hex.Decode(d[:], []byte(s)) // checked above
	return d, nil
}

// String returns d as 64 lower-case hex characters, the form ParseDigest
// accepts.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// ValidDigest reports whether s is a SHA-256 digest as written in the
// repository: exactly 64 lower-case hex characters (see ParseDigest). The
// error wraps ErrInvalid.
func ValidDigest(s string) error {
	_, err := ParseDigest(s)
	return err
}
