package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// Timeouts. Generous: the machine is shared and the race detector is on.
const (
	// cmdTimeout bounds one dpcache command that is expected to finish.
	cmdTimeout = 90 * time.Second
	// readyTimeout bounds a node's start until /healthz answers.
	readyTimeout = 30 * time.Second
	// eventually bounds conditions that depend on background work (a DP's
	// refresh, nginx writing its access log).
	eventually = 30 * time.Second
)

// product is the product every test publishes.
const product = "avbases"

// cmdResult is how a dpcache process ended.
type cmdResult struct {
	args   []string
	code   int // -1 if killed by a signal
	stdout string
	stderr string
}

func (r cmdResult) String() string {
	return fmt.Sprintf("dpcache %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// dpcache runs the dpcache binary with args until it exits.
func dpcache(t *testing.T, args ...string) cmdResult {
	t.Helper()
	return dpcacheWith(t, testenv.ProcOptions{}, args...)
}

// dpcacheWith is dpcache with process options (environment, directory).
func dpcacheWith(t *testing.T, opts testenv.ProcOptions, args ...string) cmdResult {
	t.Helper()
	return waitProc(t, testenv.StartProcWith(t, opts, testenv.BuildDpcache(t), args...), args)
}

// startDpcache starts the dpcache binary with args and returns at once.
func startDpcache(t *testing.T, args ...string) *testenv.Proc {
	t.Helper()
	return testenv.StartProc(t, testenv.BuildDpcache(t), args...)
}

// waitProc waits for p (started with args) to exit, within cmdTimeout.
func waitProc(t *testing.T, p *testenv.Proc, args []string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if err := p.Wait(ctx); err != nil && !p.Exited() {
		t.Fatalf("dpcache %s: %v\nstderr so far:\n%s", strings.Join(args, " "), err, p.Stderr())
	}
	return cmdResult{args: args, code: p.ExitCode(), stdout: p.Stdout(), stderr: p.Stderr()}
}

// mustRun runs dpcache and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) cmdResult {
	t.Helper()
	r := dpcache(t, args...)
	if r.code != 0 {
		t.Fatalf("want exit 0, got %s", r)
	}
	return r
}

// errorLine checks that r failed the way the command line promises (exit
// status non-zero, one line on stderr that starts with "dpcache:", and that
// line last, after any log lines) and returns that line.
func errorLine(t *testing.T, r cmdResult) string {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("want a failure, got %s", r)
	}
	if r.code < 0 {
		t.Fatalf("want a non-zero exit, the process was killed by a signal: %s", r)
	}
	lines := nonEmptyLines(r.stderr)
	var errLines []string
	for _, l := range lines {
		if strings.HasPrefix(l, "dpcache:") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || lines[len(lines)-1] != errLines[0] {
		t.Fatalf("want exactly one stderr line starting with \"dpcache:\", and last; got %d: %s", len(errLines), r)
	}
	return errLines[0]
}

// mustContain fails the test unless s contains every one of subs.
func mustContain(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%q\ndoes not contain %q", s, sub)
		}
	}
}

