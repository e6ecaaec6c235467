package source_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/source"
)

// FuzzParse: any source URL from a flag or a config file either parses or
// fails with ErrBadURL; a parsed source's name never shows a password.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"http://127.0.0.1:8080/", "https://user:secretpw@updates.example.com/av/", "ftp://u:secretpw@[::1]:21/repo/",
		"file:///srv/repo", "/srv/repo", "grpc://127.0.0.1:7340", "grpcs://dp:7340", "http://", "gopher://x", "http://h/%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := source.Parse(raw, source.Options{})
		if err != nil {
			if !errors.Is(err, source.ErrBadURL) && !errors.Is(err, source.ErrBadOptions) {
				t.Fatalf("Parse(%q) error %v wraps neither ErrBadURL nor ErrBadOptions", raw, err)
			}
			if strings.Contains(raw, ":secretpw@") && strings.Contains(err.Error(), "secretpw") {
				t.Fatalf("Parse(%q) error shows the password: %v", raw, err)
			}
			return
		}
		defer s.Close()
		if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.Scheme != "" && u.User != nil {
			if pw, ok := u.User.Password(); ok && pw != "" && strings.Contains(s.String(), ":"+pw+"@") {
				t.Fatalf("source name %q shows the password", s.String())
			}
		}
	})
}

// FuzzParseVia: any dpcache-via metadata a DP receives parses into at most
// MaxHops well-formed ids, or fails with ErrInvalid or ErrLoop; a parsed
// chain formats back to the value it came from.
func FuzzParseVia(f *testing.F) {
	for _, s := range []string{
		"", "0123456789abcdef", "0123456789abcdef,fedcba9876543210", "0123456789ABCDEF", "x", ",",
		strings.Repeat("0123456789abcdef,", 9) + "0123456789abcdef", "0123456789abcdef,,0123456789abcdef",
	} {
		f.Add(s, false)
	}
	f.Add("0123456789abcdef", true)
	f.Fuzz(func(t *testing.T, value string, twice bool) {
		values := []string{value}
		if twice {
			values = append(values, value)
		}
		chain, err := source.ParseVia(values)
		if err != nil {
			if !errors.Is(err, source.ErrInvalid) && !errors.Is(err, source.ErrLoop) {
				t.Fatalf("ParseVia(%q) error %v wraps neither ErrInvalid nor ErrLoop", values, err)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("ParseVia error of %d characters: %.80q…", len(err.Error()), err)
			}
			return
		}
		if twice && value != "" {
			t.Fatalf("ParseVia accepted two values %q", values)
		}
		if len(chain) > source.MaxHops {
			t.Fatalf("ParseVia(%q) = %d ids, more than MaxHops", value, len(chain))
		}
		if value != "" && source.FormatVia(chain) != value {
			t.Fatalf("ParseVia(%q) formats back as %q", value, source.FormatVia(chain))
		}
	})
}
