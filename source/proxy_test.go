package source_test

import (
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// TestProxy_Squid runs http:// and https:// sources through a real squid
// with basic authentication, with a loopback origin (nginx), and proves
// from squid's access log which requests went through it.
func TestProxy_Squid(t *testing.T) {
	r := newRepo(t)
	ca := testenv.NewTestCA(t)
	ngx := testenv.StartNginxTLS(t, r.root, ca, testenv.NginxOptions{})
	const password = "squid-Secret-7"
	squid := testenv.StartSquid(t, testenv.SquidOptions{User: "dpuser", Password: password})
	proxy := squid.ProxyURL()
	squidHas := func(t *testing.T, cond func(e testenv.SquidEntry) bool) bool {
		for _, e := range squid.Requests(t) {
			if cond(e) {
				return true
			}
		}
		return false
	}

	// The origin is 127.0.0.1: Go's environment-based proxying would go
	// direct; an explicit proxy takes everything.
	t.Run("HTTPLoopbackGoesThroughProxy", func(t *testing.T) {
		t.Parallel()
		src := parse(t, ngx.URL, source.Options{Proxy: proxy})
		d, content := r.big()
		got, err := readBlob(testCtx(t), src, d, 0, io.ReadAll)
		checkBytes(t, "blob through squid", got, content, err)
		testenv.WaitFor(t, 10*time.Second, "squid's log of the blob request", func() bool {
			return squidHas(t, func(e testenv.SquidEntry) bool {
				return e.Method == "GET" && e.Status == 200 && e.User == "dpuser" &&
					strings.HasSuffix(e.URL, manifest.BlobPath(d)) && e.Bytes >= int64(len(content))
			})
		})
	})

	t.Run("HTTPSThroughConnect", func(t *testing.T) {
		t.Parallel()
		src, err := source.Parse(ngx.TLSURL, source.Options{Proxy: proxy, CAFile: ca.CAFile})
		if err != nil {
			t.Fatal(err)
		}
		d, content := r.big()
		got, err := readBlob(testCtx(t), src, d, 0, io.ReadAll)
		checkBytes(t, "blob through a CONNECT tunnel", got, content, err)
		if _, err := src.Latest(testCtx(t), r.product); err != nil {
			t.Fatal(err)
		}
		src.Close() // squid logs a tunnel when it closes
		testenv.WaitFor(t, 10*time.Second, "squid's log of the tunnel", func() bool {
			return squidHas(t, func(e testenv.SquidEntry) bool {
				return e.Method == "CONNECT" && e.Status == 200 && e.Result == "TCP_TUNNEL" &&
					e.URL == ngx.TLSAddr && e.User == "dpuser" && e.Bytes >= int64(len(content))
			})
		})
	})

	// NoProxy entries that match the origin bypass the proxy: the request
	// reaches nginx and squid never sees it.
	t.Run("NoProxyBypasses", func(t *testing.T) {
		t.Parallel()
		for i, np := range []string{"127.0.0.1", "127.0.0.0/8", "example.com, 127.0.0.1:" + strings.Split(ngx.Addr, ":")[1], "*"} {
			d := r.digests[2+i%2] // the test above reads the big one through squid
			src := parse(t, ngx.URL, source.Options{Proxy: proxy, NoProxy: np})
			got, err := readBlob(testCtx(t), src, d, int64(i), io.ReadAll)
			checkBytes(t, "NoProxy "+np, got, r.blobs[d][i:], err)
			testenv.WaitFor(t, 10*time.Second, "nginx's log of the direct request", func() bool {
				return ngx.CountRequests(t, manifest.BlobPath(d)) > i/2
			})
		}
		for _, d := range r.digests[2:4] {
			if squidHas(t, func(e testenv.SquidEntry) bool { return strings.Contains(e.URL, d) }) {
				t.Errorf("squid saw a request for %s that NoProxy should have sent direct", d[:12])
			}
		}
		// A NoProxy entry for another host keeps the proxy.
		src := parse(t, ngx.URL, source.Options{Proxy: proxy, NoProxy: "10.0.0.0/8,updates.example.com"})
		if _, err := src.Manifest(testCtx(t), r.product, r.version); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 10*time.Second, "squid's log of the manifest", func() bool {
			return squidHas(t, func(e testenv.SquidEntry) bool { return strings.HasSuffix(e.URL, "/manifest.json") })
		})
	})

	t.Run("WrongPassword", func(t *testing.T) {
		t.Parallel()
		bad := *proxy
		bad.User = url.UserPassword("dpuser", "wrong-"+password)
		for _, origin := range []string{ngx.URL, ngx.TLSURL} {
			src := parse(t, origin, source.Options{Proxy: &bad, CAFile: ca.CAFile})
			_, err := src.Latest(testCtx(t), r.product)
			checkProxyErr(t, src, err, squid.Addr, "wrong-"+password, "407")
			rc, err := src.Blob(testCtx(t), missingDigest, 0)
			if err == nil {
				rc.Close()
			}
			checkProxyErr(t, src, err, squid.Addr, "wrong-"+password, "407")
		}
	})

	t.Run("ProxyUnreachable", func(t *testing.T) {
		t.Parallel()
		down, _ := url.Parse("http://dpuser:" + password + "@" + closedAddr(t))
		for _, origin := range []string{ngx.URL, ngx.TLSURL} {
			src := parse(t, origin, source.Options{Proxy: down, CAFile: ca.CAFile, Timeout: 2 * time.Second})
			_, err := src.Latest(testCtx(t), r.product)
			checkProxyErr(t, src, err, down.Host, password, "unreachable")
		}
	})

	// The origin is down: squid answers 503 (http) or refuses the tunnel
	// (https), and the error says the proxy answered.
	t.Run("OriginDownBehindProxy", func(t *testing.T) {
		t.Parallel()
		dead := closedAddr(t)
		for _, origin := range []string{"http://" + dead + "/", "https://" + dead + "/"} {
			src := parse(t, origin, source.Options{Proxy: proxy})
			_, err := src.Latest(testCtx(t), r.product)
			checkProxyErr(t, src, err, squid.Addr, password, "503")
		}
	})

	// A 404 of the origin relayed by the proxy is the origin's answer.
	t.Run("NotFoundThroughProxy", func(t *testing.T) {
		t.Parallel()
		for _, origin := range []string{ngx.URL, ngx.TLSURL} {
			src := parse(t, origin, source.Options{Proxy: proxy, CAFile: ca.CAFile})
			_, err := src.Latest(testCtx(t), "no-such-product")
			checkErr(t, src, err, source.ErrNotFound)
			if errors.Is(err, source.ErrProxy) {
				t.Errorf("origin's 404 through the proxy reported as a proxy error: %v", err)
			}
		}
	})
}

