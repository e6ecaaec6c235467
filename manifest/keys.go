package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"aead.dev/minisign"
	"golang.org/x/crypto/blake2b"
)

// minisign secret key layout (base64 on the line after the untrusted comment):
//
//	sig_alg "Ed" | kdf_alg ("\0\0" none, "Sc" scrypt) | chk_alg "B2" |
//	kdf_salt[32] | kdf_opslimit[8] | kdf_memlimit[8] |
//	keynum[8] | ed25519 sk[64] | chk[32] = BLAKE2b-256(sig_alg|keynum|sk)
const (
	secretKeySize   = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32
	offKeynum       = 54
	offSecret       = offKeynum + 8
	offChecksum     = offSecret + 64
	publicKeySize   = 2 + 8 + ed25519.PublicKeySize
	kdfNone         = "\x00\x00"
	kdfScrypt       = "Sc"
	chkBlake2b      = "B2"
	sigAlgLegacy    = "Ed"
	secretKeyHeader = "untrusted comment: minisign encrypted secret key\n"
)

// PrivateKey is an unencrypted minisign secret key, used to sign repository
// documents. The zero value is not usable (Sign returns ErrBadKey). A
// PrivateKey is immutable and safe for concurrent use.
type PrivateKey struct {
	key minisign.PrivateKey
	sk  ed25519.PrivateKey // never modified after construction
	id  uint64
	ok  bool
}

// GenerateKeyFiles creates a new key pair and writes NAME.key (the secret
// key, unencrypted like `minisign -G -W`, mode 0600) and NAME.pub (the
// public key, mode 0644) in minisign format. It refuses to overwrite either
// file (the error wraps fs.ErrExist) and leaves no partial pair behind.
func GenerateKeyFiles(name string) error {
	keyPath, pubPath := name+".key", name+".pub"
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("keygen: %s already exists, refusing to overwrite it: %w", p, fs.ErrExist)
		}
	}
	k, pubFile, err := GenerateKey()
	if err != nil {
		return err
	}
	secret, err := k.MarshalSecretKey()
	if err != nil {
		return err
	}
	if err := WriteNewFile(keyPath, secret, 0o600); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := WriteNewFile(pubPath, pubFile, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return fmt.Errorf("keygen: %w", err)
	}
	return nil
}

// GenerateKey creates a new key pair in memory and returns the private key
// and the contents of its minisign public key file (two lines: an untrusted
// comment and the base64 key). Tests and tools that keep keys elsewhere use
// it; GenerateKeyFiles writes both to disk.
func GenerateKey() (PrivateKey, []byte, error) {
	_, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return PrivateKey{}, nil, fmt.Errorf("generate key: %w", err)
	}
	var idb [8]byte
	if _, err := io.ReadFull(rand.Reader, idb[:]); err != nil {
		return PrivateKey{}, nil, fmt.Errorf("generate key id: %w", err)
	}
	k, err := newPrivateKey(binary.LittleEndian.Uint64(idb[:]), sk)
	if err != nil {
		return PrivateKey{}, nil, err
	}
	return k, k.PublicKeyFile(), nil
}

func newPrivateKey(id uint64, sk ed25519.PrivateKey) (PrivateKey, error) {
	raw := rawSecretKey(id, sk)
	var mk minisign.PrivateKey
	if err := mk.UnmarshalText(encodeSecretKey(raw)); err != nil {
		return PrivateKey{}, fmt.Errorf("%v: %w", err, ErrBadKey)
	}
	return PrivateKey{key: mk, sk: bytes.Clone(sk), id: id, ok: true}, nil
}

// rawSecretKey builds the unencrypted minisign secret key structure. The
// checksum is filled in as minisign computes it for encrypted keys; minisign
// 0.11's -W writes zeros there and does not check it for unencrypted keys,
// and LoadPrivateKey accepts both.
func rawSecretKey(id uint64, sk ed25519.PrivateKey) []byte {
	b := make([]byte, secretKeySize)
	copy(b[0:], sigAlgLegacy)
	copy(b[2:], kdfNone)
	copy(b[4:], chkBlake2b)
	binary.LittleEndian.PutUint64(b[offKeynum:], id)
	copy(b[offSecret:], sk)
	sum := secretKeyChecksum(b)
	copy(b[offChecksum:], sum[:])
	return b
}

func secretKeyChecksum(raw []byte) [32]byte {
	h, _ := blake2b.New256(nil)
	h.Write(raw[0:2])
	h.Write(raw[offKeynum:offChecksum])
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func encodeSecretKey(raw []byte) []byte {
	out := []byte(secretKeyHeader)
	out = base64.StdEncoding.AppendEncode(out, raw)
	return append(out, '\n')
}

// MarshalSecretKey returns the minisign secret key file for k, unencrypted
// (as `minisign -G -W` writes it). Keep it secret.
func (k PrivateKey) MarshalSecretKey() ([]byte, error) {
	if !k.ok {
		return nil, fmt.Errorf("zero PrivateKey: %w", ErrBadKey)
	}
	return encodeSecretKey(rawSecretKey(k.id, k.sk)), nil
}

// LoadPrivateKey reads an unencrypted minisign secret key file (written by
// GenerateKeyFiles, `dpcache keygen` or `minisign -G -W`). A
// password-protected key is refused with ErrEncryptedKey; a malformed one
// with ErrBadKey.
func LoadPrivateKey(path string) (PrivateKey, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("read secret key: %w", err)
	}
	k, err := ParsePrivateKey(text)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("secret key %s: %w", path, err)
	}
	return k, nil
}

