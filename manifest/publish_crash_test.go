package manifest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// crashRepoEnv names the repository of TestPublish_Killed's child process.
const crashRepoEnv = "DPCACHE_TEST_PUBLISH_KILLED_REPO"

// checkBlobNames fails t if a file of the blobs folder is named after a
// digest its bytes do not have, and returns the temporary files found.
func checkBlobNames(t *testing.T, repo string) (blobs int, temps []string) {
	t.Helper()
	dir := filepath.Join(repo, filepath.FromSlash(BlobDir))
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			temps = append(temps, e.Name())
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if SHA256Hex(data) != e.Name() {
			t.Errorf("blob %s holds %d bytes of another digest", e.Name(), len(data))
		}
		blobs++
	}
	return blobs, temps
}

// A publish that fails after some of its chunks are written (as on a full
// disk) leaves the previous latest.json, no manifest of the new version,
// only whole blobs under digest names (those of batches already synced)
// and no temporary file; publishing again completes the version.
func TestPublish_FailsMidway(t *testing.T) { // not parallel: sets package hooks
	defer func(n int64) { blobFlushBytes = n }(blobFlushBytes)
	blobFlushBytes = 1 << 20 // a dozen chunks per batch: some renamed before the failure
	key, tr := newKey(t)
	repo := t.TempDir()
	big := make([]byte, 4<<20)
	randFill(11, big)
	src := writeTree(t, map[string]string{"bases/big.db": string(big)})
	opts := PublishOptions{Repo: repo, Product: "kes", Version: "1", Key: key, Now: fixedClock(), Chunk: true}
	if _, err := Publish(opts, src); err != nil {
		t.Fatal(err)
	}
	latest1, _ := readRepo(t, repo, LatestPath("kes"))
	before, _ := checkBlobNames(t, repo)

	randFill(12, big) // v2 shares nothing with v1
	src = writeTree(t, map[string]string{"bases/big.db": string(big)})
	opts.Version = "2"
	full := errors.New("no space left on device (injected)")
	var written atomic.Int32
	testHookBlobWritten = func() error {
		if n := written.Add(1); n == 30 {
			waitRenamed(t, repo, before) // a batch of v2 is in
		} else if n > 30 {
			return full
		}
		return nil
	}
	_, err := Publish(opts, src)
	testHookBlobWritten = nil
	if !errors.Is(err, full) {
		t.Fatalf("Publish = %v, want the injected error", err)
	}
	if latest, _ := readRepo(t, repo, LatestPath("kes")); string(latest) != string(latest1) {
		t.Fatal("a failed publish changed latest.json")
	}
	if _, err := os.Stat(filepath.Join(repo, filepath.FromSlash(ManifestPath("kes", "2")))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed publish wrote its manifest: %v", err)
	}
	after, temps := checkBlobNames(t, repo)
	if len(temps) > 0 {
		t.Fatalf("temporary files left by a failed publish: %v", temps)
	}
	if m := checkRepo(t, tr, repo, "kes"); m.Version != "1" {
		t.Fatalf("latest is %s, want 1", m.Version)
	}
	res, err := Publish(opts, src)
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsReused != after-before {
		t.Errorf("republish reused %d blobs, want the %d renamed in before the failure", res.BlobsReused, after-before)
	}
	if m := checkRepo(t, tr, repo, "kes"); m.Version != "2" {
		t.Fatalf("latest is %s, want 2", m.Version)
	}
}

// A publish killed (SIGKILL) in the middle of writing chunks leaves no
// latest.json and only whole blobs under digest names. Its temporary files
// stay until they are an hour old; the next publish then removes them and
// completes the version.
func TestPublish_Killed(t *testing.T) {
	if repo := os.Getenv(crashRepoEnv); repo != "" {
		publishUntilKilled(t, repo)
		return
	}
	t.Parallel()
	repo := filepath.Join(t.TempDir(), "repo")
	if err := os.Mkdir(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(repo, "ready")
	cmd := exec.Command(os.Args[0], "-test.run=^TestPublish_Killed$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashRepoEnv+"="+repo)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		select {
		case err := <-waited:
			t.Fatalf("the publishing process ended before it was killed: %v\n%s", err, out.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			<-waited
			t.Fatalf("the publishing process did not reach its 30th chunk in 60s\n%s", out.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-waited

	if _, err := os.Stat(filepath.Join(repo, filepath.FromSlash(LatestPath("kes")))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a killed first publish left a latest.json: %v", err)
	}
	blobs, temps := checkBlobNames(t, repo)
	if blobs == 0 || len(temps) == 0 {
		t.Fatalf("killed after 30 chunks: %d blobs renamed in, %d temporary files; want some of each", blobs, len(temps))
	}
	// A fresh temporary file may be a running publish's: kept.
	key, tr := newKey(t)
	src := writeTree(t, map[string]string{"bases/big.db": string(crashTestData())})
	opts := PublishOptions{Repo: repo, Product: "kes", Version: "1", Key: key, Chunk: true}
	if _, err := Publish(opts, src); err != nil {
		t.Fatal(err)
	}
	if _, left := checkBlobNames(t, repo); len(left) != len(temps) {
		t.Fatalf("%d temporary files after a publish, want the %d fresh ones kept", len(left), len(temps))
	}
	// An hour later they are a crash's leftovers: removed.
	old := time.Now().Add(-staleTempAge - time.Minute)
	for _, name := range temps {
		if err := os.Chtimes(filepath.Join(repo, filepath.FromSlash(BlobDir), name), old, old); err != nil {
			t.Fatal(err)
		}
	}
	opts.Version = "2"
	if _, err := Publish(opts, src); err != nil {
		t.Fatal(err)
	}
	if _, left := checkBlobNames(t, repo); len(left) != 0 {
		t.Fatalf("temporary files an hour old not removed: %v", left)
	}
	checkRepo(t, tr, repo, "kes")
}

// crashTestData is the file TestPublish_Killed publishes: 4 MiB.
func crashTestData() []byte {
	b := make([]byte, 4<<20)
	randFill(21, b)
	return b
}

// waitRenamed waits until the blobs folder of repo holds more than n
// blobs under their names.
func waitRenamed(t *testing.T, repo string, n int) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		entries, _ := os.ReadDir(filepath.Join(repo, filepath.FromSlash(BlobDir)))
		blobs := 0
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tempPrefix) {
				blobs++
			}
		}
		if blobs > n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("no batch of blobs renamed in after 30s")
}

// publishUntilKilled is TestPublish_Killed's child: it publishes into repo
// in small batches and, once 30 chunks are written and a batch is renamed
// in, marks repo/ready and blocks inside Publish until killed.
func publishUntilKilled(t *testing.T, repo string) {
	blobFlushBytes = 1 << 20
	key, _ := newKey(t)
	// The source goes next to the repository, in the parent's folder: a
	// killed process cleans up nothing of its own.
	src := filepath.Join(filepath.Dir(repo), "src")
	if err := os.MkdirAll(filepath.Join(src, "bases"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bases", "big.db"), crashTestData(), 0o644); err != nil {
		t.Fatal(err)
	}
	var written atomic.Int32
	testHookBlobWritten = func() error {
		if written.Add(1) == 30 {
			waitRenamed(t, repo, 0)
			if err := os.WriteFile(filepath.Join(repo, "ready"), nil, 0o644); err != nil {
				t.Error(err)
			}
			select {} // killed here
		}
		return nil
	}
	_, err := Publish(PublishOptions{Repo: repo, Product: "kes", Version: "1", Key: key, Chunk: true}, src)
	t.Fatalf("Publish returned (%v) instead of blocking until killed", err)
}
