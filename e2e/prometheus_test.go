package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// promTarget is a scrape target as Prometheus's /api/v1/targets shows it.
type promTarget struct {
	Labels    map[string]string `json:"labels"`
	Health    string            `json:"health"` // up, down, unknown
	LastError string            `json:"lastError"`
}

// promTargets asks the Prometheus at addr for its active targets, by job.
func promTargets(addr string) (map[string]promTarget, error) {
	var body struct {
		Data struct {
			ActiveTargets []promTarget `json:"activeTargets"`
		} `json:"data"`
	}
	if err := promGet(addr, "/api/v1/targets?state=active", &body); err != nil {
		return nil, err
	}
	out := map[string]promTarget{}
	for _, tg := range body.Data.ActiveTargets {
		out[tg.Labels["job"]] = tg
	}
	return out, nil
}

// promGet decodes the JSON answer of GET http://addr+path.
func promGet(addr, path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	tr := &http.Transport{DisableKeepAlives: true} // nothing left for goleak
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// TestE2E_TLS_PrometheusScrape: a real Prometheus scrapes a DP with
// --client-ca over HTTPS. With an admin certificate (tls_config ca_file,
// cert_file, key_file) the target is up and the DP's series are stored;
// without a certificate the scrape fails with 401, and with an endpoint's
// with 403.
func TestE2E_TLS_PrometheusScrape(t *testing.T) {
	t.Parallel()
	prom := testenv.RequireBinary(t, "prometheus")
	d := startTLSDP(t)

	job := func(name string, c *certPair) string {
		tls := "      ca_file: " + d.site.ca + "\n"
		if c != nil {
			tls += "      cert_file: " + c.cert + "\n      key_file: " + c.key + "\n"
		}
		return "  - job_name: " + name + "\n    scheme: https\n    tls_config:\n" + tls +
			"    static_configs:\n      - targets: ['" + d.HTTP + "']\n"
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n" +
		job("admin", &d.admin) + job("no-certificate", nil) + job("endpoint", &d.endpoint)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testenv.FreeAddr(t, "127.0.0.1")
	p := testenv.StartProc(t, prom, "--config.file", cfg, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr, "--log.level", "warn")

	// Each target scraped at least once, and its outcome what its
	// certificate allows.
	want := map[string]struct{ health, lastError string }{
		"admin":          {"up", ""},
		"no-certificate": {"down", "401"},
		"endpoint":       {"down", "403"},
	}
	var last map[string]promTarget
	waitDetail(t, eventually, "Prometheus to scrape the DP with each certificate", func() (bool, string) {
		if p.Exited() {
			t.Fatalf("prometheus exited: %s", p.Stderr())
		}
		tgs, err := promTargets(addr)
		if err != nil {
			return false, err.Error()
		}
		last = tgs
		for name, w := range want {
			tg := tgs[name]
			if tg.Health != w.health || !strings.Contains(tg.LastError, w.lastError) {
				return false, fmt.Sprintf("%+v", tgs)
			}
		}
		return true, ""
	})
	for name, tg := range last {
		t.Logf("job %s: %s %s", name, tg.Health, tg.LastError)
	}

	// What the admin's scrapes stored: the DP's own series.
	var q struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
			} `json:"result"`
		} `json:"data"`
	}
	waitDetail(t, eventually, "dpcache_node_info in Prometheus", func() (bool, string) {
		if err := promGet(addr, "/api/v1/query?query="+url.QueryEscape("dpcache_node_info"), &q); err != nil {
			return false, err.Error()
		}
		return len(q.Data.Result) == 1, fmt.Sprintf("%+v", q.Data.Result)
	})
	if m := q.Data.Result[0].Metric; m["job"] != "admin" || m["name"] != "dp-"+filepath.Base(d.Data) {
		t.Errorf("dpcache_node_info %v: want job admin and the DP's name", m)
	}
}
