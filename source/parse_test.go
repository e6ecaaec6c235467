package source_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/source"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
		// want is the type of the Source ("file", "http", "ftp", "grpc"), or
		// "" for an error wrapping ErrBadURL.
		want string
		// str is the expected String(), when not empty.
		str string
	}{
		{name: "http", raw: "http://updates.example.com/", want: "http", str: "http://updates.example.com/"},
		{name: "http without slash", raw: "http://updates.example.com", want: "http", str: "http://updates.example.com/"},
		{name: "http prefix", raw: "http://10.0.0.1:8080/updates", want: "http", str: "http://10.0.0.1:8080/updates/"},
		{name: "http query dropped", raw: "http://h/updates/?x=1#f", want: "http", str: "http://h/updates/"},
		{name: "https", raw: "https://updates.example.com:8443/kes/", want: "http", str: "https://updates.example.com:8443/kes/"},
		{name: "upper-case scheme", raw: "HTTP://h/", want: "http", str: "http://h/"},
		{name: "surrounding spaces", raw: "  http://h/ \t", want: "http", str: "http://h/"},
		{name: "file", raw: "file:///srv/updates", want: "file", str: "file:///srv/updates"},
		{name: "file localhost", raw: "file://localhost/srv/updates", want: "file", str: "file:///srv/updates"},
		{name: "file trailing slash", raw: "file:///srv/updates/", want: "file", str: "file:///srv/updates"},
		{name: "absolute path", raw: "/srv/updates", want: "file", str: "file:///srv/updates"},
		{name: "relative path", raw: "./updates", want: "file"},
		{name: "bare name", raw: "updates", want: "file"},
		{name: "grpc", raw: "grpc://127.0.0.1:7340", want: "grpc", str: "grpc://127.0.0.1:7340"},
		{name: "grpc host name", raw: "grpc://dp1.branch.local:7340", want: "grpc", str: "grpc://dp1.branch.local:7340"},
		{name: "grpc ipv6", raw: "grpc://[::1]:7340", want: "grpc", str: "grpc://[::1]:7340"},
		{name: "grpcs", raw: "grpcs://dp1.branch.local:7340", want: "grpc", str: "grpcs://dp1.branch.local:7340"},
		{name: "ftp", raw: "ftp://ftp.example.com/updates/", want: "ftp", str: "ftp://ftp.example.com/updates/"},
		{name: "ftp root", raw: "ftp://ftp.example.com", want: "ftp", str: "ftp://ftp.example.com/"},
		{name: "ftp user and port", raw: "ftp://kes@10.0.0.5:2121/av", want: "ftp", str: "ftp://kes@10.0.0.5:2121/av/"},
		{name: "ftp password hidden", raw: "ftp://kes:pw@h/", want: "ftp", str: "ftp://kes:xxxxx@h/"},
		{name: "ftp absolute path", raw: "ftp://h/%2Fsrv/updates", want: "ftp"},

		{name: "empty", raw: ""},
		{name: "blank", raw: "  \t "},
		{name: "http without host", raw: "http:///updates/"},
		{name: "https without host", raw: "https://"},
		{name: "http port without host", raw: "http://:8080/"},
		{name: "unparsable host", raw: "http://[::1/"},
		{name: "bad port", raw: "http://h:port/"},
		{name: "file remote host", raw: "file://fileserver/share/updates"},
		{name: "grpc without port", raw: "grpc://dp1.branch.local"},
		{name: "grpc empty port", raw: "grpc://dp1.branch.local:"},
		{name: "grpc without host", raw: "grpc://:7340"},
		{name: "grpc nothing", raw: "grpc://"},
		{name: "ftp without host", raw: "ftp:///updates/"},
		{name: "ftp bad port", raw: "ftp://h:99999/"},
		{name: "ftp line break", raw: "ftp://h/a%0D%0ADELE%20x/"},
		{name: "grpcs without port", raw: "grpcs://dp1.branch.local"},
		{name: "unknown scheme", raw: "gopher://h/"},
		{name: "scheme only", raw: "://h/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src, err := source.Parse(tt.raw, source.Options{Timeout: time.Second})
			if tt.want == "" {
				if err == nil {
					src.Close()
					t.Fatalf("Parse(%q) = %s, want an error wrapping ErrBadURL", tt.raw, src)
				}
				if !errors.Is(err, source.ErrBadURL) {
					t.Fatalf("Parse(%q) error %q does not wrap ErrBadURL", tt.raw, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.raw, err)
			}
			defer src.Close()
			var kind string
			switch src.(type) {
			case *source.File:
				kind = "file"
			case *source.HTTP:
				kind = "http"
			case *source.GRPC:
				kind = "grpc"
			case *source.FTP:
				kind = "ftp"
			default:
				kind = "unknown"
			}
			if kind != tt.want {
				t.Errorf("Parse(%q) is a %T, want a %s source", tt.raw, src, tt.want)
			}
			if tt.str != "" && src.String() != tt.str {
				t.Errorf("Parse(%q).String() = %q, want %q", tt.raw, src.String(), tt.str)
			}
		})
	}
}

// TestParse_UnsupportedSchemeNamed checks that the error says which scheme
// was refused, so a user can fix the URL.
func TestParse_UnsupportedSchemeNamed(t *testing.T) {
	t.Parallel()
	_, err := source.Parse("sftp://ftp.example.com/updates/", source.DefaultOptions())
	if err == nil || !strings.Contains(err.Error(), `"sftp"`) {
		t.Fatalf("Parse(sftp://...) error = %v, want one naming the scheme \"sftp\"", err)
	}
}

