package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// TestE2E_UpdateStaleSource: a version published with a one-second expiry
// is stale once it expires. `update --json` from that source alone still
// installs it (nothing newer is offered anywhere) but prints status
// "stale", exits 3 and says on one stderr line what is wrong.
func TestE2E_UpdateStaleSource(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/av-base.dat": 64 << 10})
	repo := filepath.Join(work, "repo")
	mustRun(t, "publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "1.0", "--expires", "1s", src)
	latest, err := os.ReadFile(filepath.Join(repo, product, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Expires time.Time }
	if err := json.Unmarshal(latest, &doc); err != nil || doc.Expires.IsZero() {
		t.Fatalf("latest.json has no expires: %v\n%s", err, latest)
	}
	testenv.WaitFor(t, 10*time.Second, "latest.json to expire", func() bool { return time.Now().After(doc.Expires) })

	ep := filepath.Join(work, "endpoint")
	r := dpcache(t, updateArgs(repo, ep, k.pub)...)
	if r.code != 3 {
		t.Fatalf("update from a stale source: want exit 3, got %s", r)
	}
	var res updateResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Status != "stale" || res.Version != "1.0" {
		t.Errorf("update --json = %q (%v), want status stale at 1.0", r.stdout, err)
	}
	checkTree(t, current(ep), files)
	if line := errorLine(t, r); !strings.Contains(line, "expired") {
		t.Errorf("stderr line %q does not say the sources are expired", line)
	}
}

// TestE2E_PublishEmptyFolder: publishing a folder with no files is refused
// (endpoints would install an empty version and lose their databases)
// unless --allow-empty is given.
func TestE2E_PublishEmptyFolder(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	empty := filepath.Join(work, "empty")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(work, "repo")
	args := []string{"publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "1.0", empty}
	r := dpcache(t, args...)
	if line := errorLine(t, r); !strings.Contains(line, "--allow-empty") {
		t.Errorf("stderr line %q does not name --allow-empty", line)
	}
	if _, err := os.Stat(filepath.Join(repo, product, "latest.json")); !os.IsNotExist(err) {
		t.Errorf("a refused publish wrote latest.json: %v", err)
	}
	mustRun(t, append(args, "--allow-empty")...)
}

// TestE2E_UpdateJSONFailure: `update --json` that fails prints the one
// object docs/design.md gives, {"product", "status": "failed", "error"},
// exits 1, and still says it on one stderr line.
func TestE2E_UpdateJSONFailure(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	empty := filepath.Join(work, "empty-share")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	r := dpcache(t, updateArgs(empty, filepath.Join(work, "endpoint"), k.pub)...)
	if r.code != 1 {
		t.Fatalf("update from a folder without the product: want exit 1, got %s", r)
	}
	var fields map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &fields); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, r)
	}
	if len(fields) != 3 || fields["product"] != product || fields["status"] != "failed" || !strings.Contains(fmt.Sprint(fields["error"]), "not found") {
		t.Errorf("update --json on failure = %v, want product, status failed and the error", fields)
	}
	if line := errorLine(t, r); !strings.Contains(line, "not found") {
		t.Errorf("stderr line %q", line)
	}
}
