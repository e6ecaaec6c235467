package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// loadtestResult is `dpcache loadtest --json`, the fields the tests read.
type loadtestResult struct {
	Endpoints        int            `json:"endpoints"`
	Updated          int            `json:"updated"`
	Errors           int            `json:"errors"`
	Seconds          float64        `json:"seconds"`
	P50ms            float64        `json:"p50_ms"`
	P99ms            float64        `json:"p99_ms"`
	FirstP99ms       float64        `json:"first_p99_ms"`
	PerMinute        float64        `json:"endpoints_per_minute"`
	Bytes            int64          `json:"bytes"`
	From             string         `json:"from"`
	Version          string         `json:"version"`
	BlobsPerEndpoint int            `json:"blobs_per_endpoint"`
	BytesPerEndpoint int64          `json:"bytes_per_endpoint"`
	ErrorKinds       map[string]int `json:"error_kinds"`
	NodePID          int            `json:"node_pid"`
	RssAnonPeak      int64          `json:"rss_anon_peak_bytes"`
}

// 200 simulated endpoints, 50 at once, each on its own connection, go from
// 1.0 to 2.0 through a DP in front of nginx: each reads only the file that
// changed, all report "updated", the DP's inventory lists the 200 at 2.0,
// and the DP's memory is sampled (it runs here).
func TestE2E_Loadtest(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	sizes := map[string]int{
		"databases/base-a.dat": 4 << 20,
		"databases/base-b.dat": 2 << 20,
		"databases/index.idx":  64 << 10,
	}
	writeFiles(t, src, sizes)
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	changed := writeFiles(t, src, map[string]int{"databases/base-a.dat": 4 << 20})
	publish(t, repo, k, "2.0", src)
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dp := startNode(t, origin.URL, k.pub)

	const endpoints = 200
	r := mustRun(t, "loadtest", "--node", dp.GRPC, "--product", product, "--from", "1.0", "--trust", k.pub,
		"--endpoints", "200", "--concurrency", "50", "--json")
	var res loadtestResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("decode loadtest --json: %v\n%s", err, r)
	}
	if res.Endpoints != endpoints || res.Updated != endpoints || res.Errors != 0 || len(res.ErrorKinds) != 0 {
		t.Fatalf("endpoints %d, updated %d, errors %d %v; want %d, %d, 0\n%s", res.Endpoints, res.Updated, res.Errors, res.ErrorKinds, endpoints, endpoints, r)
	}
	if res.From != "1.0" || res.Version != "2.0" || res.BlobsPerEndpoint != 1 || res.BytesPerEndpoint != 4<<20 {
		t.Errorf("from %q to %q, %d blobs of %d bytes each; want 1.0 to 2.0, the changed file only (%s, %d bytes)",
			res.From, res.Version, res.BlobsPerEndpoint, res.BytesPerEndpoint, changed["databases/base-a.dat"], 4<<20)
	}
	if res.Bytes != endpoints*4<<20 {
		t.Errorf("moved %d bytes, want %d", res.Bytes, endpoints*4<<20)
	}
	if res.Seconds <= 0 || res.P50ms <= 0 || res.P99ms < res.P50ms || res.FirstP99ms <= 0 || res.PerMinute <= 0 {
		t.Errorf("figures missing: %+v", res)
	}
	if res.NodePID != dp.proc.Pid() || res.RssAnonPeak <= 0 {
		t.Errorf("node_pid %d, rss_anon_peak_bytes %d; want the DP's pid %d and its RssAnon (it runs here)", res.NodePID, res.RssAnonPeak, dp.proc.Pid())
	}

	inv := mustRun(t, "endpoints", "--node", dp.GRPC, "--json")
	var list struct {
		Endpoints []struct {
			ID, Product, Version, Result string
		} `json:"endpoints"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &list); err != nil {
		t.Fatalf("decode endpoints --json: %v\n%s", err, inv)
	}
	ids := map[string]bool{}
	for _, e := range list.Endpoints {
		if strings.HasPrefix(e.ID, "loadtest-") && e.Product == product && e.Version == "2.0" && e.Result == "updated" {
			ids[e.ID] = true
		}
	}
	if len(ids) != endpoints {
		t.Errorf("the DP's inventory lists %d loadtest endpoints updated to 2.0 (of %d entries), want %d", len(ids), len(list.Endpoints), endpoints)
	}

	// The text summary says the same for people.
	txt := mustRun(t, "loadtest", "--node", dp.URL(), "--product", product, "--from", "1.0", "--endpoints", "4", "--concurrency", "2")
	mustContain(t, txt.stdout, "from 1.0 to 2.0", "updated 4, errors 0", "endpoints/min", "p99", "first answer", "RssAnon peak")
}