// containsAny reports whether s contains one of subs, ignoring case.
func containsAny(s string, subs ...string) bool {
	ls := strings.ToLower(s)
	for _, sub := range subs {
		if strings.Contains(ls, strings.ToLower(sub)) {
			return true
		}
	}
	return false
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// keyPair is a vendor's minisign key files.
type keyPair struct {
	key string // secret key, NAME.key
	pub string // public key, NAME.pub
}

// dpcacheKeygen runs `dpcache keygen -o dir/name`.
func dpcacheKeygen(t *testing.T, dir, name string) (keyPair, cmdResult) {
	t.Helper()
	base := filepath.Join(dir, name)
	r := dpcache(t, "keygen", "-o", base)
	return keyPair{key: base + ".key", pub: base + ".pub"}, r
}

// minisignKeygen makes an unencrypted key pair with the stock minisign tool
// (`minisign -G -W`), which the design says dpcache accepts.
func minisignKeygen(t *testing.T, dir, name string) keyPair {
	t.Helper()
	ms := testenv.RequireBinary(t, "minisign")
	base := filepath.Join(dir, name)
	k := keyPair{key: base + ".key", pub: base + ".pub"}
	p := testenv.StartProc(t, ms, "-G", "-W", "-p", k.pub, "-s", k.key)
	if r := waitProc(t, p, []string{"(minisign) -G -W"}); r.code != 0 {
		t.Fatalf("minisign -G -W: exit %d: %s", r.code, r.stderr)
	}
	return k
}

// vendorKeys returns a fresh key pair for tests about something else than
// key generation: from `dpcache keygen`, or, if that fails (the failure is
// TestE2E_Keygen's to report), from `minisign -G -W`.
func vendorKeys(t *testing.T, dir, name string) keyPair {
	t.Helper()
	k, r := dpcacheKeygen(t, dir, name)
	if r.code == 0 {
		return k
	}
	t.Logf("dpcache keygen failed (see TestE2E_Keygen); using minisign -G -W instead: %s", strings.TrimSpace(r.stderr))
	return minisignKeygen(t, dir, name+"-minisign")
}

// verifyWithMinisign checks file's signature (file.minisig) with the stock
// minisign tool and pub.
func verifyWithMinisign(t *testing.T, file, pub string) {
	t.Helper()
	ms := testenv.RequireBinary(t, "minisign")
	p := testenv.StartProc(t, ms, "-V", "-m", file, "-p", pub)
	if r := waitProc(t, p, []string{"(minisign) -V -m", file}); r.code != 0 {
		t.Errorf("minisign -Vm %s -p %s: exit %d\n%s%s", file, pub, r.code, r.stdout, r.stderr)
	}
}

// publish runs `dpcache publish --chunk=false` of src as product version
// v: every file is one blob named by its digest. The tests that use it are
// about moving blobs (a file's blob counted in nginx's access log, streamed
// while in flight, stalled, replicated between DPs); a chunked file is
// the blobs of its chunks. Chunked publishing, the default, is tested by
// chunks_test.go and the README walkthrough.
func publish(t *testing.T, repo string, k keyPair, version, src string) {
	t.Helper()
	mustRun(t, "publish", "--chunk=false", "--repo", repo, "--key", k.key, "--product", product, "--version", version, src)
}

// vendorRepo sets up a vendor in a new temporary folder (work): a key
// pair, a source folder (src) with files of the given sizes, and a
// repository (repo) where version is published from it. files is the
// source's tree.
func vendorRepo(t *testing.T, version string, sizes map[string]int) (work string, k keyPair, src, repo string, files tree) {
	t.Helper()
	work = t.TempDir()
	k = vendorKeys(t, work, "vendor")
	src = filepath.Join(work, "src")
	files = writeFiles(t, src, sizes)
	repo = filepath.Join(work, "repo")
	publish(t, repo, k, version, src)
	return work, k, src, repo, files
}

// tree maps slash-separated relative paths to the hex SHA-256 of the file.
type tree map[string]string

// only returns the part of tr whose paths start with one of prefixes.
func (tr tree) only(prefixes ...string) tree {
	out := tree{}
	for p, h := range tr {
		for _, pre := range prefixes {
			if strings.HasPrefix(p, pre) {
				out[p] = h
			}
		}
	}
	return out
}

// writeFiles writes files of random bytes under dir, sizes by slash path,
// replacing existing ones, and returns their digests.
func writeFiles(t *testing.T, dir string, sizes map[string]int) tree {
	t.Helper()
	out := tree{}
	buf := make([]byte, 1<<20)
	for rel, size := range sizes {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		for left := size; left > 0; {
			n := min(left, len(buf))
			_, _ = rand.Read(buf[:n])
			h.Write(buf[:n])
			if _, err := f.Write(buf[:n]); err != nil {
				t.Fatal(err)
			}
			left -= n
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		out[rel] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

// sumSizes adds up sizes of the paths in tr.
func sumSizes(sizes map[string]int, tr tree) int64 {
	var n int64
	for p := range tr {
		n += int64(sizes[p])
	}
	return n
}

// readTree hashes every file under root (following root itself if it is a
// symlink, as `current` is). Anything but directories and regular files is
// an error: an install holds plain files.
func readTree(t *testing.T, root string) tree {
	t.Helper()
	resolved, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatalf("read installed tree: %v", err)
	}
	out := tree{}
	err = filepath.WalkDir(resolved, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is a %v, want a regular file", p, d.Type())
		}
		rel, err := filepath.Rel(resolved, p)
		if err != nil {
			return err
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = sum
		return nil
	})
	if err != nil {
		t.Fatalf("read installed tree %s: %v", root, err)
	}
	return out
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// current is DIR/<product>/current.
func current(dir string) string { return filepath.Join(dir, product, "current") }

// checkTree fails the test unless the tree at root is exactly want.
func checkTree(t *testing.T, root string, want tree) {
	t.Helper()
	got := readTree(t, root)
	if maps.Equal(got, want) {
		return
	}
	paths := slices.Sorted(maps.Keys(got))
	wantPaths := slices.Sorted(maps.Keys(want))
	var diff []string
	for _, p := range wantPaths {
		switch h, ok := got[p]; {
		case !ok:
			diff = append(diff, "missing "+p)
		case h != want[p]:
			diff = append(diff, "wrong content "+p)
		}
	}
	for _, p := range paths {
		if _, ok := want[p]; !ok {
			diff = append(diff, "unexpected "+p)
		}
	}
	t.Fatalf("installed tree %s differs from the published one: %s", root, strings.Join(diff, ", "))
}

// checkNotInstalled fails the test if DIR/<product>/current exists.
func checkNotInstalled(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Lstat(current(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists (or cannot be checked: %v); want nothing installed", current(dir), err)
	}
}

// updateResult is the object `dpcache update --json` prints.
type updateResult struct {
	Product         string `json:"product"`
	Version         string `json:"version"`
	Serial          uint64 `json:"serial"`
	Status          string `json:"status"`
	Source          string `json:"source"`
	BytesDownloaded int64  `json:"bytes_downloaded"`
	FilesChanged    int    `json:"files_changed"`
}

// updateArgs builds `update --json` arguments.
func updateArgs(source, dir, trust string, extra ...string) []string {
	return append([]string{"update", "--json", "--source", source, "--product", product, "--dir", dir, "--trust", trust}, extra...)
}

// update runs `dpcache update --json` and returns its result; it fails the
// test unless the command succeeds.
func update(t *testing.T, source, dir, trust string, extra ...string) updateResult {
	t.Helper()
	return parseUpdate(t, mustRun(t, updateArgs(source, dir, trust, extra...)...))
}

// parseUpdate decodes the one JSON object of `update --json`, which must
// have exactly the fields the design names.
func parseUpdate(t *testing.T, r cmdResult) updateResult {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("want exit 0, got %s", r)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &fields); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, r)
	}
	want := []string{"bytes_downloaded", "files_changed", "product", "serial", "source", "status", "version"}
	if got := slices.Sorted(maps.Keys(fields)); !slices.Equal(got, want) {
		t.Errorf("update --json fields = %v, want %v", got, want)
	}
	var res updateResult
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("decode update --json: %v\n%s", err, r)
	}
	return res
}

