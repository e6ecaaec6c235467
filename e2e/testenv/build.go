package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// dpcachePackage is the import path of the command BuildDpcache builds.
const dpcachePackage = "github.com/dpcache/dpcache/cmd/dpcache"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// BuildDpcache builds the dpcache command from the module under test, once
// per test binary, and returns the executable's path. The first call builds
// (quick when Go's build cache is warm); later calls, from any goroutine, get
// the same path, or the same failure.
//
// The binary lives in a directory of the system's temporary directory keyed
// by the module's path on disk, replaced by rename: test binaries of one
// checkout running at once share it safely, and nothing piles up.
func BuildDpcache(t testing.TB) string {
	t.Helper()
	// Outside the Once: a skip (runtime.Goexit) inside Do would mark it done.
	goBin := RequireBinary(t, "go")
	buildOnce.Do(func() { buildPath, buildErr = buildDpcache(goBin) })
	if buildErr != nil {
		t.Fatalf("testenv: build dpcache: %v", buildErr)
	}
	return buildPath
}

func buildDpcache(goBin string) (string, error) {
	root, err := moduleRoot(goBin)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), "dpcache-testenv-"+strconv.Itoa(os.Geteuid()), hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "dpcache.build-*")
	if err != nil {
		return "", fmt.Errorf("create a build output in %s: %w", dir, err)
	}
	tmpPath := tmp.Name()
	_ = tmp.Close()
	defer os.Remove(tmpPath) // left only if the rename did not happen

	cmd := exec.Command(goBin, "build", "-o", tmpPath, dpcachePackage)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s in %s: %w\n%s", dpcachePackage, root, err, out.String())
	}
	final := filepath.Join(dir, "dpcache")
	if err := os.Rename(tmpPath, final); err != nil {
		return "", fmt.Errorf("install the built binary as %s: %w", final, err)
	}
	return final, nil
}

// ModuleRoot returns the directory holding the go.mod of the module the test
// runs in (tests run in their package's directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot(RequireBinary(t, "go"))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return root
}

func moduleRoot(goBin string) (string, error) {
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside a Go module (run the test from the dpcache checkout)")
	}
	return filepath.Dir(gomod), nil
}
