package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestCrossBuildWindows builds the binary for Windows, where most
// endpoints run the agent, and vets for Windows the packages it runs there
// (their tests included: the agent's conformance tests run on Windows as
// they are). It compiles a lot: skipped with -short.
func TestCrossBuildWindows(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the whole binary; skipped with -short")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, goBin, args...)
		cmd.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("GOOS=windows go %v: %v\n%s", args, err, out)
		}
	}
	exe := filepath.Join(t.TempDir(), "dpcache.exe")
	run("build", "-o", exe, ".")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("MZ")) {
		t.Fatalf("%s is not a Windows executable (starts with %q)", exe, b[:min(len(b), 4)])
	}
	run("vet", ".", "../../agent/...", "../../manifest/...", "../../source/...", "../../node/...")
}
