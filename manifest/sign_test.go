package manifest

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/dpcache/dpcache/e2e/testenv"
)

func newKey(t testing.TB) (PrivateKey, *Trust) {
	t.Helper()
	k, pub, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrust(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k, tr
}

func TestTrust_Verify(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	other, _ := newKey(t)
	data := []byte(`{"hello":"world"}`)
	sig, err := k.SignFile(data, "latest.json")
	if err != nil {
		t.Fatal(err)
	}
	otherSig, err := other.Sign(data)
	if err != nil {
		t.Fatal(err)
	}
	legacySig := minisign.SignWithComments(k.key, data, "timestamp:1", "legacy")
	for s, alg := range map[string]uint16{string(legacySig): minisign.EdDSA, string(sig): minisign.HashEdDSA} {
		var ps minisign.Signature
		if err := ps.UnmarshalText([]byte(s)); err != nil || ps.Algorithm != alg {
			t.Fatalf("test setup: want algorithm %x (%v):\n%s", alg, err, s)
		}
	}
	tamperedComment := bytes.Replace(sig, []byte("trusted comment: timestamp:"), []byte("trusted comment: timestamp:9"), 1)
	flip := bytes.Clone(data)
	flip[3] ^= 1

	tests := []struct {
		name      string
		data, sig []byte
		want      error
	}{
		{"ok prehashed", data, sig, nil},
		{"ok legacy", data, legacySig, nil},
		{"ok CRLF", data, bytes.ReplaceAll(sig, []byte("\n"), []byte("\r\n")), nil},
		{"missing", data, nil, ErrMissingSignature},
		{"blank", data, []byte("\n \n"), ErrMissingSignature},
		{"wrong key", data, otherSig, ErrUntrustedKey},
		{"tampered data", flip, sig, ErrBadSignature},
		{"truncated data", data[:len(data)-1], sig, ErrBadSignature},
		{"extra data", append(bytes.Clone(data), '\n'), sig, ErrBadSignature},
		{"legacy tampered", flip, legacySig, ErrBadSignature},
		{"tampered trusted comment", data, tamperedComment, ErrBadSignature},
		{"garbage sig", data, []byte("not a signature"), ErrBadSignature},
		{"truncated sig", data, sig[:len(sig)/2], ErrBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tr.Verify(tt.data, tt.sig)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestTrust_MultipleKeys(t *testing.T) {
	t.Parallel()
	k1, pub1, _ := GenerateKey()
	k2, pub2, _ := GenerateKey()
	// A bare base64 key line is accepted too.
	bare := bytes.SplitN(pub2, []byte("\n"), 2)[1]
	tr, err := NewTrust(pub1, bare)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(tr.KeyIDs()); got != 2 {
		t.Fatalf("KeyIDs = %v", tr.KeyIDs())
	}
	for _, k := range []PrivateKey{k1, k2} {
		sig, _ := k.Sign([]byte("x"))
		if err := tr.Verify([]byte("x"), sig); err != nil {
			t.Errorf("key %s: %v", k.KeyID(), err)
		}
	}
	if _, err := NewTrust(); !errors.Is(err, ErrNoTrustedKeys) {
		t.Errorf("NewTrust() = %v, want ErrNoTrustedKeys", err)
	}
	if _, err := LoadTrust(); !errors.Is(err, ErrNoTrustedKeys) {
		t.Errorf("LoadTrust() = %v, want ErrNoTrustedKeys", err)
	}
	if _, err := NewTrust([]byte("untrusted comment: x\nnot base64!")); !errors.Is(err, ErrBadKey) {
		t.Errorf("garbage key: %v, want ErrBadKey", err)
	}
	if _, err := LoadTrust(filepath.Join(t.TempDir(), "missing.pub")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key file: %v, want ErrNotExist", err)
	}
}

func TestVerifyLatestAndManifest(t *testing.T) {
	t.Parallel()
	k, tr := newKey(t)
	m := validManifest()
	mdata, _ := m.Marshal()
	msig, _ := k.Sign(mdata)
	l := NewLatest(m, mdata)
	ldata, _ := l.Marshal()
	lsig, _ := k.Sign(ldata)

	gotL, err := tr.VerifyLatest(ldata, lsig)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.VerifyManifest(mdata, msig, gotL); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.VerifyManifest(mdata, msig, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.VerifyLatest(ldata, msig); !errors.Is(err, ErrBadSignature) {
		t.Errorf("latest with manifest's signature: %v", err)
	}

	// A validly signed manifest that latest does not point at.
	m2 := validManifest()
	m2.Serial = 8
	m2data, _ := m2.Marshal()
	m2sig, _ := k.Sign(m2data)
	if _, err := tr.VerifyManifest(m2data, m2sig, gotL); !errors.Is(err, ErrMismatch) {
		t.Errorf("other manifest: %v, want ErrMismatch", err)
	}
	// Same digest but a latest that lies about the version.
	lie := *gotL
	lie.Version = "other"
	if _, err := tr.VerifyManifest(mdata, msig, &lie); !errors.Is(err, ErrMismatch) {
		t.Errorf("lying latest: %v, want ErrMismatch", err)
	}
	// A latest.json re-signed under a higher serial still pins the same
	// manifest (Resign); one below the manifest's serial does not.
	resigned := *gotL
	resigned.Serial = m.Serial + 3
	if _, err := tr.VerifyManifest(mdata, msig, &resigned); err != nil {
		t.Errorf("latest re-signed under a higher serial: %v, want the manifest", err)
	}
	lower := *gotL
	lower.Serial = m.Serial - 1
	if _, err := tr.VerifyManifest(mdata, msig, &lower); !errors.Is(err, ErrMismatch) {
		t.Errorf("latest below the manifest's serial: %v, want ErrMismatch", err)
	}
	// Signed but invalid content.
	bad := []byte(`{"product":"../x"}`)
	badSig, _ := k.Sign(bad)
	if _, err := tr.VerifyManifest(bad, badSig, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("signed invalid manifest: %v, want ErrInvalid", err)
	}
}

func TestGenerateKeyFiles(t *testing.T) {
	t.Parallel()
	name := filepath.Join(t.TempDir(), "vendor")
	if err := GenerateKeyFiles(name); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(name + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", fi.Mode().Perm())
	}
	k, err := LoadPrivateKey(name + ".key")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(name + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pub, k.PublicKeyFile()) {
		t.Errorf(".pub file differs from the loaded key's:\n%s\n%s", pub, k.PublicKeyFile())
	}
	if !strings.Contains(string(pub), k.KeyID()) {
		t.Errorf(".pub comment does not name key ID %s", k.KeyID())
	}
	tr, err := LoadTrust(name + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := k.Sign([]byte("data"))
	if err := tr.Verify([]byte("data"), sig); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(name + ".key")
	if err := GenerateKeyFiles(name); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second GenerateKeyFiles = %v, want ErrExist", err)
	}
	after, _ := os.ReadFile(name + ".key")
	if !bytes.Equal(before, after) {
		t.Fatal("existing key was overwritten")
	}
	// Only the .pub exists: still refused, and no .key is left behind.
	name2 := filepath.Join(t.TempDir(), "half")
	if err := os.WriteFile(name2+".pub", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := GenerateKeyFiles(name2); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("GenerateKeyFiles over a .pub = %v, want ErrExist", err)
	}
	if _, err := os.Stat(name2 + ".key"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf(".key was created: %v", err)
	}
}

func TestParsePrivateKey_Bad(t *testing.T) {
	t.Parallel()
	k, _, _ := GenerateKey()
	good, _ := k.MarshalSecretKey()
	raw, err := decodeKeyText(good)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(mut func(b []byte)) []byte {
		b := bytes.Clone(raw)
		mut(b)
		return encodeSecretKey(b)
	}
	tests := []struct {
		name string
		text []byte
		want error
	}{
		{"encrypted", enc(func(b []byte) { copy(b[2:], "Sc") }), ErrEncryptedKey},
		{"bad checksum", enc(func(b []byte) { b[offChecksum] ^= 1 }), ErrBadKey},
		{"corrupted secret", enc(func(b []byte) { b[offSecret+40] ^= 1 }), ErrBadKey},
		{"bad alg", enc(func(b []byte) { copy(b, "XX") }), ErrBadKey},
		{"bad kdf", enc(func(b []byte) { copy(b[2:], "ZZ") }), ErrBadKey},
		{"short", []byte("untrusted comment: x\n" + base64.StdEncoding.EncodeToString(raw[:100])), ErrBadKey},
		{"garbage", []byte("hello"), ErrBadKey},
		{"empty", nil, ErrBadKey},
		{"comment only", []byte("untrusted comment: minisign encrypted secret key"), ErrBadKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := ParsePrivateKey(tt.text); !errors.Is(err, tt.want) {
				t.Fatalf("ParsePrivateKey = %v, want %v", err, tt.want)
			}
		})
	}
	// minisign 0.11 -W writes a zero checksum: accepted.
	zero := enc(func(b []byte) { clear(b[offChecksum:]) })
	if _, err := ParsePrivateKey(zero); err != nil {
		t.Fatalf("zero checksum: %v", err)
	}
	var zk PrivateKey
	if _, err := zk.Sign([]byte("x")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("zero key Sign = %v, want ErrBadKey", err)
	}
}

// requireMinisign returns the path of the minisign binary, skipping the test
// when it is missing (failing instead when the CI variable is set).
func requireMinisign(t *testing.T) string {
	t.Helper()
	return testenv.RequireBinary(t, "minisign")
}

func runMinisign(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader("") // a password prompt would fail, not hang
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("minisign %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestMinisignInterop_OurKeyTheirTool(t *testing.T) {
	t.Parallel()
	bin := requireMinisign(t)
	dir := t.TempDir()
	name := filepath.Join(dir, "ours")
	if err := GenerateKeyFiles(name); err != nil {
		t.Fatal(err)
	}
	k, err := LoadPrivateKey(name + ".key")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := LoadTrust(name + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	msg := filepath.Join(dir, "manifest.json")
	data := []byte(`{"product":"kes"}` + "\n")
	if err := os.WriteFile(msg, data, 0o644); err != nil {
		t.Fatal(err)
	}

	// Our signature, their verification.
	sig, err := k.SignFile(data, "manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(msg+".minisig", sig, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runMinisign(t, bin, "-Vm", msg, "-p", name+".pub")
	if !strings.Contains(out, "file:manifest.json") {
		t.Errorf("minisign -V output lacks our trusted comment:\n%s", out)
	}
	runMinisign(t, bin, "-V", "-H", "-m", msg, "-p", name+".pub") // prehashed

	// Their signature with our key file (no password prompt), our verification.
	for _, legacy := range []bool{false, true} {
		args := []string{"-S", "-s", name + ".key", "-m", msg, "-x", msg + ".theirs"}
		if legacy {
			args = append(args, "-l")
		}
		runMinisign(t, bin, args...)
		theirs, err := os.ReadFile(msg + ".theirs")
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Verify(data, theirs); err != nil {
			t.Errorf("legacy=%v: verify minisign's signature: %v", legacy, err)
		}
		if err := tr.Verify(append(bytes.Clone(data), 'x'), theirs); !errors.Is(err, ErrBadSignature) {
			t.Errorf("legacy=%v: tampered: %v, want ErrBadSignature", legacy, err)
		}
		_ = os.Remove(msg + ".theirs")
	}

	// minisign derives the same public key from our secret key file.
	runMinisign(t, bin, "-R", "-s", name+".key", "-p", filepath.Join(dir, "recreated.pub"))
	recreated, err := os.ReadFile(filepath.Join(dir, "recreated.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(recreated)), strings.Fields(string(k.PublicKeyFile())); got[len(got)-1] != want[len(want)-1] {
		t.Errorf("minisign -R gives %s, we wrote %s", got[len(got)-1], want[len(want)-1])
	}
}

func TestMinisignInterop_TheirKeyOurCode(t *testing.T) {
	t.Parallel()
	bin := requireMinisign(t)
	dir := t.TempDir()
	pub, key := filepath.Join(dir, "v.pub"), filepath.Join(dir, "v.key")
	runMinisign(t, bin, "-G", "-W", "-p", pub, "-s", key)
	k, err := LoadPrivateKey(key)
	if err != nil {
		t.Fatalf("load minisign -G -W key: %v", err)
	}
	tr, err := LoadTrust(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubText, _ := os.ReadFile(pub)
	if !bytes.Equal(bytes.TrimSpace(pubText), bytes.TrimSpace(k.PublicKeyFile())) {
		t.Errorf("our PublicKeyFile differs from minisign's:\n%s\n%s", k.PublicKeyFile(), pubText)
	}
	msg := filepath.Join(dir, "latest.json")
	data := []byte("{}\n")
	if err := os.WriteFile(msg, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runMinisign(t, bin, "-S", "-s", key, "-m", msg)
	theirs, _ := os.ReadFile(msg + ".minisig")
	if err := tr.Verify(data, theirs); err != nil {
		t.Fatalf("verify minisign's signature: %v", err)
	}
	sig, err := k.Sign(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(msg+".minisig", sig, 0o644); err != nil {
		t.Fatal(err)
	}
	runMinisign(t, bin, "-Vm", msg, "-p", pub)
}
