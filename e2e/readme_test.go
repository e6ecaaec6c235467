package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// The README's rule: it starts with the two commands a new user runs, and
// every command in it runs as written. TestREADME_Walkthrough runs the
// walkthrough; TestREADME_Blocks checks that no shell block escapes it.

const (
	// walkthroughHeading is the section of README.md whose sh blocks run.
	walkthroughHeading = "## Five minutes with dpcache"
	// skipMarker, on the line right above a sh block, says why the block is
	// not run; every sh block outside the walkthrough needs one.
	skipMarker = "<!-- walkthrough: skip: "
	// walkthroughTimeout bounds the whole run; the README's own waits are
	// bounded too (curl --retry, timeout 60).
	walkthroughTimeout = 4 * time.Minute
)

// readmeFirstCommands are the commands README.md starts with.
var readmeFirstCommands = []string{"go run ./cmd/dpcache demo", "make check"}

// notRunLangs are the fence languages of blocks that show something other
// than commands: configuration files. Any other language but sh (including
// none) is refused, so that a command cannot hide from the test in a
// ```bash or an unlabelled block.
var notRunLangs = []string{"yaml", "nginx", "text", "json"}

// readmeBlock is a fenced code block of README.md.
type readmeBlock struct {
	line    int    // 1-based line of the opening fence
	lang    string // the fence's info string
	text    string // the lines between the fences, each ending in \n
	skip    string // the reason of a skip marker right above it, or ""
	section string // the "## " heading it is under, or "" before the first
}

// parseReadme returns the fenced blocks of a README and checks the rules
// the walkthrough test relies on: fences are closed, their language is sh
// or a configuration language, a skip marker gives a reason and stands
// right above a sh block, and a sh block outside the walkthrough section is
// marked.
func parseReadme(readme string) ([]readmeBlock, error) {
	var (
		blocks  []readmeBlock
		errs    []error
		section string
		cur     *readmeBlock
		marker  string // pending skip reason
		markerN int    // its line
	)
	lines := strings.Split(readme, "\n")
	for i, l := range lines {
		n := i + 1
		if cur != nil {
			if strings.TrimSpace(l) == "```" {
				blocks = append(blocks, *cur)
				cur = nil
			} else {
				cur.text += l + "\n"
			}
			continue
		}
		switch {
		case strings.HasPrefix(l, "```"):
			b := readmeBlock{line: n, lang: strings.TrimSpace(strings.TrimPrefix(l, "```")), section: section, skip: marker}
			switch {
			case b.lang == "sh":
			case slices.Contains(notRunLangs, b.lang):
				if marker != "" {
					errs = append(errs, fmt.Errorf("README.md:%d: skip marker above a %s block: only sh blocks run, so only they are marked", markerN, b.lang))
				}
			default:
				errs = append(errs, fmt.Errorf("README.md:%d: fence language %q: write sh for commands (they run) or one of %v for configuration", n, b.lang, notRunLangs))
			}
			if b.lang == "sh" && b.skip == "" && section != walkthroughHeading {
				errs = append(errs, fmt.Errorf("README.md:%d: a sh block outside %q runs nowhere: move it into the walkthrough, or mark why it does not run with %s...-->", n, walkthroughHeading, skipMarker))
			}
			marker = ""
			cur = &b
		case strings.HasPrefix(l, skipMarker):
			reason := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(l, skipMarker), "-->"))
			if reason == "" || !strings.HasSuffix(strings.TrimSpace(l), "-->") {
				errs = append(errs, fmt.Errorf("README.md:%d: a skip marker is %sREASON --> on one line", n, skipMarker))
			}
			marker, markerN = reason, n
		case strings.TrimSpace(l) == "":
		default:
			if marker != "" {
				errs = append(errs, fmt.Errorf("README.md:%d: skip marker not right above a sh block", markerN))
				marker = ""
			}
			if strings.HasPrefix(l, "## ") {
				section = strings.TrimSpace(l)
			}
		}
	}
	if cur != nil {
		errs = append(errs, fmt.Errorf("README.md:%d: fence never closed", cur.line))
	}
	if marker != "" {
		errs = append(errs, fmt.Errorf("README.md:%d: skip marker not right above a sh block", markerN))
	}
	return blocks, errors.Join(errs...)
}

// walkthroughExit starts the exit trap of the walkthrough script, so that
// failedAt knows where the walkthrough's own commands end.
const walkthroughExit = "walkthrough_exit="

// walkthroughScript is the bash script that runs the walkthrough's sh
// blocks in order, exactly as written: strict mode first, and a trap that
// stops whatever the walkthrough left in the background. Between blocks it
// adds only no-op lines naming the README line, which set -x prints.
func walkthroughScript(blocks []readmeBlock) (string, int) {
	var sb strings.Builder
	sb.WriteString("set -euo pipefail\n")
	sb.WriteString("trap '" + walkthroughExit + "$?; set +x; pids=$(jobs -p); if [ -n \"$pids\" ]; then kill $pids 2>/dev/null; wait; fi; exit $walkthrough_exit' EXIT\n")
	sb.WriteString("set -x\n")
	run := 0
	for _, b := range blocks {
		if b.section != walkthroughHeading || b.lang != "sh" || b.skip != "" {
			continue
		}
		run++
		fmt.Fprintf(&sb, ": README.md line %d\n%s", b.line, b.text)
	}
	return sb.String(), run
}

