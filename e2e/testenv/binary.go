package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// debianPackages maps a binary to the Debian package that provides it, for the
// message of a skipped test. A binary not listed is assumed to come from the
// package of the same name.
var debianPackages = map[string]string{
	"nginx":    "nginx",
	"minisign": "minisign",
	"promtool": "prometheus",
	"useradd":  "passwd",
	"vsftpd":   "vsftpd",
	"squid":    "squid",
	"curl":     "curl",
	"fuser":    "psmisc",
	"killall":  "psmisc",
	"go":       "golang-go (or Go from https://go.dev/dl/)",
	"git":      "git",
}

// sbinDirs are searched after PATH: Debian installs daemons such as nginx in
// /usr/sbin, which is not on an unprivileged user's PATH.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// RequireBinary returns the absolute path of the executable name, looked up in
// PATH and then in the sbin directories. If it is missing, the test is skipped
// with [SkipMissing], naming the Debian package to install, unless the
// environment variable CI is non-empty: then the test fails, because CI must
// never pass by skipping. It is safe for concurrent use.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	return requireBinary(t, name, os.Getenv("CI") != "", SkipMissing)
}

// requireBinary is RequireBinary with the CI setting and the skip given.
func requireBinary(t testing.TB, name string, ci bool, skip func(t testing.TB, need, install string)) string {
	t.Helper()
	if path, err := lookBinary(name); err == nil {
		return path
	}
	pkg, ok := debianPackages[name]
	if !ok {
		pkg = name
	}
	if ci {
		t.Fatalf("testenv: %q is not installed (not in PATH nor %v); CI is set, so this fails instead of skipping: install the Debian package %s (.ci/run does)", name, sbinDirs, pkg)
		return ""
	}
	skip(t, name, fmt.Sprintf("not in PATH nor %v: apt-get install %s", sbinDirs, pkg))
	return ""
}

// lookBinary finds name in PATH, then in sbinDirs.
func lookBinary(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return filepath.Abs(path)
	}
	for _, dir := range sbinDirs {
		if p, lerr := exec.LookPath(filepath.Join(dir, name)); lerr == nil {
			return p, nil
		}
	}
	return "", err
}

// RequireTool returns the absolute path of name, a tool that `make tools`
// pins and installs (grpcurl), looked up where the Makefile installs it
// (GOBIN when set, else the module's .bin), then in PATH. If it is missing,
// the test is skipped with [SkipMissing], saying to run `make tools`,
// unless CI is set: then it fails, as with [RequireBinary]. It is safe for
// concurrent use.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	dirs := []string{filepath.Join(ModuleRoot(t), ".bin")}
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append([]string{gobin}, dirs...)
	}
	return requireTool(t, name, dirs, os.Getenv("CI") != "", SkipMissing)
}

// requireTool is RequireTool with the directories, the CI setting and the
// skip given.
func requireTool(t testing.TB, name string, dirs []string, ci bool, skip func(t testing.TB, need, install string)) string {
	t.Helper()
	// The empty directory last: LookPath of the bare name searches PATH.
	for _, dir := range append(dirs, "") {
		if p, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				return abs
			}
		}
	}
	if ci {
		t.Fatalf("testenv: %q is not installed (not in %v nor PATH); CI is set, so this fails instead of skipping: run `make tools` (.ci/deps does), which installs the pinned version", name, dirs)
		return ""
	}
	skip(t, name, fmt.Sprintf("not in %v nor PATH: make tools (installs the pinned version)", dirs))
	return ""
}
