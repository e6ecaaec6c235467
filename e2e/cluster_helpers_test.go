package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/gossip"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// clusterDP is a `dpcache node` process that gossips with the others of a
// test cluster on 127.0.0.1.
type clusterDP struct {
	*dpNode
	Name   string
	Site   string
	Gossip string // 127.0.0.1:PORT, TCP and UDP
}

// dpSpec names a DP of a test cluster and its site.
type dpSpec struct{ name, site string }

// startClusterDP starts a DP named name in site, gossiping on a free port of
// 127.0.0.1 and joining the gossip addresses join (none: it starts a
// cluster), with --refresh 200ms, and waits until it is ready.
func startClusterDP(t *testing.T, name, site, upstream, trust string, join []string, extra ...string) *clusterDP {
	t.Helper()
	data := t.TempDir()
	const attempts = 3
	for attempt := 1; ; attempt++ {
		dp := &clusterDP{
			dpNode: &dpNode{GRPC: testenv.FreeAddr(t, "127.0.0.1"), HTTP: testenv.FreeAddr(t, "127.0.0.1"), Data: data},
			Name:   name, Site: site, Gossip: testenv.FreeAddr(t, "127.0.0.1"),
		}
		dp.args = []string{"node", "--name", name, "--site", site, "--data", data,
			"--grpc", dp.GRPC, "--http", dp.HTTP, "--gossip", dp.Gossip,
			"--upstream", upstream, "--trust", trust, "--refresh", "200ms"}
		if len(join) > 0 {
			dp.args = append(dp.args, "--join", strings.Join(join, ","))
		}
		dp.args = append(dp.args, extra...)
		err := dp.start(t)
		if err == nil {
			return dp
		}
		// Another process may have taken a port (TCP, or the gossip port's
		// UDP side) between FreeAddr and bind.
		if attempt == attempts || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("retrying DP %s on other ports: %v", name, err)
	}
}

// startCluster starts one DP per spec, each joining every DP started before
// it, and waits until every DP sees all of them alive in their sites.
func startCluster(t *testing.T, upstream, trust string, specs []dpSpec, extra ...string) []*clusterDP {
	t.Helper()
	var dps []*clusterDP
	var join []string
	for _, s := range specs {
		dp := startClusterDP(t, s.name, s.site, upstream, trust, join, extra...)
		dps = append(dps, dp)
		join = append(join, dp.Gossip)
	}
	waitMembers(t, dps, dps)
	return dps
}

// waitMembers waits until each DP of observers lists exactly the DPs of
// want as alive members, with their sites and gRPC addresses.
func waitMembers(t *testing.T, observers, want []*clusterDP) {
	t.Helper()
	wantAlive := map[string]string{}
	for _, dp := range want {
		wantAlive[dp.Name] = dp.Site + " " + dp.GRPC
	}
	for _, obs := range observers {
		waitDetail(t, eventually, fmt.Sprintf("DP %s to see exactly %v alive", obs.Name, wantAlive), func() (bool, string) {
			st, err := statusOf(t, obs.GRPC)
			if err != nil {
				return false, err.Error()
			}
			got := map[string]string{}
			for _, m := range st.Members {
				if m.State == "alive" {
					got[m.Name] = m.Site + " " + m.GRPC
				}
			}
			return fmt.Sprint(got) == fmt.Sprint(wantAlive), fmt.Sprintf("%+v", st.Members)
		})
	}
}

