package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeTB records Skip and Fatal instead of ending the test; like the real
// ones, they end the calling goroutine.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runFake runs fn with a fakeTB in its own goroutine and returns the record.
func runFake(t *testing.T, fn func(tb testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestRequireBinary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		bin         string
		ci          bool
		wantFound   bool
		wantSkipped bool
		wantFailed  bool
		wantMsg     string
	}{
		{name: "found", bin: "sh", wantFound: true},
		{name: "found in sbin", bin: "nginx", wantFound: true},
		{name: "missing skips", bin: "dpcache-no-such-binary", wantSkipped: true, wantMsg: "apt-get install dpcache-no-such-binary"},
		{name: "missing fails in CI", bin: "dpcache-no-such-binary", ci: true, wantFailed: true, wantMsg: "CI is set"},
		{name: "names the package", bin: "fuser-missing-test", wantSkipped: true, wantMsg: "fuser-missing-test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.bin == "nginx" {
				RequireBinary(t, "nginx")
			}
			var got string
			// The fake skip records nothing: these skips are not the run's.
			skip := func(tb testing.TB, need, install string) { tb.Skipf("%s: %s", need, install) }
			f := runFake(t, func(tb testing.TB) { got = requireBinary(tb, tt.bin, tt.ci, skip) })
			if f.skipped != tt.wantSkipped || f.failed != tt.wantFailed {
				t.Fatalf("skipped=%v failed=%v (%q), want skipped=%v failed=%v", f.skipped, f.failed, f.msg, tt.wantSkipped, tt.wantFailed)
			}
			if !strings.Contains(f.msg, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", f.msg, tt.wantMsg)
			}
			if tt.wantFound && !filepath.IsAbs(got) {
				t.Errorf("path %q is not absolute", got)
			}
		})
	}
}

func TestRequireTool(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "dpcache-pinned-tool"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	skip := func(tb testing.TB, need, install string) { tb.Skipf("%s: %s", need, install) }
	tests := []struct {
		name                    string
		tool                    string
		ci                      bool
		want                    string
		wantSkipped, wantFailed bool
		wantMsg                 string
	}{
		{name: "in the tools directory", tool: "dpcache-pinned-tool", want: filepath.Join(bin, "dpcache-pinned-tool")},
		{name: "in PATH", tool: "sh"},
		{name: "missing skips", tool: "dpcache-no-such-tool", wantSkipped: true, wantMsg: "make tools"},
		{name: "missing fails in CI", tool: "dpcache-no-such-tool", ci: true, wantFailed: true, wantMsg: "CI is set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got string
			f := runFake(t, func(tb testing.TB) { got = requireTool(tb, tt.tool, []string{bin}, tt.ci, skip) })
			if f.skipped != tt.wantSkipped || f.failed != tt.wantFailed {
				t.Fatalf("skipped=%v failed=%v (%q), want skipped=%v failed=%v", f.skipped, f.failed, f.msg, tt.wantSkipped, tt.wantFailed)
			}
			if !strings.Contains(f.msg, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", f.msg, tt.wantMsg)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("path %q, want %q", got, tt.want)
			}
			if !tt.wantSkipped && !tt.wantFailed && !filepath.IsAbs(got) {
				t.Errorf("path %q is not absolute", got)
			}
		})
	}
}

func TestFreeAddr(t *testing.T) {
	t.Parallel()
	addr := FreeAddr(t, "127.0.0.1")
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("FreeAddr = %q (%v), want 127.0.0.1:PORT", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the free address: %v", err)
	}
	_ = l.Close()
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	calls := 0
	WaitFor(t, 10*time.Second, "the third call", func() bool { calls++; return calls >= 3 })
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}

	f := runFake(t, func(tb testing.TB) {
		WaitFor(tb, 20*time.Millisecond, "something that never happens", func() bool { return false })
	})
	if !f.failed || !strings.Contains(f.msg, "something that never happens") {
		t.Errorf("failed=%v msg=%q, want a failure naming what was awaited", f.failed, f.msg)
	}
}

