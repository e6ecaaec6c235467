package manifest

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

func TestParseDigest(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte("x"))
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"lower hex", digestA, true},
		{"real", Digest(sum).String(), true},
		{"upper hex", strings.ToUpper(digestA), false},
		{"63", digestA[:63], false},
		{"65", digestA + "a", false},
		{"empty", "", false},
		{"not hex", strings.Repeat("g", 64), false},
		{"space", " " + digestA[1:], false},
		{"path", "../" + digestA[3:], false},
		{"huge", strings.Repeat("a", 1<<16), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := ParseDigest(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseDigest(%.80q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				if len(err.Error()) > 200 {
					t.Fatalf("error is %d bytes long, want one short line", len(err.Error()))
				}
				if ValidDigest(tt.in) == nil {
					t.Fatalf("ValidDigest(%.80q) accepts what ParseDigest refuses", tt.in)
				}
				return
			}
			if d.String() != tt.in {
				t.Fatalf("String() = %q, want %q", d, tt.in)
			}
		})
	}
}

func TestDigest_String(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte("abc"))
	if got, want := Digest(sum).String(), SHA256Hex([]byte("abc")); got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

// FuzzParseDigest checks that ParseDigest accepts exactly the strings
// String produces, and that they round-trip.
func FuzzParseDigest(f *testing.F) {
	f.Add(digestA)
	f.Add(strings.ToUpper(digestB))
	f.Add(digestA[:63] + "g")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if strings.ContainsRune(err.Error(), '\n') {
				t.Fatalf("error %q is more than one line", err)
			}
			return
		}
		if d.String() != s {
			t.Fatalf("ParseDigest(%q).String() = %q", s, d)
		}
		if strings.Trim(s, "0123456789abcdef") != "" || len(s) != 64 {
			t.Fatalf("accepted %q", s)
		}
	})
}

// FuzzValidName checks ValidName against the rule written in
// docs/design.md: 1 to 128 of [A-Za-z0-9._-], not "." or "..".
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"kes", ".", "..", "...", "a/b", strings.Repeat("v", 129), "é", ""} {
		f.Add(s)
	}
	const allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
	f.Fuzz(func(t *testing.T, s string) {
		err := ValidName(s)
		want := len(s) >= 1 && len(s) <= MaxNameLen && s != "." && s != ".." && strings.Trim(s, allowed) == ""
		if (err == nil) != want {
			t.Fatalf("ValidName(%q) = %v, want ok=%v", s, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v does not wrap ErrInvalid", err)
		}
		if err != nil && strings.ContainsRune(err.Error(), '\n') {
			t.Fatalf("error %q is more than one line", err)
		}
	})
}
