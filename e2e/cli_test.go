package e2e

import (
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every command fails on bad input with a non-zero exit and one line on
// stderr that starts with "dpcache:" and says what was wrong; every command
// answers --help.
func TestE2E_CLIErrors(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	writeFiles(t, src, map[string]int{"databases/base.dat": 4 << 10, "modules/engine.bin": 2 << 10})
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	missing := filepath.Join(work, "no-such")
	ep := filepath.Join(work, "endpoint")

	// A port some other program holds.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	busyAddr := busy.Addr().String()
	// A port nothing listens on (taken and released).
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	// Port 0: a node that wrongly started would not collide with anything.
	node := func(args ...string) []string {
		return append([]string{"node", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--data", filepath.Join(work, "dp")}, args...)
	}
	upd := func(args ...string) []string {
		base := map[string]string{"--source": repo, "--product": product, "--dir": ep, "--trust": k.pub}
		for i := 0; i+1 < len(args); i += 2 {
			base[args[i]] = args[i+1]
		}
		out := []string{"update"}
		for _, f := range []string{"--source", "--product", "--dir", "--trust", "--components"} {
			if v, ok := base[f]; ok {
				out = append(out, f, v)
			}
		}
		return out
	}
	pub := func(args ...string) []string {
		return append([]string{"publish", "--repo", repo, "--key", k.key, "--product", product}, args...)
	}

	cases := []struct {
		name string
		args []string
		want []string // substrings of the error line
		// logs: the command may log before failing, so stderr may hold more
		// lines than the error line (which must still be the only
		// "dpcache:" line, and last).
		logs bool
	}{
		{name: "unknown command", args: []string{"frobnicate"}, want: []string{"frobnicate"}},
		{name: "unknown flag", args: []string{"update", "--frobnicate"}, want: []string{"--frobnicate"}},
		{name: "bad log level", args: []string{"--log-level", "loud", "update"}, want: []string{"loud"}},

		{name: "keygen without -o", args: []string{"keygen"}, want: []string{"keygen", "-o"}},
		{name: "keygen into a missing folder", args: []string{"keygen", "-o", filepath.Join(missing, "k")}, want: []string{"keygen"}},

		{name: "publish without flags", args: []string{"publish", src}, want: []string{"--repo", "--key", "--product", "--version"}},
		{name: "publish without SRC_DIR", args: pub("--version", "2.0")},
		{name: "publish a missing SRC_DIR", args: pub("--version", "2.0", missing), want: []string{missing}},
		{name: "publish with a missing key", args: []string{"publish", "--repo", repo, "--key", missing + ".key", "--product", product, "--version", "2.0", src}, want: []string{missing + ".key"}},
		{name: "publish a bad product name", args: []string{"publish", "--repo", repo, "--key", k.key, "--product", "av/bases", "--version", "2.0", src}, want: []string{"av/bases"}},
		{name: "publish a bad serial", args: pub("--version", "2.0", "--serial", "many", src), want: []string{"--serial"}},
		{name: "publish a lower serial", args: pub("--version", "0.9", "--serial", "1", src), want: []string{"serial"}},
		{name: "publish a version again", args: pub("--version", "1.0", src), want: []string{"1.0"}},

		{name: "serve without --repo", args: []string{"serve"}, want: []string{"--repo"}},
		{name: "serve a missing repository", args: []string{"serve", "--repo", missing, "--listen", "127.0.0.1:0"}, want: []string{missing}},
		{name: "serve on a busy port", args: []string{"serve", "--repo", repo, "--listen", busyAddr}, want: []string{busyAddr}, logs: true},

		{name: "node without --trust", args: node("--upstream", "http://127.0.0.1:9/"), want: []string{"--trust"}},
		{name: "node without --upstream", args: node("--trust", k.pub), want: []string{"upstream"}},
		{name: "node with a missing trust file", args: node("--trust", missing+".pub", "--upstream", "http://127.0.0.1:9/"), want: []string{missing + ".pub"}},
		{name: "node with a bad --refresh", args: node("--refresh", "often"), want: []string{"--refresh", "often"}},
		{name: "node with a negative --refresh", args: node("--trust", k.pub, "--upstream", "http://127.0.0.1:9/", "--refresh", "-1s"), want: []string{"refresh"}},
		{name: "node with a bad upstream", args: node("--trust", k.pub, "--upstream", "gopher://example.com/"), want: []string{"gopher"}},
		{name: "node with a missing config", args: node("--config", missing+".yaml"), want: []string{missing + ".yaml"}},
		{name: "node with a bad site", args: node("--trust", k.pub, "--upstream", "http://127.0.0.1:9/", "--site", "a b"), want: []string{"site"}},
		{name: "node on a busy port", args: []string{"node", "--grpc", busyAddr, "--http", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--data", filepath.Join(work, "dp-busy"), "--trust", k.pub, "--upstream", "http://127.0.0.1:9/"}, want: []string{busyAddr}, logs: true},

		{name: "update without flags", args: []string{"update"}, want: []string{"--source", "--product", "--dir", "--trust"}},
		{name: "update from an unsupported scheme", args: upd("--source", "gopher://example.com/"), want: []string{"gopher"}},
		{name: "update a bad component", args: upd("--components", "drivers"), want: []string{"drivers"}},
		{name: "update with a missing trust file", args: upd("--trust", missing+".pub"), want: []string{missing + ".pub"}},
		{name: "update a bad product name", args: upd("--product", "../etc"), want: []string{"../etc"}},
		{name: "update an unknown product", args: upd("--product", "nosuchproduct"), want: []string{"nosuchproduct", repo}, logs: true},
		{name: "update from an unreachable source", args: upd("--source", "http://"+closedAddr+"/"), want: []string{closedAddr}, logs: true},

		{name: "rollback without flags", args: []string{"rollback"}, want: []string{"--dir", "--product"}},
		{name: "rollback with nothing installed", args: []string{"rollback", "--dir", filepath.Join(work, "empty"), "--product", product}, want: []string{"not installed"}},
		{name: "unhold without flags", args: []string{"unhold"}, want: []string{"--dir", "--product"}},
		{name: "unhold with nothing installed", args: []string{"unhold", "--dir", filepath.Join(work, "empty"), "--product", product}, want: []string{"not installed"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := dpcache(t, tc.args...)
			line := errorLine(t, r)
			mustContain(t, line, tc.want...)
			if n := len(nonEmptyLines(r.stderr)); !tc.logs && n != 1 {
				t.Errorf("stderr has %d lines, want only the error line: %s", n, r)
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing on a failure", r.stdout)
			}
		})
	}

	// A failed one-shot command is one line on stderr, by default and with
	// logging turned down to errors: the error is not also logged.
	for _, level := range []string{"", "error"} {
		name := "update failure at the default log level"
		if level != "" {
			name = "update failure at --log-level " + level
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var args []string
			if level != "" {
				args = []string{"--log-level", level}
			}
			r := dpcache(t, append(args, upd("--source", "http://"+closedAddr+"/")...)...)
			errorLine(t, r)
			if lines := nonEmptyLines(r.stderr); len(lines) != 1 {
				t.Errorf("a failed update prints %d lines on stderr, want the one error line:\n%s", len(lines), r.stderr)
			}
		})
	}
}

// Every command of `dpcache --help` answers --help with its usage on stdout
// and exit 0; so does every command the design names, once it exists.
func TestE2E_CLIHelp(t *testing.T) {
	t.Parallel()
	root := mustRun(t, "--help")
	mustContain(t, root.stdout, "Usage:")
	listed := helpCommands(root.stdout)
	if len(listed) == 0 {
		t.Fatalf("dpcache --help lists no commands:\n%s", root.stdout)
	}
	contract := []string{"keygen", "publish", "serve", "node", "update", "rollback", "unhold", "mirror", "status", "endpoints", "prefetch", "loadtest", "demo"}
	for _, c := range contract {
		if !slices.Contains(listed, c) {
			t.Logf("the design's command %q is not implemented yet (not in dpcache --help)", c)
		}
	}
	for _, c := range listed {
		t.Run(c, func(t *testing.T) {
			t.Parallel()
			r := dpcache(t, c, "--help")
			if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || r.stderr != "" {
				t.Errorf("want exit 0, usage on stdout and nothing on stderr; got %s", r)
			}
		})
	}
}

// helpCommands returns the command names listed under "Available Commands:".
func helpCommands(help string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(l, "Available Commands:"):
			in = true
		case in && strings.TrimSpace(l) == "":
			return out
		case in:
			if f := strings.Fields(l); len(f) > 0 {
				out = append(out, f[0])
			}
		}
	}
	return out
}
