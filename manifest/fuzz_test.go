package manifest

import (
	"errors"
	"testing"
)

// FuzzParseLatest: any bytes either parse into a valid Latest that
// re-encodes to one that parses again, or fail with ErrInvalid; never a
// panic.
func FuzzParseLatest(f *testing.F) {
	m := validManifest()
	data, _ := m.Marshal()
	l := NewLatest(m, data)
	good, _ := l.Marshal()
	f.Add(good)
	f.Add([]byte(`{"product":"p","version":"v","serial":1,"manifest_sha256":"` + digestA + `","published":"2026-01-01T00:00:00Z","expires":"2025-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"product":"..","version":"v","serial":0}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ParseLatest(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if ValidName(l.Product) != nil || ValidName(l.Version) != nil || l.Serial == 0 {
			t.Fatalf("accepted an invalid latest.json: %+v", l)
		}
		again, err := l.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseLatest(again); err != nil {
			t.Fatalf("re-encoded latest.json invalid: %v", err)
		}
	})
}

// FuzzParseKeys: secret and public key files from disk or a user never
// panic the parsers; a parsed secret key signs what its public key
// verifies.
func FuzzParseKeys(f *testing.F) {
	k, pub, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	sec, err := k.MarshalSecretKey()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sec)
	f.Add(pub)
	f.Add([]byte("untrusted comment: x\nRWQ="))
	f.Add([]byte("untrusted comment: no key"))
	f.Fuzz(func(t *testing.T, text []byte) {
		if k, err := ParsePrivateKey(text); err == nil {
			trust, err := NewTrust(k.PublicKeyFile())
			if err != nil {
				t.Fatalf("the public half of a parsed key does not load: %v", err)
			}
			sig, err := k.Sign([]byte("doc"))
			if err != nil {
				t.Fatal(err)
			}
			if err := trust.Verify([]byte("doc"), sig); err != nil {
				t.Fatalf("a parsed key's signature does not verify: %v", err)
			}
		}
		NewTrust(text) //nolint:errcheck // only: no panic
	})
}

// FuzzVerify: any signature bytes for any document either verify with the
// trusted key or fail with a signature error; never a panic.
func FuzzVerify(f *testing.F) {
	k, pub, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	trust, err := NewTrust(pub)
	if err != nil {
		f.Fatal(err)
	}
	doc := []byte(`{"product":"p"}`)
	sig, err := k.SignFile(doc, LatestName)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(doc, sig)
	f.Add(doc, []byte("untrusted comment: x\nRWQ=\ntrusted comment: y\nAAAA"))
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, data, sig []byte) {
		err := trust.Verify(data, sig)
		if err != nil && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUntrustedKey) && !errors.Is(err, ErrMissingSignature) {
			t.Fatalf("Verify error %v is none of the signature errors", err)
		}
	})
}