func TestNginxOptions_Normalize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, wantPrefix string
		rate           string
		wantErr        bool
	}{
		{in: "", wantPrefix: "/"},
		{in: "/", wantPrefix: "/"},
		{in: "updates", wantPrefix: "/updates/"},
		{in: "/updates/", wantPrefix: "/updates/"},
		{in: "/a/b", wantPrefix: "/a/b/"},
		{in: "/a/../b/", wantErr: true},
		{in: "/a b/", wantErr: true},
		{in: "/a;/", wantErr: true},
		{in: "//", wantErr: true},
		{in: "/", rate: "64k", wantPrefix: "/"},
		{in: "/", rate: "1m; evil", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in+"|"+tt.rate, func(t *testing.T) {
			t.Parallel()
			got, err := NginxOptions{Prefix: tt.in, LimitRate: tt.rate}.normalize()
			if (err != nil) != tt.wantErr {
				t.Fatalf("normalize(%q, %q) error = %v, want error %v", tt.in, tt.rate, err, tt.wantErr)
			}
			if err == nil && got.Prefix != tt.wantPrefix {
				t.Errorf("Prefix = %q, want %q", got.Prefix, tt.wantPrefix)
			}
		})
	}
}

// writeFile writes n random bytes at root/name and returns them.
func writeFile(t *testing.T, root, name string, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	p := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// get fetches url with an optional Range header and returns status and body.
func get(t *testing.T, client *http.Client, url, rng string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, body
}

func TestNginx_ServesFilesAndLogs(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	const size = 1 << 20
	data := writeFile(t, root, "blobs/sha256/aa.bin", size)
	writeFile(t, root, "p/latest.json", 10)
	n := StartNginx(t, root, NginxOptions{})
	client := newClient(t)

	if !strings.HasPrefix(n.URL, "http://127.0.0.1:") || !strings.HasSuffix(n.URL, "/") {
		t.Errorf("URL = %q, want http://127.0.0.1:PORT/", n.URL)
	}
	status, body := get(t, client, n.URL+"blobs/sha256/aa.bin", "")
	if status != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("full GET: status %d, %d bytes equal=%v; want 200 and the file", status, len(body), bytes.Equal(body, data))
	}
	status, body = get(t, client, n.URL+"blobs/sha256/aa.bin", "bytes=100-199")
	if status != http.StatusPartialContent || !bytes.Equal(body, data[100:200]) {
		t.Fatalf("range GET: status %d, %d bytes; want 206 and bytes 100-199", status, len(body))
	}
	status, _ = get(t, client, n.URL+"p/latest.json?x=1", "")
	if status != http.StatusOK {
		t.Fatalf("GET latest.json: status %d", status)
	}
	status, _ = get(t, client, n.URL+"missing", "")
	if status != http.StatusNotFound {
		t.Fatalf("GET missing: status %d, want 404", status)
	}

	WaitFor(t, 10*time.Second, "4 requests in the access log", func() bool { return n.CountRequests(t, "") == 4 })
	if got := n.CountRequests(t, "aa.bin"); got != 2 {
		t.Errorf("CountRequests(aa.bin) = %d, want 2", got)
	}
	if got := n.CountRequests(t, "latest.json"); got != 1 {
		t.Errorf("CountRequests(latest.json) = %d, want 1 (query ignored)", got)
	}
	if got := n.BytesServed(t, "/blobs/"); got != size+100 {
		t.Errorf("BytesServed(/blobs/) = %d, want %d", got, size+100)
	}
	reqs := n.Requests(t)
	want := []AccessEntry{
		{Method: "GET", URI: "/blobs/sha256/aa.bin", Status: 200, Bytes: size, Complete: true},
		{Method: "GET", URI: "/blobs/sha256/aa.bin", Status: 206, Bytes: 100, Range: "bytes=100-199", Complete: true},
		{Method: "GET", URI: "/p/latest.json?x=1", Status: 200, Bytes: 10, Complete: true},
	}
	for i, w := range want {
		if reqs[i] != w {
			t.Errorf("request %d = %+v, want %+v", i, reqs[i], w)
		}
	}
	if reqs[3].Status != 404 {
		t.Errorf("request 3 status = %d, want 404", reqs[3].Status)
	}
}