// TestParse_PasswordNeverShown: a URL's password must not appear in a
// Source's name nor in any error about the URL.
func TestParse_PasswordNeverShown(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3tPW"
	tests := []struct {
		name string
		raw  string
		ok   bool
	}{
		{name: "http", raw: "http://user:" + secret + "@updates.example.com/", ok: true},
		{name: "https prefix", raw: "https://user:" + secret + "@updates.example.com:8443/kes/", ok: true},
		{name: "escaped password", raw: "http://user:" + secret + "%21@h/", ok: true},
		{name: "password with at sign", raw: "http://user:top@" + secret + "@h/", ok: true},
		{name: "ftp", raw: "ftp://user:" + secret + "@ftp.example.com/", ok: true},
		{name: "ftp without host", raw: "ftp://user:" + secret + "@/"},
		{name: "sftp unsupported", raw: "sftp://user:" + secret + "@ftp.example.com/"},
		{name: "grpc without port", raw: "grpc://user:" + secret + "@dp1"},
		{name: "file remote host", raw: "file://user:" + secret + "@fileserver/share"},
		{name: "bad port", raw: "http://user:" + secret + "@h:port/"},
		{name: "unparsable host", raw: "http://user:" + secret + "@[::1/"},
		{name: "bad escape", raw: "http://user:" + secret + "%zz@h/"},
		{name: "bad escape and at sign", raw: "http://user:top@" + secret + "%@h/"},
		{name: "space in password", raw: "http://user:top " + secret + "@h/"},
		{name: "no host", raw: "http://user:" + secret + "@/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src, err := source.Parse(tt.raw, source.DefaultOptions())
			if tt.ok {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				defer src.Close()
				if strings.Contains(src.String(), secret) {
					t.Errorf("String() = %q shows the password", src.String())
				}
				return
			}
			if err == nil {
				src.Close()
				t.Fatalf("Parse(%q) succeeded, want an error", tt.raw)
			}
			if !errors.Is(err, source.ErrBadURL) {
				t.Errorf("error %q does not wrap ErrBadURL", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw, secret string
		keep        []string // parts that must remain, to name the source
	}{
		{raw: "http://user:pw123@h/updates/", secret: "pw123", keep: []string{"user", "h/updates/"}},
		{raw: "https://u:p%40ss@h:8443/", secret: "p%40ss", keep: []string{"h:8443"}},
		{raw: "http://user:pw%zz@h/", secret: "pw%zz", keep: []string{"h/"}},
		{raw: "http://user:top@secret%@h/", secret: "secret", keep: []string{"h/"}},
		{raw: "http://h/updates/", keep: []string{"http://h/updates/"}},
		{raw: "/srv/updates", keep: []string{"/srv/updates"}},
		{raw: "grpc://dp1:7340", keep: []string{"grpc://dp1:7340"}},
		{raw: "ftp://kes:ftpPW1@h:2121/av/", secret: "ftpPW1", keep: []string{"kes", "h:2121/av/"}},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			t.Parallel()
			got := source.Redact(tt.raw)
			if tt.secret != "" && strings.Contains(got, tt.secret) {
				t.Errorf("Redact(%q) = %q shows the password", tt.raw, got)
			}
			for _, k := range tt.keep {
				if !strings.Contains(got, k) {
					t.Errorf("Redact(%q) = %q lost %q", tt.raw, got, k)
				}
			}
		})
	}
}

func TestParseList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		urls []string
		want []string // String() of each source, in order; nil for an error
	}{
		{
			name: "one per element",
			urls: []string{"grpc://127.0.0.1:7340", "http://h/", "/srv/updates"},
			want: []string{"grpc://127.0.0.1:7340", "http://h/", "file:///srv/updates"},
		},
		{
			name: "comma-separated",
			urls: []string{"grpc://127.0.0.1:7340,http://h/", "file:///srv/updates"},
			want: []string{"grpc://127.0.0.1:7340", "http://h/", "file:///srv/updates"},
		},
		{
			name: "empty elements skipped",
			urls: []string{",http://h/,, ", "", " file:///srv/updates ,"},
			want: []string{"http://h/", "file:///srv/updates"},
		},
		{name: "nil", urls: nil},
		{name: "only blanks", urls: []string{"", " , ,"}},
		// The grpc source parsed before the bad URL must be closed: goleak
		// in TestMain catches it otherwise.
		{name: "one bad", urls: []string{"grpc://127.0.0.1:7340,http://h/", "sftp://h/"}},
		{name: "bad first", urls: []string{"gopher://h/", "grpc://127.0.0.1:7340"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srcs, err := source.ParseList(tt.urls, source.DefaultOptions())
			if tt.want == nil {
				if err == nil {
					closeAll(srcs)
					t.Fatalf("ParseList(%q) = %v, want an error", tt.urls, srcs)
				}
				if !errors.Is(err, source.ErrBadURL) {
					t.Fatalf("error %q does not wrap ErrBadURL", err)
				}
				if srcs != nil {
					t.Errorf("ParseList returned sources %v with an error", srcs)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseList(%q): %v", tt.urls, err)
			}
			defer closeAll(srcs)
			var got []string
			for _, s := range srcs {
				got = append(got, s.String())
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("ParseList(%q) = %q, want %q", tt.urls, got, tt.want)
			}
		})
	}
}

func closeAll(srcs []source.Source) {
	for _, s := range srcs {
		s.Close()
	}
}
