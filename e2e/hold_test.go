package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// rollback holds a product: `update --json` then installs nothing, says
// "held" and exits 0, a second rollback fails with one line, and unhold
// lets the next update go to the newest version again. Two install roots
// on this host report to a DP as two endpoints with one host name, and
// the held one shows "held".
func TestE2E_RollbackHoldUnhold(t *testing.T) {
	t.Parallel()
	work, k, src, repo, v1 := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 64 << 10, "modules/engine.bin": 16 << 10})
	dp := startNode(t, repo, k.pub)
	ep, other := filepath.Join(work, "endpoint"), filepath.Join(work, "endpoint-2")

	if got := update(t, dp.URL(), ep, k.pub); got.Version != "1.0" || got.Status != "updated" {
		t.Fatalf("first update = %+v", got)
	}
	v2 := writeFiles(t, src, map[string]int{"databases/base.dat": 64 << 10})
	v2["modules/engine.bin"] = v1["modules/engine.bin"]
	publish(t, repo, k, "1.1", src)
	testenv.WaitFor(t, eventually, "the DP to offer 1.1", func() bool {
		return update(t, dp.URL(), ep, k.pub).Version == "1.1"
	})
	update(t, dp.URL(), other, k.pub)

	rb := mustRun(t, "rollback", "--dir", ep, "--product", product)
	mustContain(t, rb.stdout, "1.0", "held", "dpcache unhold")
	checkTree(t, current(ep), v1)

	// Held: nothing installed, status held, exit 0.
	got := update(t, dp.URL(), ep, k.pub)
	want := updateResult{Product: product, Version: "1.0", Serial: 1, Status: "held"}
	if got != want {
		t.Errorf("update while held = %+v, want %+v", got, want)
	}
	checkTree(t, current(ep), v1)
	text := mustRun(t, "update", "--source", dp.URL(), "--product", product, "--dir", ep, "--trust", k.pub)
	mustContain(t, text.stdout, "held", "1.0", "unhold")

	// A second rollback fails: one line, what and what to do.
	again := dpcache(t, "rollback", "--dir", ep, "--product", product)
	mustContain(t, errorLine(t, again), "held", "1.0", "nothing older", "dpcache unhold --dir "+ep)
	if lines := nonEmptyLines(again.stderr); len(lines) != 1 {
		t.Errorf("second rollback: stderr has %d lines, want 1:\n%s", len(lines), again.stderr)
	}
	checkTree(t, current(ep), v1)

	// The DP lists two endpoints on this host, the held one as held.
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	var listed struct {
		Endpoints []struct {
			ID, Hostname, Version, Result, Age string
		} `json:"endpoints"`
	}
	out := mustRun(t, "endpoints", "--node", dp.GRPC, "--json")
	if err := json.Unmarshal([]byte(out.stdout), &listed); err != nil {
		t.Fatalf("endpoints --json: %v\n%s", err, out)
	}
	ids := map[string]string{}
	for _, dir := range []string{ep, other} {
		b, err := os.ReadFile(filepath.Join(dir, ".dpcache-id"))
		if err != nil {
			t.Fatalf("endpoint id of %s: %v", dir, err)
		}
		ids[strings.TrimSpace(string(b))] = dir
	}
	if len(listed.Endpoints) != 2 || len(ids) != 2 {
		t.Fatalf("endpoints = %+v, ids %v: want two endpoints", listed.Endpoints, ids)
	}
	for _, e := range listed.Endpoints {
		wantResult, wantVersion := "updated", "1.1"
		if ids[e.ID] == ep {
			wantResult, wantVersion = "held", "1.0"
		} else if ids[e.ID] == "" {
			t.Errorf("endpoint %q is not one of the install roots' ids %v", e.ID, ids)
		}
		if e.Hostname != host || e.Result != wantResult || e.Version != wantVersion {
			t.Errorf("endpoint %+v, want host %q, %s at %s", e, host, wantResult, wantVersion)
		}
	}
	table := mustRun(t, "endpoints", "--node", dp.GRPC)
	mustContain(t, table.stdout, "held", "2 endpoints on 1 host", "1 held")

	// unhold, then the next update goes to the newest, from disk.
	un := mustRun(t, "unhold", "--dir", ep, "--product", product)
	mustContain(t, un.stdout, "released", "1.0")
	got = update(t, dp.URL(), ep, k.pub)
	if got.Version != "1.1" || got.Status != "updated" || got.BytesDownloaded != 0 {
		t.Errorf("update after unhold = %+v, want 1.1 updated from the files kept on disk", got)
	}
	checkTree(t, current(ep), v2)
	mustContain(t, errorLine(t, dpcache(t, "unhold", "--dir", ep, "--product", product)), "not held")
}
