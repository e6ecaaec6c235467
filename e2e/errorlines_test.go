package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// Every mistake a user can make ends in one short line: what failed,
// where, what to do; no internal package names, no cause said twice; exit
// 2 for a usage error, 1 for any other failure.
func TestE2E_CLIErrorLines(t *testing.T) {
	t.Parallel()
	// Commands run in work and name its files by relative paths, as a
	// user would: a repeated part of the line is then the line's doing,
	// not the test's long temporary paths.
	work := t.TempDir()
	abs := vendorKeys(t, work, "vendor")
	writeFiles(t, filepath.Join(work, "src"), map[string]int{"databases/base.dat": 4 << 10})
	publish(t, filepath.Join(work, "repo"), abs, "1.0", filepath.Join(work, "src"))
	k := keyPair{key: "vendor.key", pub: "vendor.pub"}
	repo, src, missing, keyDir, notDir := "repo", "src", "no-such", "dir.key", "file.txt"
	if err := os.Mkdir(filepath.Join(work, keyDir), 0o755); err != nil { // a key that cannot be read
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, notDir), []byte("x"), 0o644); err != nil { // not a --dir
		t.Fatal(err)
	}
	unreachable := "http://" + testenv.FreeAddr(t, "127.0.0.1") + "/"

	// Three sources of three kinds, so that their names share no long
	// substring.
	var urls []string
	for _, host := range []string{"127.0.0.1", "127.0.0.2"} {
		addr := testenv.FreeAddr(t, host)
		startDpcache(t, "serve", "--repo", filepath.Join(work, repo), "--listen", addr)
		deadline := time.Now().Add(readyTimeout)
		for !listening(addr) {
			if time.Now().After(deadline) {
				t.Fatalf("dpcache serve on %s did not start", addr)
			}
			time.Sleep(20 * time.Millisecond)
		}
		urls = append(urls, "http://"+addr+"/")
	}
	urls = append(urls, repo)
	three := strings.Join(urls, ",")
	var eps atomic.Int32
	ep := func() string { return fmt.Sprintf("ep%d", eps.Add(1)) }
	node := strings.TrimPrefix(strings.TrimSuffix(unreachable, "/"), "http://")

	upd := func(source, prod, dir, trust string, extra ...string) []string {
		return append([]string{"update", "--source", source, "--product", prod, "--dir", dir, "--trust", trust}, extra...)
	}
	cases := []struct {
		name  string
		args  []string
		code  int
		want  []string // substrings of the line
		multi bool     // the line lists several sources: no length limit
	}{
		{name: "typo'd product over three sources", args: upd(three, "avbase", ep(), k.pub), code: 1, multi: true,
			want: []string{"avbase/latest.json", "not found on any of 3 sources", urls[0], urls[1], "check the product name"}},
		{name: "typo'd product in mirror", args: []string{"mirror", "--source", three, "--product", "avbase", "--to", "mirror", "--trust", k.pub}, code: 1, multi: true,
			want: []string{"not found on any of 3 sources"}},
		{name: "missing trust file", args: upd(three, product, ep(), missing+".pub"), code: 1, want: []string{missing + ".pub"}},
		{name: "missing trust file on node", args: []string{"node", "--upstream", three, "--trust", missing + ".pub", "--data", "dp"}, code: 1, want: []string{missing + ".pub"}},
		{name: "unreadable key", args: []string{"publish", "--repo", repo, "--key", keyDir, "--product", product, "--version", "2.0", src}, code: 1, want: []string{keyDir}},
		{name: "public key given as the secret key", args: []string{"publish", "--repo", repo, "--key", k.pub, "--product", product, "--version", "2.0", src}, code: 1, want: []string{k.pub}},
		{name: "keygen over an existing key", args: []string{"keygen", "-o", "vendor"}, code: 1, want: []string{"already exists"}},
		{name: "keygen into a missing folder", args: []string{"keygen", "-o", missing + "/k"}, code: 1, want: []string{missing}},
		{name: "unreachable source", args: upd(unreachable, product, ep(), k.pub), code: 1, want: []string{unreachable, "connection refused"}},
		{name: "two unreachable sources", args: upd(unreachable+",grpc://"+node, product, ep(), k.pub), code: 1, multi: true,
			want: []string{"connection refused"}},
		{name: "wrong --dir (a file)", args: upd(repo, product, notDir, k.pub), code: 1, want: []string{notDir, "not a directory"}},
		{name: "rollback with nothing installed", args: []string{"rollback", "--dir", ep(), "--product", product}, code: 1, want: []string{"not installed"}},
		{name: "status of no node", args: []string{"status", "--node", node}, code: 1, want: []string{"connection refused"}},
		{name: "prefetch from no node", args: []string{"prefetch", "--node", node, "--product", product}, code: 1, want: []string{"connection refused"}},
		{name: "loadtest of no node", args: []string{"loadtest", "--node", node, "--product", product}, code: 1, want: []string{"connection refused", node}},
		{name: "loadtest of no endpoints", args: []string{"loadtest", "--node", node, "--product", product, "--endpoints", "0"}, code: 2, want: []string{"endpoints 0"}},

		{name: "bad URL", args: upd("http://[::1", product, ep(), k.pub), code: 2, want: []string{"http://[::1"}},
		{name: "unsupported scheme", args: upd("gopher://example.com/", product, ep(), k.pub), code: 2, want: []string{"gopher"}},
		{name: "unknown flag", args: []string{"update", "--frobnicate"}, code: 2, want: []string{"--frobnicate"}},
		{name: "unknown root flag", args: []string{"--frobnicate"}, code: 2, want: []string{"--frobnicate"}},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, want: []string{"frobnicate"}},
		{name: "missing flags", args: []string{"update"}, code: 2, want: []string{"--source"}},
		{name: "unexpected argument", args: []string{"status", "extra"}, code: 2, want: []string{"extra"}},
		{name: "missing argument", args: []string{"publish", "--repo", repo, "--key", k.key, "--product", product, "--version", "2.0"}, code: 2},
		{name: "bad flag value", args: upd(repo, product, ep(), k.pub, "--jitter", "soon"), code: 2, want: []string{"--jitter"}},
		{name: "flag without --watch", args: upd(repo, product, ep(), k.pub, "--poll", "1m"), code: 2, want: []string{"--poll"}},
		{name: "bad component", args: upd(repo, product, ep(), k.pub, "--components", "drivers"), code: 2, want: []string{"drivers"}},
		{name: "bad product name", args: upd(repo, "../etc", ep(), k.pub), code: 2, want: []string{"../etc"}},
		{name: "bad --log-level", args: []string{"--log-level", "loud", "status", "--node", "x:1"}, code: 2, want: []string{"loud"}},
		{name: "bad node setting", args: []string{"node", "--upstream", repo, "--trust", k.pub, "--site", "a b", "--data", "dp2"}, code: 2, want: []string{"site"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := dpcacheWith(t, testenv.ProcOptions{Dir: work}, tc.args...)
			line := errorLine(t, r)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d: %s", r.code, tc.code, r)
			}
			if n := len(nonEmptyLines(r.stderr)); n != 1 {
				t.Errorf("stderr has %d lines, want the error line only: %s", n, r)
			}
			mustContain(t, line, tc.want...)
			checkErrorLine(t, line, tc.multi)
		})
	}

	// update --json on a failure carries the same line.
	t.Run("update --json", func(t *testing.T) {
		t.Parallel()
		r := dpcacheWith(t, testenv.ProcOptions{Dir: work}, upd(three, "avbase", ep(), k.pub, "--json")...)
		var out struct{ Status, Error string }
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Status != "failed" {
			t.Fatalf("stdout %q: %v", r.stdout, err)
		}
		checkErrorLine(t, "dpcache: "+out.Error, true)
	})
}

