package e2e

import (
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// The vendor's key pair from `dpcache keygen` works with the stock minisign
// tool, the secret key is private, and existing keys are never overwritten.
func TestE2E_Keygen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k, r := dpcacheKeygen(t, dir, "vendor")
	if r.code != 0 {
		t.Fatalf("dpcache keygen -o %s failed: %s", filepath.Join(dir, "vendor"), r)
	}
	fi, err := os.Stat(k.key)
	if err != nil {
		t.Fatalf("secret key: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %v, want 0600", k.key, fi.Mode().Perm())
	}
	pubBefore, err := os.ReadFile(k.pub)
	if err != nil {
		t.Fatalf("public key: %v", err)
	}

	// The stock tool signs with the secret key and verifies with the public one.
	doc := filepath.Join(dir, "doc.txt")
	if err := os.WriteFile(doc, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ms := testenv.RequireBinary(t, "minisign")
	sign := waitProc(t, testenv.StartProc(t, ms, "-S", "-s", k.key, "-m", doc), []string{"(minisign) -S"})
	if sign.code != 0 {
		t.Fatalf("minisign -S with the dpcache key: %s", sign)
	}
	verifyWithMinisign(t, doc, k.pub)

	// A second keygen to the same name fails and leaves the keys alone.
	_, again := dpcacheKeygen(t, dir, "vendor")
	errorLine(t, again)
	if pubAfter, _ := os.ReadFile(k.pub); string(pubAfter) != string(pubBefore) {
		t.Error("a second keygen overwrote the public key")
	}
}

// The whole path on real parts: keygen and publish (processes), nginx as the
// origin, a DP process, endpoint updates through it, an incremental update,
// rollback and unhold, and a components subset.
func TestE2E_PublishServeUpdateRollback(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k, r := dpcacheKeygen(t, work, "vendor")
	if r.code != 0 {
		// Reported here, and the rest of the path still checked.
		t.Errorf("dpcache keygen failed; checking the rest with a minisign -G -W key: %s", r)
		k = minisignKeygen(t, work, "vendor-minisign")
	}

	// Version 1.0: databases at the top and in a folder, modules in two levels.
	src := filepath.Join(work, "src")
	sizes := map[string]int{
		"databases/av-base.dat": 2 << 20,
		"databases/av-ext.dat":  1<<20 + 123,
		"daily.idx":             200 << 10,
		"modules/engine.bin":    1536 << 10,
		"modules/ui/plugin.bin": 300<<10 + 7,
	}
	v1 := writeFiles(t, src, sizes)
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	for _, doc := range []string{"latest.json", "1.0/manifest.json"} {
		verifyWithMinisign(t, filepath.Join(repo, product, filepath.FromSlash(doc)), k.pub)
	}

	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dp := startNode(t, origin.URL, k.pub)
	ep := filepath.Join(work, "endpoint")

	// First update through a cold DP: everything, verified.
	got := update(t, dp.URL(), ep, k.pub)
	want := updateResult{Product: product, Version: "1.0", Serial: 1, Status: "updated", Source: dp.URL(),
		BytesDownloaded: sumSizes(sizes, v1), FilesChanged: len(v1)}
	if got != want {
		t.Fatalf("first update = %+v, want %+v", got, want)
	}
	checkTree(t, current(ep), v1)

	// Nothing new: up to date, nothing downloaded.
	got = update(t, dp.URL(), ep, k.pub)
	want = updateResult{Product: product, Version: "1.0", Serial: 1, Status: "up-to-date", Source: dp.URL()}
	if got != want {
		t.Fatalf("second update = %+v, want %+v", got, want)
	}

	// Version 1.1 changes one file. The DP notices it at its next refresh
	// and announces it once held whole; until then endpoints are up to date.
	sizes["daily.idx"] = 250 << 10
	v2 := maps.Clone(v1)
	maps.Copy(v2, writeFiles(t, src, map[string]int{"daily.idx": sizes["daily.idx"]}))
	publish(t, repo, k, "1.1", src)
	testenv.WaitFor(t, eventually, "the DP to offer 1.1", func() bool {
		got = update(t, dp.URL(), ep, k.pub)
		return got.Status == "updated"
	})
	want = updateResult{Product: product, Version: "1.1", Serial: 2, Status: "updated", Source: dp.URL(),
		BytesDownloaded: int64(sizes["daily.idx"]), FilesChanged: 1}
	if got != want {
		t.Fatalf("update to 1.1 = %+v, want %+v (only the changed file downloaded)", got, want)
	}
	checkTree(t, current(ep), v2)

	// The origin served each blob of both versions exactly once.
	testenv.WaitFor(t, eventually, "nginx to log the new blob", func() bool {
		return origin.CountRequests(t, blobURI(v2["daily.idx"])) >= 1
	})
	for _, digest := range []string{v1["databases/av-base.dat"], v1["daily.idx"], v2["daily.idx"], v1["modules/engine.bin"]} {
		if n := origin.CountRequests(t, blobURI(digest)); n != 1 {
			t.Errorf("origin served blob %s %d times, want once", digest, n)
		}
	}

	// Rollback, on the admin's command: current holds 1.0's files again.
	rb := mustRun(t, "rollback", "--dir", ep, "--product", product)
	mustContain(t, rb.stdout, "1.0")
	checkTree(t, current(ep), v1)

	// Held there: the next update installs nothing; after unhold it moves
	// forward again, from the files kept on disk.
	if got = update(t, dp.URL(), ep, k.pub); got.Status != "held" || got.Version != "1.0" {
		t.Errorf("update after rollback = %+v, want held at 1.0", got)
	}
	checkTree(t, current(ep), v1)
	mustRun(t, "unhold", "--dir", ep, "--product", product)
	got = update(t, dp.URL(), ep, k.pub)
	if got.Version != "1.1" || got.Status != "updated" || got.BytesDownloaded != 0 || got.FilesChanged != 1 {
		t.Errorf("update after unhold = %+v, want 1.1 updated from disk: 0 bytes downloaded, 1 file changed", got)
	}
	checkTree(t, current(ep), v2)

	// Components: databases only, then the modules added to the same version.
	ep2 := filepath.Join(work, "endpoint-databases")
	dbs := v2.only("databases/", "daily.idx")
	got = update(t, dp.URL(), ep2, k.pub, "--components", "databases")
	want = updateResult{Product: product, Version: "1.1", Serial: 2, Status: "updated", Source: dp.URL(),
		BytesDownloaded: sumSizes(sizes, dbs), FilesChanged: len(dbs)}
	if got != want {
		t.Fatalf("update --components databases = %+v, want %+v", got, want)
	}
	checkTree(t, current(ep2), dbs)
	mods := v2.only("modules/")
	got = update(t, dp.URL(), ep2, k.pub)
	if got.Version != "1.1" || got.Status != "updated" || got.BytesDownloaded != sumSizes(sizes, mods) || got.FilesChanged != len(mods) {
		t.Errorf("update with every component after databases only = %+v, want 1.1 updated with the %d modules (%d bytes)",
			got, len(mods), sumSizes(sizes, mods))
	}
	checkTree(t, current(ep2), v2)
}
