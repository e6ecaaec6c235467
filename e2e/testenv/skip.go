package testenv

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// missingSkip is a test skipped because something it needs is missing.
type missingSkip struct {
	test    string // t.Name()
	need    string // what is missing: "nginx", "root", "a Docker engine"
	install string // how to get it: "apt-get install nginx"
}

// skipLog records the missing skips of a run. It is safe for concurrent
// use.
type skipLog struct {
	mu   sync.Mutex
	list []missingSkip
}

// skipped is the run's skipLog, which the summary reports.
var skipped skipLog

// SkipMissing skips t because need (a tool, root, a Docker engine) is
// missing on this machine, saying what to install in install, and records
// the skip for the summary that [VerifyTestMain] and [Main] print at the end
// of the package's run. It never fails the test: callers that must not
// pass by skipping in CI ([RequireBinary]) check CI first. It is safe for
// concurrent use.
func SkipMissing(t testing.TB, need, install string) {
	t.Helper()
	skipped.skip(t, need, install)
}

func (l *skipLog) skip(t testing.TB, need, install string) {
	t.Helper()
	l.mu.Lock()
	l.list = append(l.list, missingSkip{test: t.Name(), need: need, install: install})
	l.mu.Unlock()
	t.Skipf("testenv: SKIPPED, missing %s: %s (CI=true fails instead of skipping)", need, install)
}

// summary is the report of the skips of package pkg, sorted by test, or ""
// when there are none.
func (l *skipLog) summary(pkg string) string {
	l.mu.Lock()
	list := slices.Clone(l.list)
	l.mu.Unlock()
	if len(list) == 0 {
		return ""
	}
	slices.SortStableFunc(list, func(a, b missingSkip) int { return strings.Compare(a.test, b.test) })
	var sb strings.Builder
	fmt.Fprintf(&sb, "SKIPPED in %s: %d test(s), something they need is missing (CI=true fails them):\n", pkg, len(list))
	for _, s := range list {
		fmt.Fprintf(&sb, "    %s: missing %s: %s\n", s.test, s.need, s.install)
	}
	return sb.String()
}

// VerifyTestMain runs a package's tests as goleak.VerifyTestMain does (a
// goroutine left running fails a passing run), then reports the tests
// skipped for something missing; see [Main]. Call it from TestMain.
func VerifyTestMain(m *testing.M, options ...goleak.Option) {
	goleak.VerifyTestMain(m, append(options, goleak.Cleanup(func(code int) {
		reportSkips(code)
		os.Exit(code)
	}))...)
}

// Main runs a package's tests and exits, after printing the tests skipped
// because something they need was missing (SkipMissing, RequireBinary), with
// what to install. Call it from TestMain.
//
// go test shows a passing package's output only with -v, so a skip would go
// unnoticed in `go test ./...`: when the run passes without -v and go test
// captures the output, the summary is written to go test's own standard
// output (where its "ok" line goes) if that is a terminal or a pipe. A
// regular file is left alone: go test writes it at its own offset and
// would overwrite the summary. Runs whose result go test replays from its
// cache, "(cached)", print no summary; -count=1 runs them again.
func Main(m *testing.M) {
	code := m.Run()
	reportSkips(code)
	os.Exit(code)
}

// reportSkips prints the summary of missing skips, if any, where the user
// sees it: see Main.
func reportSkips(code int) {
	summary := skipped.summary(packagePath())
	if summary == "" {
		return
	}
	w := io.Writer(os.Stderr)
	if code == 0 && !testing.Verbose() {
		if f := goTestStdout(); f != nil {
			defer f.Close()
			w = f
		}
	}
	io.WriteString(w, summary)
}

// packagePath returns the import path of the package under test.
func packagePath() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Path != "" {
		return strings.TrimSuffix(bi.Path, ".test")
	}
	return os.Args[0]
}

// goTestStdout opens the standard output of the parent process if it is a
// terminal or a pipe that this process does not write to already: that is
// go test's own output, when go test captures this process's. Else nil.
func goTestStdout() *os.File {
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/1", os.Getppid()), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&(os.ModeCharDevice|os.ModeNamedPipe) == 0 {
		f.Close()
		return nil
	}
	for _, own := range []*os.File{os.Stdout, os.Stderr} {
		if ofi, err := own.Stat(); err == nil && os.SameFile(fi, ofi) {
			f.Close() // run directly, not by go test: os.Stderr is seen
			return nil
		}
	}
	return f
}