// waitDetail polls cond like testenv.WaitFor and, on timeout, fails the
// test with what was waited for and the detail cond returned last.
func waitDetail(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	var detail string
	ok := false
	deadline := time.Now().Add(timeout)
	interval := 5 * time.Millisecond
	for {
		if ok, detail = cond(); ok {
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		time.Sleep(min(interval, left))
		interval = min(2*interval, 200*time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s; last seen: %s", timeout, what, detail)
}

// clusterStatus is what `dpcache status --json` prints.
type clusterStatus struct {
	Members []memberStatus `json:"members"`
	Traffic struct {
		UpstreamBytes int64 `json:"upstream_bytes"`
		PeerBytes     int64 `json:"peer_bytes"`
		ServedBytes   int64 `json:"served_bytes"`
	} `json:"traffic"`
}

type memberStatus struct {
	Name     string              `json:"name"`
	Site     string              `json:"site"`
	GRPC     string              `json:"grpc"`
	State    string              `json:"state"`
	Versions map[string][]uint64 `json:"versions"`
}

// member returns the member named name, if listed.
func (s clusterStatus) member(name string) (memberStatus, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return memberStatus{}, false
}

// holds reports whether m holds serial of the test's product whole.
func (m memberStatus) holds(serial uint64) bool {
	return slices.Contains(m.Versions[product], serial)
}

// statusOf runs `dpcache status --node addr --json` and decodes its output,
// checking that the JSON has the fields the design names. A failed command
// (the node is down or busy) is an error, not a test failure, so callers can
// poll.
func statusOf(t *testing.T, addr string) (clusterStatus, error) {
	t.Helper()
	r := dpcache(t, "status", "--node", addr, "--json")
	if r.code != 0 {
		return clusterStatus{}, fmt.Errorf("%s", r)
	}
	return decodeStatus(t, []byte(r.stdout)), nil
}

// decodeStatus decodes `status --json` output; unknown or missing fields
// fail the test (the format is a contract for scripts).
func decodeStatus(t *testing.T, out []byte) clusterStatus {
	t.Helper()
	var raw struct {
		Members []map[string]json.RawMessage `json:"members"`
		Traffic map[string]json.RawMessage   `json:"traffic"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	wantMember := []string{"grpc", "name", "site", "state", "versions"}
	for _, m := range raw.Members {
		if got := sortedKeys(m); !slices.Equal(got, wantMember) {
			t.Fatalf("status --json member fields = %v, want %v\n%s", got, wantMember, out)
		}
	}
	if got, want := sortedKeys(raw.Traffic), []string{"peer_bytes", "served_bytes", "upstream_bytes"}; !slices.Equal(got, want) {
		t.Fatalf("status --json traffic fields = %v, want %v\n%s", got, want, out)
	}
	var st clusterStatus
	dec := json.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("decode status --json: %v\n%s", err, out)
	}
	return st
}

func sortedKeys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// localTraffic asks one DP for its own byte counters (AdminService.GetStatus
// with local_only, as grpcurl would): `dpcache status` sums them over the
// cluster.
func localTraffic(t *testing.T, addr string) (*pb.Traffic, error) {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client for %s: %v", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := pb.NewAdminServiceClient(conn).GetStatus(ctx, &pb.GetStatusRequest{LocalOnly: true})
	if err != nil {
		return nil, err
	}
	if len(resp.GetMembers()) != 1 {
		return nil, fmt.Errorf("DP %s answered a local status with %d members", addr, len(resp.GetMembers()))
	}
	return resp.GetMembers()[0].GetTraffic(), nil
}

// rendezvousOwner returns the name among names that owns key, as the
// DPs compute it (gossip.RankNames). Tests use it to start work where they
// want it; they then check by the DPs' traffic counters that the DP
// computed here is the one that fetched upstream.
func rendezvousOwner(key string, names []string) string {
	return gossip.RankNames(key, names)[0]
}

// restartNginx starts nginx again after n.Stop, with the same configuration:
// the same port, root and access log (appended to). The new process is
// stopped by the test's cleanup. It waits until latest.json is served.
func restartNginx(t *testing.T, n *testenv.Nginx) {
	t.Helper()
	bin := testenv.RequireBinary(t, "nginx")
	p := testenv.StartProc(t, bin, "-p", n.Dir+"/", "-c", n.ConfPath, "-e", n.ErrorLog, "-g", "daemon off;")
	url := n.URL + product + "/latest.json"
	testenv.WaitFor(t, readyTimeout, "nginx to serve "+url+" again", func() bool {
		if p.Exited() {
			t.Fatalf("nginx exited at restart (exit %d): %s\nerror log:\n%s", p.ExitCode(), p.Stderr(), readFileString(n.ErrorLog))
		}
		return httpStatus(url) == http.StatusOK
	})
}

// httpStatus returns the status of GET url, 0 on a transport error.
func httpStatus(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func readFileString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return string(b)
}

// partPath is where the agent keeps a blob it is downloading.
func partPath(dir, digest string) string {
	return filepath.Join(dir, product, ".dpcache", "blobs", digest+".part")
}

// fileSize returns the size of file, 0 if it does not exist.
func fileSize(file string) int64 {
	fi, err := os.Stat(file)
	if err != nil {
		return 0
	}
	return fi.Size()
}
