package source

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestNoProxy_Match(t *testing.T) {
	t.Parallel()
	tests := []struct {
		list string
		url  string
		want bool
	}{
		{"", "http://127.0.0.1/", false},
		{"*", "http://anything.example/", true},
		{" * ", "https://[::1]:8443/", true},
		{"example.com", "http://example.com/", true},
		{"example.com", "http://updates.example.com/", true},
		{"example.com", "http://a.b.example.com:8080/", true},
		{"example.com", "http://notexample.com/", false},
		{".example.com", "http://updates.example.com/", true},
		{".example.com", "http://example.com/", true},
		{"*.example.com", "http://x.example.com/", true},
		{"EXAMPLE.com.", "http://Updates.Example.COM./", true},
		{"example.com:8080", "http://example.com:8080/", true},
		{"example.com:8080", "http://example.com/", false},
		{"example.com:443", "https://example.com/", true},
		{"example.com:80", "http://example.com/", true},
		{"127.0.0.1", "http://127.0.0.1:9999/", true},
		{"127.0.0.1", "http://127.0.0.2/", false},
		{"127.0.0.1", "http://localhost/", false}, // names are never resolved
		{"localhost", "http://localhost:8080/", true},
		{"127.0.0.0/8", "http://127.1.2.3/", true},
		{"10.0.0.0/8, 192.168.0.0/16", "http://192.168.4.4/", true},
		{"10.0.0.0/8", "http://11.0.0.1/", false},
		{"10.0.0.0/8", "http://ten.example/", false},
		{"::1", "http://[::1]:80/", true},
		{"[::1]:8443", "https://[::1]:8443/", true},
		{"[::1]:8443", "https://[::1]/", false},
		{"fd00::/8", "http://[fd00::5]/", true},
		{"::ffff:0:0/96", "http://[::ffff:10.1.1.1]/", false}, // compared unmapped
		{"10.1.1.1", "http://[::ffff:10.1.1.1]/", true},
		{"a.example,,b.example", "http://b.example/", true},
		{"**", "http://anything.example/", false}, // found by FuzzNoProxy: not "*"
		{"*.*", "http://a.b/", false},
		{"bücher.example", "http://xn--bcher-kva.example/", true}, // httpproxy: IDNA
	}
	for _, tt := range tests {
		t.Run(tt.list+" "+tt.url, func(t *testing.T) {
			t.Parallel()
			np, err := parseNoProxy(tt.list)
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if got := np.match(u); got != tt.want {
				t.Errorf("NoProxy %q matches %s = %v, want %v", tt.list, tt.url, got, tt.want)
			}
		})
	}
}

func TestNoProxy_Invalid(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"10.0.0.0/33", "host/path", "example.com:http", "1:2:3:zz", ".", "*.", "a:b:c"} {
		if _, err := parseNoProxy(bad); !errors.Is(err, ErrBadOptions) {
			t.Errorf("parseNoProxy(%q) = %v, want an error wrapping ErrBadOptions", bad, err)
		}
	}
}

// FuzzNoProxy: no list or host makes parsing or matching panic; errors
// are one line wrapping ErrBadOptions; every entry handed to httpproxy
// reads back as itself from the form it is handed in; adding an entry never sends a host
// that went direct through the proxy, and "*" sends every host direct.
func FuzzNoProxy(f *testing.F) {
	for _, s := range []struct{ list, host string }{
		{"example.com", "updates.example.com"},
		{".example.com:8080", "example.com:8080"},
		{"*.Example.COM.", "x.example.com."},
		{"10.0.0.0/8, 192.168.0.0/16", "192.168.4.4"},
		{"::1", "[::1]:80"},
		{"[::1]:8443", "[::1]:8443"},
		{"::ffff:0:0/96", "[::ffff:10.1.1.1]"},
		{"127.0.0.0/8", "127.1.2.3"},
		{"localhost", "localhost:8080"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"10.0.0.0/33,a:b:c", "10.1.1.1"},
		{"", "127.0.0.1"},
		{"**", "anything.example"}, // a finding: "*" must not reach httpproxy
	} {
		f.Add(s.list, s.host)
	}
	f.Fuzz(func(t *testing.T, list, host string) {
		np, err := parseNoProxy(list)
		if err != nil {
			if !errors.Is(err, ErrBadOptions) || strings.ContainsRune(err.Error(), '\n') {
				t.Fatalf("parseNoProxy(%q) = %q, want one line wrapping ErrBadOptions", list, err)
			}
			return
		}
		for _, e := range np.entries {
			if e.matchesNothing() {
				continue
			}
			again, err := parseNoProxyEntry(e.String())
			if err != nil || again != e {
				t.Fatalf("entry %+v reads back from %q as %+v, %v", e, e.String(), again, err)
			}
		}
		for _, scheme := range []string{"http", "https"} {
			u, err := url.Parse(scheme + "://" + host + "/")
			if err != nil {
				return
			}
			direct := np.match(u)
			more, err := parseNoProxy(list + ",unrelated.invalid")
			if err != nil {
				t.Fatalf("adding an entry to %q: %v", list, err)
			}
			if direct && !more.match(u) {
				t.Fatalf("%s goes direct with %q but through the proxy once an entry is added", u, list)
			}
			all, _ := parseNoProxy(list + ",*")
			if !all.match(u) {
				t.Fatalf("%s goes through the proxy with %q", u, list+",*")
			}
		}
	})
}
