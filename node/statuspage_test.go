package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// quietAfterTest gives each DP a logger that stops writing when the test
// ends (see newTestWriter).
func quietAfterTest(t *testing.T) func(*Config) {
	w := newTestWriter(t)
	return func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("dp", c.Name)
	}
}

// A live cluster's page, fetched over HTTP and rendered by headless
// Chromium: members by site with their state, versions held, the savings
// ratio and the chart. The screenshot is kept as a test artifact.
func TestStatusPage_Cluster(t *testing.T) {
	v := newVendor(t)
	v.publish(t, "av", "1", 1, smallProduct)
	ngx := testenv.StartNginx(t, v.repo, testenv.NginxOptions{})
	nodes := startClusterWith(t, v, ngx.URL, quietAfterTest(t), "paris", "paris", "lyon")
	holdAll := func(version string) {
		testenv.WaitFor(t, 30*time.Second, "every DP holds av "+version, func() bool {
			for _, n := range nodes {
				if hv, err := n.cache.LatestVersion("av"); err != nil || hv.Version != version {
					return false
				}
			}
			return true
		})
	}
	updateAll(t, v, "av", grpcSources(t, nodes, 3))
	holdAll("1")
	ctx := testCtx(t)
	nodes[0].status.Sample(ctx)
	v.publish(t, "av", "2", 2, map[string]int{"databases/a.dat": 3 << 20, "databases/c.dat": 1 << 20, "modules/engine.so": 2 << 20})
	holdAll("2")
	updateAll(t, v, "av", grpcSources(t, nodes, 6))
	nodes[0].status.Sample(ctx)
	testenv.WaitFor(t, 20*time.Second, "gossip shows serial 2 everywhere", func() bool {
		for _, m := range nodes[0].gossip.Members() {
			if !m.Holds("av", 2) {
				return false
			}
		}
		return true
	})

	st, err := (&adminServer{n: nodes[0].Node}).GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// What crossed the internet links, and what reached endpoints (served
	// minus what peers received), as the page counts them.
	internet, delivered := st.GetTraffic().GetUpstreamBytes(), st.GetTraffic().GetServedBytes()-st.GetTraffic().GetPeerBytes()
	saved := fmt.Sprintf(`id="saved">%.0f%%<`, 100*(1-float64(internet)/float64(delivered)))
	url := "http://" + nodes[0].HTTPAddr() + "/"
	want := []string{"dp-1", "dp-2", "dp-3", "Site paris", "Site lyon", "2 of 2 alive", "1 of 1 alive", `<span class="serial newest">2</span>`, "<b>av</b>", saved, "<svg", `class="d-line"`}

	t.Run("html", func(t *testing.T) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		html := buf.String()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET /: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		for _, w := range append(want, `<meta http-equiv="refresh" content="10">`) {
			if !strings.Contains(html, w) {
				t.Errorf("page lacks %q", w)
			}
		}
		if strings.Contains(html, "<script") || strings.Contains(html, "ZgotmplZ") {
			t.Error("page has a script or a value html/template refused")
		}
		if t.Failed() {
			t.Logf("page:\n%s", html)
		}
	})

	t.Run("chromium", func(t *testing.T) {
		chromium := testenv.RequireBinary(t, "chromium")
		profile := t.TempDir()
		run := func(args ...string) string {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--user-data-dir=" + profile}, args...)
			cmd := exec.CommandContext(ctx, chromium, args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
			}
			return stdout.String()
		}
		dom := run("--dump-dom", url)
		for _, w := range want {
			if !strings.Contains(dom, w) {
				t.Errorf("DOM lacks %q", w)
			}
		}
		dir := os.Getenv("DPCACHE_ARTIFACTS")
		if dir == "" {
			dir = t.TempDir()
		} else if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		shot, err := filepath.Abs(filepath.Join(dir, "statuspage.png"))
		if err != nil {
			t.Fatal(err)
		}
		full := strings.TrimSuffix(shot, ".png") + "-full.png"
		run("--screenshot="+shot, "--window-size=1280,900", "--hide-scrollbars", url)
		run("--screenshot="+full, "--window-size=1280,1400", "--hide-scrollbars", url)
		for _, f := range []string{shot, full} {
			info, err := os.Stat(f)
			if err != nil || info.Size() < 10<<10 {
				t.Fatalf("screenshot %s: %v (%v)", f, err, info)
			}
		}
		t.Logf("status page screenshots: %s (1280×900), %s (whole page)", shot, full)
	})
}