func TestNginx_Prefix(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := writeFile(t, root, "f.bin", 1000)
	n := StartNginx(t, root, NginxOptions{Prefix: "updates"})
	client := newClient(t)

	if !strings.HasSuffix(n.URL, "/updates/") {
		t.Errorf("URL = %q, want it to end in /updates/", n.URL)
	}
	status, body := get(t, client, n.URL+"f.bin", "")
	if status != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("GET under the prefix: status %d, want 200 and the file", status)
	}
	status, _ = get(t, client, "http://"+n.Addr+"/f.bin", "")
	if status != http.StatusNotFound {
		t.Errorf("GET outside the prefix: status %d, want 404", status)
	}
	WaitFor(t, 10*time.Second, "2 logged requests", func() bool { return n.CountRequests(t, "f.bin") == 2 })
	if got := n.BytesServed(t, "/updates/"); got != 1000 {
		t.Errorf("BytesServed(/updates/) = %d, want 1000", got)
	}
}

// With limit_rate, a client that reads a little and hangs up leaves nginx far
// from done: the log shows a partial, incomplete transfer. Without the limit
// nginx would have pushed the whole MiB into the loopback socket buffers
// before the client hung up.
func TestNginx_LimitRate(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	const size = 1 << 20
	writeFile(t, root, "big.bin", size)
	n := StartNginx(t, root, NginxOptions{LimitRate: "16k"})
	client := newClient(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL+"big.bin", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 4096)); err != nil {
		t.Fatalf("read the first 4 KiB: %v", err)
	}
	cancel() // hang up
	_ = resp.Body.Close()

	WaitFor(t, 20*time.Second, "the abandoned request in the access log", func() bool { return n.CountRequests(t, "big.bin") == 1 })
	e := n.Requests(t)[0]
	if e.Complete || e.Bytes >= size {
		t.Errorf("entry %+v: want an incomplete transfer of less than %d bytes", e, size)
	}
}

func TestNginx_Stop(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFile(t, root, "f", 10)
	n := StartNginx(t, root, NginxOptions{})
	n.Stop(t)
	n.Stop(t) // idempotent
	if !n.proc.Exited() {
		t.Fatal("nginx still running after Stop")
	}
	// Workers are gone too: nothing listens any more.
	conn, err := net.DialTimeout("tcp", n.Addr, 5*time.Second)
	if err == nil {
		_ = conn.Close()
		t.Fatalf("dial %s after Stop succeeded, want connection refused", n.Addr)
	}
	if err := syscall.Kill(-n.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process group %d still exists after Stop (kill 0: %v)", n.Pid(), err)
	}
}

func TestNginx_BadRoot(t *testing.T) {
	t.Parallel()
	RequireBinary(t, "nginx")
	f := runFake(t, func(tb testing.TB) {
		StartNginx(tb, filepath.Join(t.TempDir(), "missing"), NginxOptions{})
	})
	if !f.failed || !strings.Contains(f.msg, "is not a directory") {
		t.Errorf("failed=%v msg=%q, want a failure about the root", f.failed, f.msg)
	}
}

func TestNginx_BadConfigFails(t *testing.T) {
	t.Parallel()
	RequireBinary(t, "nginx")
	root := t.TempDir()
	f := runFake(t, func(tb testing.TB) {
		StartNginx(tb, root, NginxOptions{ServerConfig: "no_such_directive on;"})
	})
	if !f.failed || !strings.Contains(f.msg, "no_such_directive") {
		t.Errorf("failed=%v msg=%q, want a failure quoting nginx's complaint", f.failed, f.msg)
	}
}

func TestProc_OutputAndStop(t *testing.T) {
	t.Parallel()
	sh := RequireBinary(t, "sh")
	p := StartProc(t, sh, "-c", `echo out; echo err >&2; trap 'echo bye; exit 3' TERM; while :; do sleep 0.05; done`)
	WaitFor(t, 10*time.Second, "both outputs", func() bool {
		return strings.Contains(p.Output(), "out") && strings.Contains(p.Stderr(), "err")
	})
	err := p.Stop()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || p.ExitCode() != 3 {
		t.Fatalf("Stop() = %v, exit code %d; want exit status 3 from the TERM trap", err, p.ExitCode())
	}
	if p.Stdout() != "out\nbye\n" || p.Stderr() != "err\n" {
		t.Errorf("stdout %q stderr %q", p.Stdout(), p.Stderr())
	}
	if err2 := p.Stop(); err2 != err {
		t.Errorf("second Stop() = %v, want the same %v", err2, err)
	}
}