// checkErrorLine fails unless line is free of internal package prefixes
// and doubled causes, and short unless it lists several sources.
func checkErrorLine(t *testing.T, line string, multi bool) {
	t.Helper()
	for _, pkg := range []string{"agent:", "manifest:", "source:", "cache:", "gossip:", "failover:", "node: node:", "dpcache: dpcache:"} {
		if strings.Contains(line, " "+pkg) {
			t.Errorf("%q names the internal %q", line, pkg)
		}
	}
	if rep := longestRepeat(line); len(rep) >= 20 {
		t.Errorf("%q says %q twice", line, rep)
	}
	if limit := 200; !multi && len(line) > limit {
		t.Errorf("%q is %d characters long, want at most %d", line, len(line), limit)
	}
}

// longestRepeat returns the longest substring that occurs twice in s
// (possibly overlapping).
func longestRepeat(s string) string {
	best := ""
	for i := 0; i < len(s); i++ {
		for j := i + 1; j < len(s); j++ {
			n := 0
			for j+n < len(s) && s[i+n] == s[j+n] {
				n++
			}
			if n > len(best) {
				best = s[i : i+n]
			}
		}
	}
	return best
}

// dpcache version prints the release and commit stamped at build time, or,
// in a plain build, what Go recorded.
func TestE2E_Version(t *testing.T) {
	t.Parallel()
	plain := mustRun(t, "version", "--json")
	var v struct{ Version, Commit, Go string }
	if err := json.Unmarshal([]byte(plain.stdout), &v); err != nil || v.Version == "" || v.Commit == "" || !strings.HasPrefix(v.Go, "go") {
		t.Fatalf("version --json of a plain build = %q (%v), want version, commit and go", plain.stdout, err)
	}
	if r := mustRun(t, "version"); !strings.Contains(r.stdout, v.Version) || !strings.Contains(r.stdout, v.Go) {
		t.Errorf("version = %q, want %s and %s in it", r.stdout, v.Version, v.Go)
	}

	goBin := testenv.RequireBinary(t, "go")
	bin := filepath.Join(t.TempDir(), "dpcache")
	build := exec.Command(goBin, "build", "-trimpath", "-ldflags", "-X main.version=9.8.7 -X main.commit=abc1234", "-o", bin, "github.com/dpcache/dpcache/cmd/dpcache")
	build.Dir = testenv.ModuleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build with -ldflags: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Version != "9.8.7" || v.Commit != "abc1234" || !strings.HasPrefix(v.Go, "go") {
		t.Errorf("version --json of a stamped build = %q (%v), want 9.8.7 and abc1234", out, err)
	}
}
