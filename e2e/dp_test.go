package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// Twenty endpoints update at once through a DP that holds nothing yet: all
// get the same verified files, and the origin sends each blob once.
func TestE2E_TwentyAgentsColdDP(t *testing.T) {
	t.Parallel()
	const agents = 20
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	sizes := map[string]int{
		"databases/base-a.dat": 8 << 20,
		"databases/base-b.dat": 8 << 20,
		"databases/base-c.dat": 6<<20 + 4321,
		"databases/index.idx":  96 << 10,
		"modules/engine.bin":   6 << 20,
		"modules/gui.bin":      3<<20 + 17,
	}
	files := writeFiles(t, src, sizes)
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "7.0", src)
	// Slow enough that the agents' requests overlap the DP's fetches.
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "20m"})
	dp := startNode(t, origin.URL, k.pub)

	procs := make([]*testenv.Proc, agents)
	args := make([][]string, agents)
	for i := range procs {
		id := fmt.Sprintf("endpoint-%02d", i)
		args[i] = updateArgs(dp.URL(), filepath.Join(work, id), k.pub, "--id", id)
		procs[i] = startDpcache(t, args[i]...)
	}
	for i, p := range procs {
		res := parseUpdate(t, waitProc(t, p, args[i]))
		want := updateResult{Product: product, Version: "7.0", Serial: 1, Status: "updated", Source: dp.URL(),
			BytesDownloaded: sumSizes(sizes, files), FilesChanged: len(files)}
		if res != want {
			t.Errorf("agent %d: %+v, want %+v", i, res, want)
		}
	}
	for i := range procs {
		checkTree(t, current(filepath.Join(work, fmt.Sprintf("endpoint-%02d", i))), files)
	}

	// nginx logs a request after its last byte: wait for every blob.
	testenv.WaitFor(t, eventually, "every blob in nginx's access log", func() bool {
		for _, digest := range files {
			if origin.CountRequests(t, blobURI(digest)) == 0 {
				return false
			}
		}
		return true
	})
	for path, digest := range files {
		if n := origin.CountRequests(t, blobURI(digest)); n != 1 {
			t.Errorf("origin served %s (blob %s) %d times to %d agents, want once", path, digest, n, agents)
		}
	}
	if got, want := origin.BytesServed(t, "/blobs/"), sumSizes(sizes, files); got != want {
		t.Errorf("origin sent %d blob bytes, want %d (the product once)", got, want)
	}
}

// A DP killed with SIGKILL while it ingests a blob: the endpoint's update
// fails with a clear error; the DP restarted on the same data directory
// opens its cache and resumes the ingest where it stopped, and the endpoint
// resumes its own download.
func TestE2E_KillDPWhileIngesting(t *testing.T) {
	t.Parallel()
	const size = 32 << 20
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	files := writeFiles(t, src, map[string]int{"databases/big.dat": size})
	digest := files["databases/big.dat"]
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "3.0", src)
	// About 8 s for the whole blob: time to kill the DP in the middle.
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{LimitRate: "4m"})
	dp := startNode(t, origin.URL, k.pub)
	ep := filepath.Join(work, "endpoint")
	args := updateArgs(dp.URL(), ep, k.pub)
	first := startDpcache(t, args...)

	// A DP streams bytes as they arrive and stores them at least every
	// second, so once the endpoint has received a few seconds' worth, the
	// DP's cache holds part of the blob.
	part := filepath.Join(ep, product, ".dpcache", "blobs", digest+".part")
	var received int64
	testenv.WaitFor(t, 60*time.Second, "the endpoint to receive 8 MiB through the DP", func() bool {
		if fi, err := os.Stat(part); err == nil {
			received = fi.Size()
		}
		return received >= 8<<20 || first.Exited()
	})
	if first.Exited() {
		t.Fatalf("the update ended before the DP could be killed mid-ingest: %s", waitProc(t, first, args))
	}
	dp.proc.Kill()
	t.Logf("killed the DP once the endpoint had %d of %d bytes", received, size)

	line := errorLine(t, waitProc(t, first, args))
	mustContain(t, line, dp.URL())
	checkNotInstalled(t, ep)

	// The restarted DP opens the cache left by the kill and resumes.
	dp.restart(t)
	res := update(t, dp.URL(), ep, k.pub)
	if res.Status != "updated" || res.Version != "3.0" {
		t.Fatalf("update after the restart = %+v, want 3.0 updated", res)
	}
	if res.BytesDownloaded <= 0 || res.BytesDownloaded > size-received {
		t.Errorf("update after the restart downloaded %d bytes, want at most %d (the endpoint resumes at %d)",
			res.BytesDownloaded, size-received, received)
	}
	checkTree(t, current(ep), files)

	testenv.WaitFor(t, eventually, "nginx to log both transfers of the blob", func() bool {
		return len(blobEntries(t, origin, digest)) >= 2
	})
	entries := blobEntries(t, origin, digest)
	var total int64
	for _, e := range entries {
		total += e.Bytes
	}
	t.Logf("origin transfers of the blob: %+v", entries)
	if len(entries) != 2 {
		t.Errorf("origin served the blob %d times, want 2 (the killed ingest, then the resumed one)", len(entries))
	}
	if total >= 2*size {
		t.Errorf("origin sent %d bytes of a %d-byte blob, want less than twice its size (the DP must resume)", total, size)
	}
	resumed := entries[len(entries)-1]
	from, ok := rangeStart(resumed.Range)
	switch {
	case !ok:
		t.Errorf("the restarted DP fetched the blob with Range %q, want bytes=N- (a resume)", resumed.Range)
	case from == 0:
		t.Errorf("the restarted DP fetched the blob from byte 0, want a resume at what it had stored")
	case resumed.Bytes != size-from || !resumed.Complete:
		t.Errorf("resumed transfer %+v, want the %d bytes from %d to the end", resumed, size-from, from)
	}
}

// rangeStart parses an open Range header "bytes=N-".
func rangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, false
	}
	num, ok := strings.CutSuffix(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(num, 10, 64)
	return n, err == nil && n > 0
}