func TestProc_Kill(t *testing.T) {
	t.Parallel()
	sh := RequireBinary(t, "sh")
	// A child that would outlive a plain kill of the shell.
	p := StartProc(t, sh, "-c", `sleep 600 & echo $! ; wait`)
	WaitFor(t, 10*time.Second, "the child's pid", func() bool { return strings.HasSuffix(p.Stdout(), "\n") })
	var child int
	if _, err := fmt.Sscan(p.Stdout(), &child); err != nil {
		t.Fatalf("parse child pid from %q: %v", p.Stdout(), err)
	}
	p.Kill()
	if !p.Exited() || p.ExitCode() != -1 {
		t.Fatalf("after Kill: exited=%v code=%d, want killed", p.Exited(), p.ExitCode())
	}
	// The child is in the killed group. It is not ours to reap, so poll
	// until it is gone or a zombie awaiting init.
	WaitFor(t, 10*time.Second, "the child to die with the group", func() bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
}

func TestProc_WaitAndOptions(t *testing.T) {
	t.Parallel()
	sh := RequireBinary(t, "sh")
	dir := t.TempDir()
	p := StartProcWith(t, ProcOptions{Env: []string{"TESTENV_X=42"}, Dir: dir, Stdin: strings.NewReader("in\n")},
		sh, "-c", `read line; echo "$TESTENV_X $line $(pwd)"; exit 7`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Wait(ctx)
	if p.ExitCode() != 7 || err == nil {
		t.Fatalf("Wait() = %v, code %d, want exit status 7", err, p.ExitCode())
	}
	if want := "42 in " + dir + "\n"; p.Stdout() != want {
		t.Errorf("stdout = %q, want %q", p.Stdout(), want)
	}

	running := StartProc(t, sh, "-c", "sleep 600")
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if err := running.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running process = %v, want DeadlineExceeded", err)
	}
	if running.Exited() {
		t.Error("the process exited, want it still running after Wait timed out")
	}
}

func TestStartProc_Missing(t *testing.T) {
	t.Parallel()
	f := runFake(t, func(tb testing.TB) { StartProc(tb, filepath.Join(t.TempDir(), "nope")) })
	if !f.failed || !strings.Contains(f.msg, "nope") {
		t.Errorf("failed=%v msg=%q, want a failure naming the binary", f.failed, f.msg)
	}
}

func TestModuleRoot(t *testing.T) {
	t.Parallel()
	root := ModuleRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("ModuleRoot = %q without go.mod: %v", root, err)
	}
}

func TestBuildDpcache(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(filepath.Join(ModuleRoot(t), "cmd", "dpcache")); err != nil {
		t.Skipf("cmd/dpcache does not exist yet: %v", err)
	}
	bin := BuildDpcache(t)
	if again := BuildDpcache(t); again != bin {
		t.Errorf("second BuildDpcache = %q, want %q", again, bin)
	}
	p := StartProc(t, bin, "--help")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("dpcache --help: %v\n%s", err, p.Output())
	}
	if !strings.Contains(p.Output(), "dpcache") {
		t.Errorf("dpcache --help output does not mention dpcache:\n%s", p.Output())
	}
}

// A missing skip skips the test with a loud line and is named, with what to
// install, in the package's summary; nothing skipped, no summary.
func TestSkipLog(t *testing.T) {
	t.Parallel()
	var l skipLog
	if got := l.summary("example.com/p"); got != "" {
		t.Fatalf("summary with no skips = %q, want none", got)
	}
	f := runFake(t, func(tb testing.TB) { l.skip(tb, "nginx", "apt-get install nginx") })
	if !f.skipped || !strings.Contains(f.msg, "SKIPPED, missing nginx: apt-get install nginx") {
		t.Fatalf("skipped=%v msg=%q, want a skip naming nginx and its package", f.skipped, f.msg)
	}
	runFake(t, func(tb testing.TB) { l.skip(tb, "root", "run as root") })
	got := l.summary("example.com/p")
	for _, want := range []string{
		"SKIPPED in example.com/p: 2 test(s)",
		"    TestSkipLog: missing nginx: apt-get install nginx\n",
		"    TestSkipLog: missing root: run as root\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary = %q, want %q in it", got, want)
		}
	}
}