// dpNode is a `dpcache node` process.
type dpNode struct {
	proc *testenv.Proc
	GRPC string // 127.0.0.1:PORT
	HTTP string // 127.0.0.1:PORT
	Data string
	args []string
}

// URL is the node as an update source.
func (n *dpNode) URL() string { return "grpc://" + n.GRPC }

// startNode starts a DP in front of upstream, with a fresh data directory,
// free ports and --refresh 200ms (extra may override it), and waits until
// it is ready.
func startNode(t *testing.T, upstream, trust string, extra ...string) *dpNode {
	t.Helper()
	return startNodeArgs(t, upstream, trust, append([]string{"--refresh", "200ms"}, extra...)...)
}

// startNodeArgs is startNode without a --refresh of its own: the node
// gets only the flags of extra beyond its name, data, ports, upstream and
// trust.
func startNodeArgs(t *testing.T, upstream, trust string, extra ...string) *dpNode {
	t.Helper()
	data := t.TempDir()
	const attempts = 3
	for attempt := 1; ; attempt++ {
		n := &dpNode{GRPC: testenv.FreeAddr(t, "127.0.0.1"), HTTP: testenv.FreeAddr(t, "127.0.0.1"), Data: data}
		n.args = append([]string{"node", "--name", "dp-" + filepath.Base(data), "--data", data,
			"--grpc", n.GRPC, "--http", n.HTTP, "--gossip", "127.0.0.1:0", "--upstream", upstream, "--trust", trust}, extra...)
		err := n.start(t)
		if err == nil {
			return n
		}
		// Another process may have taken a port between FreeAddr and bind.
		if attempt == attempts || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("retrying the node on other ports: %v", err)
	}
}