// ParsePrivateKey parses the contents of an unencrypted minisign secret key
// file; see LoadPrivateKey.
func ParsePrivateKey(text []byte) (PrivateKey, error) {
	raw, err := decodeKeyText(text)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("not a minisign secret key (%v): %w", err, ErrBadKey)
	}
	if len(raw) != secretKeySize {
		return PrivateKey{}, fmt.Errorf("not a minisign secret key (%d bytes, want %d): %w", len(raw), secretKeySize, ErrBadKey)
	}
	if string(raw[0:2]) != sigAlgLegacy {
		return PrivateKey{}, fmt.Errorf("unsupported signature algorithm %q: %w", raw[0:2], ErrBadKey)
	}
	switch string(raw[2:4]) {
	case kdfNone:
	case kdfScrypt:
		return PrivateKey{}, fmt.Errorf("the key is password-protected; dpcache signs unattended and needs an unencrypted key (create one with `dpcache keygen` or `minisign -G -W`): %w", ErrEncryptedKey)
	default:
		return PrivateKey{}, fmt.Errorf("unsupported key derivation %q: %w", raw[2:4], ErrBadKey)
	}
	if string(raw[4:6]) != chkBlake2b {
		return PrivateKey{}, fmt.Errorf("unsupported checksum algorithm %q: %w", raw[4:6], ErrBadKey)
	}
	chk := raw[offChecksum:]
	if !bytes.Equal(chk, make([]byte, 32)) { // minisign 0.11 -W leaves it zero
		sum := secretKeyChecksum(raw)
		if subtle.ConstantTimeCompare(sum[:], chk) != 1 {
			return PrivateKey{}, fmt.Errorf("checksum mismatch (corrupted key): %w", ErrBadKey)
		}
	}
	sk := ed25519.PrivateKey(bytes.Clone(raw[offSecret:offChecksum]))
	derived := ed25519.NewKeyFromSeed(sk.Seed())
	if subtle.ConstantTimeCompare(derived, sk) != 1 {
		return PrivateKey{}, fmt.Errorf("public half does not match the secret seed (corrupted key): %w", ErrBadKey)
	}
	return newPrivateKey(binary.LittleEndian.Uint64(raw[offKeynum:]), sk)
}

// decodeKeyText strips an optional "untrusted comment:" line and decodes
// the base64 key line.
func decodeKeyText(text []byte) ([]byte, error) {
	s := strings.TrimSpace(string(text))
	if strings.HasPrefix(s, "untrusted comment:") {
		_, rest, ok := strings.Cut(s, "\n")
		if !ok {
			return nil, errors.New("no key after the comment line")
		}
		s = strings.TrimSpace(rest)
	}
	if line, _, _ := strings.Cut(s, "\n"); line != s {
		s = strings.TrimSpace(line)
	}
	return base64.StdEncoding.DecodeString(s)
}

// KeyID returns the key ID as minisign prints it (upper-case hex, without
// leading zeros), shared by the private and the public key.
func (k PrivateKey) KeyID() string { return formatKeyID(k.id) }

func formatKeyID(id uint64) string {
	return strings.ToUpper(strconv.FormatUint(id, 16))
}

// PublicKeyFile returns the contents of the minisign public key file (.pub)
// matching k, as `minisign -G` writes it. It returns nil for the zero key.
func (k PrivateKey) PublicKeyFile() []byte {
	if !k.ok {
		return nil
	}
	raw := make([]byte, publicKeySize)
	copy(raw, sigAlgLegacy)
	binary.LittleEndian.PutUint64(raw[2:], k.id)
	copy(raw[10:], k.sk.Public().(ed25519.PublicKey))
	out := []byte("untrusted comment: minisign public key " + k.KeyID() + "\n")
	out = base64.StdEncoding.AppendEncode(out, raw)
	return append(out, '\n')
}

// Sign signs data and returns the complete .minisig file, a prehashed
// ("ED") minisign signature as `minisign -S` makes by default, with the
// trusted comment "timestamp:<unix>". It is verifiable by
// `minisign -Vm FILE -p NAME.pub` and by Trust.Verify.
func (k PrivateKey) Sign(data []byte) ([]byte, error) { return k.SignFile(data, "") }

// SignFile is Sign with the signed file's base name in the trusted comment,
// "timestamp:<unix>\tfile:<name>\thashed", exactly as minisign writes it.
// An empty name leaves the file part out.
func (k PrivateKey) SignFile(data []byte, name string) ([]byte, error) {
	if !k.ok {
		return nil, fmt.Errorf("sign with a zero PrivateKey: %w", ErrBadKey)
	}
	if strings.ContainsAny(name, "\r\n") {
		return nil, fmt.Errorf("sign: file name %q contains a line break: %w", name, ErrInvalid)
	}
	trusted := "timestamp:" + strconv.FormatInt(time.Now().Unix(), 10)
	if name != "" {
		trusted += "\tfile:" + name + "\thashed"
	}
	r := minisign.NewReader(bytes.NewReader(data))
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return r.SignWithComments(k.key, trusted, "signature from minisign secret key"), nil
}
