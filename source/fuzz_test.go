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