// start runs the node's process and waits for /healthz.
func (n *dpNode) start(t *testing.T) error {
	t.Helper()
	n.proc = startDpcache(t, n.args...)
	return waitReady(t, n.proc, n.HTTP)
}

// restart starts the node again with the same data directory and ports.
func (n *dpNode) restart(t *testing.T) {
	t.Helper()
	if !n.proc.Exited() {
		t.Fatal("restart of a node that is still running")
	}
	if err := n.start(t); err != nil {
		t.Fatal(err)
	}
}

// waitReady waits until p answers GET /healthz on httpAddr, or exits.
func waitReady(t *testing.T, p *testenv.Proc, httpAddr string) error {
	t.Helper()
	ready := false
	testenv.WaitFor(t, readyTimeout, "the node's /healthz on "+httpAddr, func() bool {
		if p.Exited() {
			return true
		}
		ready = healthz(httpAddr)
		return ready
	})
	if !ready {
		return fmt.Errorf("node exited at start (exit %d): %s", p.ExitCode(), strings.TrimSpace(p.Stderr()))
	}
	return nil
}

// healthz reports whether GET http://addr/healthz, or https:// for a
// node with --tls-cert (/healthz is open to anyone), answers 200 "ok".
func healthz(addr string) bool {
	return healthzURL("http://"+addr+"/healthz") || healthzURL("https://"+addr+"/healthz")
}

func healthzURL(url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return err == nil && resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok"
}

// grpcServing reports whether a gRPC server on addr answers the standard
// health check with SERVING.
func grpcServing(t *testing.T, addr string) bool {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client for %s: %v", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// listening reports whether something accepts TCP connections on addr.
func listening(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// blobURI is the path nginx logs for a blob served at the root.
func blobURI(digest string) string { return "/blobs/sha256/" + digest }

// blobEntries returns the logged requests for a blob, oldest first.
func blobEntries(t *testing.T, n *testenv.Nginx, digest string) []testenv.AccessEntry {
	t.Helper()
	var out []testenv.AccessEntry
	for _, e := range n.Requests(t) {
		if strings.HasSuffix(strings.SplitN(e.URI, "?", 2)[0], blobURI(digest)) {
			out = append(out, e)
		}
	}
	return out
}

// flipByte inverts one byte of file at off and returns a func that puts it
// back.
func flipByte(t *testing.T, file string, off int64) (restore func()) {
	t.Helper()
	flip := func() {
		f, err := os.OpenFile(file, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	flip()
	return flip
}

// replaceInFile replaces the first occurrence of old in file.
func replaceInFile(t *testing.T, file, old, new string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("%s does not contain %q:\n%s", file, old, data)
	}
	if err := os.WriteFile(file, bytes.Replace(data, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}
