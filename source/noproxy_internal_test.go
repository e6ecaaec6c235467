package source

import (
	"errors"
	"net/url"
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