// commandLines returns a block's commands: its lines without comments,
// trailing comments and blank lines.
func commandLines(text string) []string {
	var cmds []string
	for _, l := range strings.Split(text, "\n") {
		if i := strings.Index(l, " #"); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			cmds = append(cmds, l)
		}
	}
	return cmds
}

func readReadme(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// README.md obeys the rules the walkthrough test relies on, and starts with
// the two commands of a new user.
func TestREADME_Blocks(t *testing.T) {
	t.Parallel()
	blocks, err := parseReadme(readReadme(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) == 0 || blocks[0].lang != "sh" || !slices.Equal(commandLines(blocks[0].text), readmeFirstCommands) {
		t.Errorf("README.md must start with a sh block of the commands %q", readmeFirstCommands)
	}
	if _, n := walkthroughScript(blocks); n < 5 {
		t.Errorf("only %d sh blocks to run under %q: was the heading renamed?", n, walkthroughHeading)
	}
}

// The README's first command, `go run ./cmd/dpcache demo`, runs as written
// from the module root (the demo works in a temporary folder of its own, on
// ports the system picks). The second, make check, runs this suite.
func TestREADME_Demo(t *testing.T) {
	blocks, err := parseReadme(readReadme(t))
	if err != nil {
		t.Fatal(err)
	}
	cmds := commandLines(blocks[0].text)
	if len(cmds) == 0 || cmds[0] != readmeFirstCommands[0] {
		t.Fatalf("README.md's first command is %q, want %q", cmds, readmeFirstCommands[0])
	}
	goBin := testenv.RequireBinary(t, "go")
	p := testenv.StartProcWith(t, testenv.ProcOptions{
		Dir: testenv.ModuleRoot(t),
		Env: []string{"PATH=" + filepath.Dir(goBin) + string(os.PathListSeparator) + os.Getenv("PATH")},
	}, testenv.RequireBinary(t, "bash"), "-c", cmds[0])
	ctx, cancel := context.WithTimeout(context.Background(), walkthroughTimeout)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("%s: %v\n%s", cmds[0], err, lastLines(p.Output(), 30))
	}
}

func TestParseReadme(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		readme  string
		wantRun int
		wantErr string
	}{
		{name: "walkthrough runs", readme: "## Five minutes with dpcache\n```sh\necho a\n```\n```yaml\na: 1\n```\n", wantRun: 1},
		{name: "marked block skipped", readme: "## Five minutes with dpcache\n<!-- walkthrough: skip: an alternative -->\n```sh\necho a\n```\n", wantRun: 0},
		{name: "unmarked sh outside", readme: "## Other\n```sh\necho a\n```\n", wantErr: "runs nowhere"},
		{name: "marked sh outside", readme: "# t\n\n<!-- walkthrough: skip: by hand -->\n\n```sh\necho a\n```\n"},
		{name: "bash fence refused", readme: "## Five minutes with dpcache\n```bash\necho a\n```\n", wantErr: `fence language "bash"`},
		{name: "bare fence refused", readme: "## Five minutes with dpcache\n```\necho a\n```\n", wantErr: `fence language ""`},
		{name: "marker without reason", readme: "<!-- walkthrough: skip: -->\n```sh\necho a\n```\n", wantErr: "REASON"},
		{name: "dangling marker", readme: "<!-- walkthrough: skip: x -->\nprose\n```sh\necho a\n```\n", wantErr: "not right above"},
		{name: "marker on yaml", readme: "<!-- walkthrough: skip: x -->\n```yaml\na: 1\n```\n", wantErr: "above a yaml block"},
		{name: "unclosed fence", readme: "## Five minutes with dpcache\n```sh\necho a\n", wantErr: "never closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			blocks, err := parseReadme(tt.readme)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseReadme error = %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, n := walkthroughScript(blocks); n != tt.wantRun {
				t.Errorf("%d blocks to run, want %d", n, tt.wantRun)
			}
		})
	}
}

