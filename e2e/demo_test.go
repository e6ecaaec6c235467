package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// demoTmp returns an empty folder for the demo's TMPDIR and a func that
// lists what is left in it.
func demoTmp(t *testing.T) (testenv.ProcOptions, func() []string) {
	t.Helper()
	dir := t.TempDir()
	return testenv.ProcOptions{Env: []string{"TMPDIR=" + dir}}, func() []string {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
}

// The README's first command: it says what it runs, prints what the second
// update changed and where those bytes went, and leaves nothing behind.
func TestE2E_Demo(t *testing.T) {
	help := mustRun(t, "demo", "--help")
	mustContain(t, help.stdout, "three distribution points in two sites")

	opts, left := demoTmp(t)
	r := dpcacheWith(t, opts, "demo", "--endpoints", "3")
	if r.code != 0 {
		t.Fatalf("want exit 0, got %s", r)
	}
	mustContain(t, r.stdout,
		"vendor published avbases 1.0 (serial 1): 8 files, 34.1 MiB",
		"vendor published 1.1 (serial 2): 3 of 8 files changed, 9.1 MiB of 34.1 MiB",
		"the update from 1.0 to 1.1: 9.1 MiB changed",
		"the internet link carried 18.1 MiB (the 9.1 MiB changed, once per site) instead of 27.2 MiB without DPs")
	if l := left(); len(l) != 0 {
		t.Errorf("the demo left %v in its TMPDIR", l)
	}
}

// demo --secure runs the same site with a CA, mTLS on every link and an
// encrypted gossip: the endpoints update over grpcs:// with their own
// certificates, and the figures are those of the plain demo.
func TestE2E_Demo_Secure(t *testing.T) {
	opts, left := demoTmp(t)
	r := dpcacheWith(t, opts, "demo", "--secure", "--endpoints", "3")
	if r.code != 0 {
		t.Fatalf("want exit 0, got %s", r)
	}
	mustContain(t, r.stdout,
		"site CA in ", "TLS and client certificates on every link, gossip encrypted",
		"serving at grpcs://127.0.0.1:",
		"the internet link carried 18.1 MiB (the 9.1 MiB changed, once per site) instead of 27.2 MiB without DPs")
	if strings.Contains(r.stdout, "grpc://") {
		t.Errorf("a secure demo reached a DP over plain grpc://:\n%s", r.stdout)
	}
	if l := left(); len(l) != 0 {
		t.Errorf("the demo left %v in its TMPDIR", l)
	}
}

// An interrupted demo (Ctrl-C, SIGTERM, a closed terminal; or twice, to
// stop at once) removes its temporary folder as a finished one does.
func TestE2E_Demo_InterruptedCleansUp(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sigs    []syscall.Signal
		wantErr string
	}{
		{"SIGINT", []syscall.Signal{syscall.SIGINT}, "dpcache: demo: interrupted (temporary folder "},
		{"SIGTERM", []syscall.Signal{syscall.SIGTERM}, "dpcache: demo: interrupted (temporary folder "},
		{"SIGHUP", []syscall.Signal{syscall.SIGHUP}, "dpcache: demo: interrupted (temporary folder "},
		{"twice", []syscall.Signal{syscall.SIGINT, syscall.SIGINT}, "dpcache: demo: interrupted twice: stopped at once"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts, left := demoTmp(t)
			// Enough endpoints that round 1 lasts while the signal comes.
			args := []string{"demo", "--endpoints", "20"}
			p := testenv.StartProcWith(t, opts, testenv.BuildDpcache(t), args...)
			deadline := time.Now().Add(cmdTimeout)
			for !strings.Contains(p.Stdout(), "round 1") {
				if p.Exited() || time.Now().After(deadline) {
					t.Fatalf("the demo never reached round 1: %s", waitProc(t, p, args))
				}
				time.Sleep(10 * time.Millisecond)
			}
			if l := left(); len(l) != 1 || !strings.HasPrefix(l[0], "dpcache-demo-") {
				t.Fatalf("TMPDIR mid-run holds %v, want one dpcache-demo-* folder", l)
			}
			for i, sig := range tc.sigs {
				if i > 0 {
					// Two pending signals of one kind merge into one: let
					// the first be taken.
					time.Sleep(100 * time.Millisecond)
				}
				if err := p.Signal(sig); err != nil {
					t.Fatal(err)
				}
			}
			r := waitProc(t, p, args)
			if r.code == 0 {
				t.Fatalf("an interrupted demo exits 0: %s", r)
			}
			if line := errorLine(t, r); !strings.HasPrefix(line, tc.wantErr) {
				t.Errorf("error line %q, want it to start with %q", line, tc.wantErr)
			}
			if l := left(); len(l) != 0 {
				t.Errorf("the interrupted demo left %v in its TMPDIR", l)
			}
		})
	}
}
