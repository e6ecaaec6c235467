package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// `dpcache healthcheck`, the image's health check, against real DPs: exit
// 0 and one line while the DP answers 200, exit 1 and one line saying
// what is wrong otherwise (stopped, not ready, TLS without --ca, a CA that
// did not sign the DP's certificate), exit 2 for a bad command line.
func TestE2E_Healthcheck(t *testing.T) {
	t.Parallel()
	_, k, _, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 16 << 10})

	t.Run("plain", func(t *testing.T) {
		t.Parallel()
		n := startNode(t, repo, k.pub)
		for _, tc := range []struct {
			args []string
			env  []string
			want string
		}{
			{[]string{"--http", n.HTTP}, nil, "healthy: http://" + n.HTTP + "/healthz answered 200 ok"},
			{[]string{"--url", "http://" + n.HTTP + "/healthz"}, nil, "healthy: http://" + n.HTTP + "/healthz answered 200 ok"},
			{[]string{"--http", n.HTTP, "--ready"}, nil, "healthy: http://" + n.HTTP + "/readyz answered 200 ready"},
			// The variable that sets the node's --http sets the check's.
			{nil, []string{"DPCACHE_HTTP=" + n.HTTP}, "healthy: http://" + n.HTTP + "/healthz answered 200 ok"},
		} {
			r := dpcacheWith(t, testenv.ProcOptions{Env: tc.env}, append([]string{"healthcheck"}, tc.args...)...)
			if r.code != 0 || strings.TrimSpace(r.stdout) != tc.want || r.stderr != "" {
				t.Errorf("want exit 0 and %q, got %s", tc.want, r)
			}
		}
		// A path the DP does not serve is unhealthy: the status is shown.
		line := errorLine(t, dpcache(t, "healthcheck", "--url", "http://"+n.HTTP+"/nothing-here"))
		mustContain(t, line, "http://"+n.HTTP+"/nothing-here", "unhealthy: 404")

		n.proc.Kill()
		r := dpcache(t, "healthcheck", "--http", n.HTTP)
		if r.code != 1 {
			t.Errorf("a stopped DP: want exit 1, got %s", r)
		}
		mustContain(t, errorLine(t, r), "http://"+n.HTTP+"/healthz", "connection refused")
	})

	// A DP whose only upstream is down and which holds nothing is alive but
	// not ready: /healthz passes, --ready fails with the DP's reason.
	t.Run("not-ready", func(t *testing.T) {
		t.Parallel()
		dead := "http://" + testenv.FreeAddr(t, "127.0.0.1") + "/"
		n := startNode(t, dead, k.pub, "--product", product)
		waitDetail(t, eventually, "the DP to be not ready", func() (bool, string) {
			code := httpStatus("http://" + n.HTTP + "/readyz")
			return code == http.StatusServiceUnavailable, fmt.Sprint(code)
		})
		mustRun(t, "healthcheck", "--http", n.HTTP)
		r := dpcache(t, "healthcheck", "--http", n.HTTP, "--ready")
		if r.code != 1 {
			t.Errorf("not ready: want exit 1, got %s", r)
		}
		mustContain(t, errorLine(t, r), "/readyz", "unhealthy: 503 not ready")
	})

	// A DP with --tls-cert serves HTTP over TLS: the check needs --ca.
	t.Run("tls", func(t *testing.T) {
		t.Parallel()
		d := startTLSDP(t)
		other := newSitePKI(t, t.TempDir(), "other")

		line := errorLine(t, dpcache(t, "healthcheck", "--http", d.HTTP))
		mustContain(t, line, "the port speaks TLS", "--ca")

		r := mustRun(t, "healthcheck", "--http", d.HTTP, "--ca", d.site.ca)
		mustContain(t, r.stdout, "healthy: https://"+d.HTTP+"/healthz answered 200 ok")

		line = errorLine(t, dpcache(t, "healthcheck", "--http", d.HTTP, "--ca", other.ca))
		mustContain(t, line, "https://"+d.HTTP+"/healthz", "not signed by --ca")

		line = errorLine(t, dpcache(t, "healthcheck", "--http", d.HTTP, "--ca", d.site.ca, "--server-name", "dp.example"))
		mustContain(t, line, `not valid for "dp.example"`, "--server-name")
	})

	t.Run("usage", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--url", "http://127.0.0.1:1/healthz", "--http", "127.0.0.1:1"}, "--url or --http, not both"},
			{[]string{"--url", "ftp://127.0.0.1/"}, "want http://"},
			{[]string{"--http", "nowhere"}, "want HOST:PORT"},
			{[]string{"--timeout", "0s"}, "must be positive"},
		} {
			r := dpcache(t, append([]string{"healthcheck"}, tc.args...)...)
			if r.code != 2 {
				t.Errorf("%v: want exit 2, got %s", tc.args, r)
			}
			mustContain(t, errorLine(t, r), tc.want)
		}
	})
}