// The walkthrough of README.md runs as written: its sh blocks, in order, as
// one bash script with set -euo pipefail, in an empty directory where the
// module's go.mod, go.sum, Makefile and package directories are symlinked,
// so that `go build -o dpcache ./cmd/dpcache` and `make build` work there
// and everything else the walkthrough writes stays in the directory. A
// failing command fails the test; what the walkthrough left in the
// background is stopped at the end.
func TestREADME_Walkthrough(t *testing.T) {
	readme := readReadme(t)
	blocks, err := parseReadme(readme)
	if err != nil {
		t.Fatal(err)
	}
	script, n := walkthroughScript(blocks)
	if n == 0 {
		t.Fatalf("README.md has no sh blocks under %q", walkthroughHeading)
	}

	// What the walkthrough runs besides ./dpcache.
	var path []string
	for _, bin := range []string{"go", "minisign", "curl", "make", "timeout"} {
		path = append(path, filepath.Dir(testenv.RequireBinary(t, bin)))
	}
	bash := testenv.RequireBinary(t, "bash")
	root := testenv.ModuleRoot(t)

	dir := t.TempDir()
	linkModule(t, root, dir)
	scriptPath := filepath.Join(t.TempDir(), "walkthrough.sh")
	if err := os.WriteFile(scriptPath, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}

	// The walkthrough uses fixed ports: one run at a time on this machine,
	// and a clear failure if something else holds one of them.
	lockWalkthrough(t)
	for _, port := range readmePorts(script) {
		if err := portFree(port); err != nil {
			t.Fatalf("the README walkthrough needs 127.0.0.1:%d, which is taken (%v): stop what uses it (ss -ltnup | grep %d)", port, err, port)
		}
	}

	start := time.Now()
	p := testenv.StartProcWith(t, testenv.ProcOptions{
		Dir: dir,
		Env: []string{"PATH=" + strings.Join(append(path, os.Getenv("PATH")), string(os.PathListSeparator))},
	}, bash, scriptPath)
	ctx, cancel := context.WithTimeout(context.Background(), walkthroughTimeout)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		block, cmd := failedAt(p.Stderr())
		t.Fatalf("the README walkthrough failed after %v: %v\nin the block at %s, the last command run:\n%s\nthe end of its output (set -x traces, the DPs' logs):\n%s",
			time.Since(start).Round(time.Second), err, block, cmd, lastLines(p.Stderr(), 30))
	}
	t.Logf("README walkthrough: %d blocks ran in %v; what a user sees on stdout:\n%s", n, time.Since(start).Round(time.Second), p.Stdout())

	// It did what the README says: 1.1 is back after the unhold, and the
	// mirror's endpoint has it too.
	for _, f := range []string{"endpoint/avbases/current", "endpoint2/avbases/current"} {
		if _, err := os.Stat(filepath.Join(dir, f, "databases", "av-daily.dat")); err != nil {
			t.Errorf("after the walkthrough, %s lacks version 1.1's new file: %v", f, err)
		}
	}
}

// linkModule symlinks into dir what building the module needs: go.mod,
// go.sum, the Makefile and the top-level directories holding its packages.
// Nothing of the checkout is copied, and nothing the walkthrough writes
// lands in the checkout.
func linkModule(t *testing.T, root, dir string) {
	t.Helper()
	cmd := exec.Command(testenv.RequireBinary(t, "go"), "list", "-f", "{{.Dir}}", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./... in %s: %v", root, err)
	}
	names := []string{"go.mod", "go.sum", "Makefile"}
	for _, pkgDir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, pkgDir)
		if err != nil || rel == "." {
			continue
		}
		if top := strings.Split(rel, string(filepath.Separator))[0]; !slices.Contains(names, top) {
			names = append(names, top)
		}
	}
	for _, name := range names {
		if err := os.Symlink(filepath.Join(root, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

var readmePortRE = regexp.MustCompile(`127\.0\.0\.1:(\d+)`)

// readmePorts lists the loopback ports a script names.
func readmePorts(script string) []int {
	var ports []int
	for _, m := range readmePortRE.FindAllStringSubmatch(script, -1) {
		if p, err := strconv.Atoi(m[1]); err == nil && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}

// portFree reports whether port is free on 127.0.0.1 for TCP and UDP
// (gossip listens on both).
func portFree(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	l.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	return pc.Close()
}

// lockWalkthrough waits until no other walkthrough runs on this machine (a
// second checkout's test, say): they would fight over the fixed ports.
func lockWalkthrough(t *testing.T) {
	t.Helper()
	path := filepath.Join(os.TempDir(), "dpcache-readme-walkthrough.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o666) // flock needs no write access
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
	deadline := time.Now().Add(walkthroughTimeout)
	for logged := false; ; logged = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			t.Fatalf("lock %s (another README walkthrough is running on this machine): %v", path, err)
		}
		if !logged {
			t.Logf("waiting for another README walkthrough on this machine (%s)", path)
		}
		time.Sleep(time.Second)
	}
}

// failedAt finds, in the stderr of a failed walkthrough, the README block
// that ran last (the ": README.md line N" marker before it) and the last
// command set -x traced.
func failedAt(stderr string) (block, cmd string) {
	block, cmd = "README.md (no block started)", "(none traced)"
	for _, l := range strings.Split(stderr, "\n") {
		switch {
		case strings.HasPrefix(l, "+ "+walkthroughExit):
			return block, cmd
		case strings.HasPrefix(l, "+ : README.md line "):
			block = strings.TrimPrefix(l, "+ : ")
		case strings.HasPrefix(l, "+"):
			cmd = l
		}
	}
	return block, cmd
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