// checkProxyErr checks a proxy failure: ErrProxy (and so ErrUnavailable),
// naming the source and the proxy's address, with what, and never the
// password.
func checkProxyErr(t *testing.T, src source.Source, err error, proxyAddr, password, what string) {
	t.Helper()
	checkErr(t, src, err, source.ErrUnavailable)
	if err == nil {
		return
	}
	if !errors.Is(err, source.ErrProxy) {
		t.Errorf("error %q does not wrap ErrProxy", err)
	}
	msg := err.Error()
	t.Logf("proxy error: %s", msg)
	if !strings.Contains(msg, "proxy http://") || !strings.Contains(msg, proxyAddr) {
		t.Errorf("error %q does not name the proxy %s", msg, proxyAddr)
	}
	if !strings.Contains(msg, what) {
		t.Errorf("error %q does not say %q", msg, what)
	}
	if strings.Contains(msg, password) {
		t.Errorf("error %q shows the proxy password", msg)
	}
}

// TestOptions_Validate checks the options that Parse refuses.
func TestOptions_Validate(t *testing.T) {
	t.Parallel()
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	tests := []struct {
		name string
		opts source.Options
		ok   bool
	}{
		{name: "zero", ok: true},
		{name: "http proxy", opts: source.Options{Proxy: mustURL("http://u:p@proxy:3128")}, ok: true},
		{name: "socks5 proxy", opts: source.Options{Proxy: mustURL("socks5://proxy:1080")}, ok: true},
		{name: "ftp proxy", opts: source.Options{Proxy: mustURL("ftp://u:topsecret@proxy")}},
		{name: "proxy without host", opts: source.Options{Proxy: mustURL("http://:3128")}},
		{name: "bad NoProxy", opts: source.Options{NoProxy: "10.0.0.0/40"}},
		{name: "negative timeout", opts: source.Options{Timeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.opts.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err == nil {
				return
			}
			if !errors.Is(err, source.ErrBadOptions) {
				t.Errorf("error %q does not wrap ErrBadOptions", err)
			}
			if strings.Contains(err.Error(), "topsecret") {
				t.Errorf("error %q shows the proxy password", err)
			}
			if _, perr := source.Parse("http://h/", tt.opts); !errors.Is(perr, source.ErrBadOptions) {
				t.Errorf("Parse with these options: %v, want ErrBadOptions", perr)
			}
		})
	}
}
