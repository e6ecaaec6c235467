package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// VsftpdStartTimeout bounds how long StartVsftpd waits for the greeting.
const VsftpdStartTimeout = 30 * time.Second

// vsftpdBindAttempts is how many free ports StartVsftpd tries.
const vsftpdBindAttempts = 5

// Passive data ports are drawn from below Linux's ephemeral range
// (32768-60999), where FreeAddr's port-0 listeners never land.
const (
	pasvLow   = 10000
	pasvHigh  = 32000
	pasvRange = 40
)

// VsftpdOptions tunes StartVsftpd. The zero value serves root to anonymous
// users, read-only.
type VsftpdOptions struct {
	// User and Password, when User is set, are a local account that the
	// helper creates for the server (useradd, chpasswd; userdel at
	// cleanup) with root as its login directory; anonymous access is then
	// off. Creating it needs root: otherwise the test is skipped, or fails
	// in CI. The name must not exist yet: use a name unique to the test
	// (UniqueUserName). Neither may contain ':' or a line break.
	User     string
	Password string
	// MaxRate limits each transfer to this many bytes per second (vsftpd's
	// local_max_rate and anon_max_rate); 0 means no limit.
	MaxRate int
}

// Vsftpd is a real vsftpd started by StartVsftpd, serving a directory on
// 127.0.0.1 in passive mode. Its fields are set once; its methods are safe
// for concurrent use.
type Vsftpd struct {
	// URL is "ftp://[user:password@]127.0.0.1:PORT/": the served root
	// (the login directory), with the credentials of VsftpdOptions.
	URL string
	// Addr is "127.0.0.1:PORT".
	Addr string
	// Root is the directory served.
	Root string
	// User and Password are the account's, empty for anonymous access.
	User, Password string
	// PasvMin and PasvMax bound the passive data ports.
	PasvMin, PasvMax int
	// Dir holds the configuration and the log; ConfPath and LogPath are
	// files in it.
	Dir      string
	ConfPath string
	LogPath  string

	proc     *Proc
	stopOnce sync.Once
}

// StartVsftpd starts the Debian vsftpd (skipping or failing the test as
// RequireBinary does if it is missing) in the foreground (listen=YES,
// background=NO) as a child of the test, on a free port of 127.0.0.1,
// serving root read-only, with passive ports on loopback. It returns once
// vsftpd greets with this instance's banner. t.Cleanup stops it, then
// deletes the account it created.
//
// The configuration works as root on Debian 12: PAM authenticates the
// local account (service "vsftpd"), the session runs as that account
// without chroot, and the sandboxes that need privileges a container may
// lack (seccomp, network and PID namespaces) are off. So that the account
// (or the anonymous "ftp" user) can read root, StartVsftpd adds o+x to
// root's ancestor directories the test owns (t.TempDir makes them 0700)
// and o+r (o+rx for directories) to everything under root.
//
// The log (LogPath) records every command and every transfer with its
// size: see Transfers and Commands.
func StartVsftpd(t testing.TB, root string, opts VsftpdOptions) *Vsftpd {
	t.Helper()
	bin := RequireBinary(t, "vsftpd")
	asRoot := os.Geteuid() == 0
	if !asRoot {
		requireRoot(t, "vsftpd (it switches to the FTP account)")
	}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		t.Fatalf("testenv: start vsftpd: root %q: %v", root, err)
	}
	if fi, err := os.Stat(absRoot); err != nil || !fi.IsDir() {
		t.Fatalf("testenv: start vsftpd: root %q is not a directory (%v)", absRoot, err)
	}
	if strings.ContainsAny(opts.User+opts.Password, ":\r\n") {
		t.Fatalf("testenv: start vsftpd: user or password contains ':' or a line break")
	}
	if opts.User == "" && opts.Password != "" {
		t.Fatalf("testenv: start vsftpd: a Password without a User")
	}
	if err := makeReadable(absRoot); err != nil {
		t.Fatalf("testenv: start vsftpd: make %s readable by the FTP account: %v", absRoot, err)
	}
	if opts.User != "" {
		createUser(t, opts.User, opts.Password, absRoot)
	} else if _, err := userHome("ftp"); err != nil {
		t.Fatalf("testenv: start vsftpd: anonymous access runs as the user \"ftp\", which the Debian package creates: %v", err)
	}

	var lastErr error
	for attempt := 1; attempt <= vsftpdBindAttempts; attempt++ {
		v, retry, err := startVsftpd(t, bin, absRoot, opts)
		if err == nil {
			return v
		}
		lastErr = err
		if !retry {
			break
		}
		t.Logf("testenv: vsftpd attempt %d: %v; retrying on another port", attempt, err)
	}
	t.Fatalf("testenv: start vsftpd: %v", lastErr)
	return nil
}

func startVsftpd(t testing.TB, bin, root string, opts VsftpdOptions) (*Vsftpd, bool, error) {
	t.Helper()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		return nil, false, fmt.Errorf("create secure_chroot_dir: %w", err)
	}
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return nil, false, fmt.Errorf("find a free port: %w", err)
	}
	_, port, _ := net.SplitHostPort(addr)
	pasvMin := pasvLow + rand.IntN(pasvHigh-pasvLow-pasvRange)
	token := "testenv-" + randomToken()
	v := &Vsftpd{
		Addr: addr, Root: root, User: opts.User, Password: opts.Password,
		PasvMin: pasvMin, PasvMax: pasvMin + pasvRange - 1,
		Dir: dir, ConfPath: filepath.Join(dir, "vsftpd.conf"), LogPath: filepath.Join(dir, "vsftpd.log"),
	}
	u := url.URL{Scheme: "ftp", Host: addr, Path: "/"}
	if opts.User != "" {
		u.User = url.UserPassword(opts.User, opts.Password)
	}
	v.URL = u.String()

	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# generated by dpcache e2e/testenv")
	w("listen=YES")
	w("listen_ipv6=NO")
	w("listen_address=127.0.0.1")
	w("listen_port=%s", port)
	w("background=NO")
	w("ftpd_banner=%s", token)
	w("write_enable=NO")
	w("download_enable=YES")
	w("dirlist_enable=YES")
	w("pasv_enable=YES")
	w("port_enable=NO")
	w("pasv_address=127.0.0.1")
	w("pasv_min_port=%d", v.PasvMin)
	w("pasv_max_port=%d", v.PasvMax)
	w("secure_chroot_dir=%s", empty)
	// Sandboxes that need privileges a container may not grant.
	w("seccomp_sandbox=NO")
	w("isolate=NO")
	w("isolate_network=NO")
	w("delay_failed_login=0")
	w("max_login_fails=100")
	w("max_clients=0")
	w("max_per_ip=0")
	w("use_sendfile=YES")
	w("xferlog_enable=YES")
	w("xferlog_std_format=NO")
	w("log_ftp_protocol=YES")
	w("vsftpd_log_file=%s", v.LogPath)
	w("dual_log_enable=NO")
	w("syslog_enable=NO")
	w("session_support=NO")
	w("tcp_wrappers=NO")
	if opts.User != "" {
		w("anonymous_enable=NO")
		w("local_enable=YES")
		w("local_root=%s", root)
		w("chroot_local_user=NO")
		w("pam_service_name=vsftpd")
		w("userlist_enable=NO")
		if opts.MaxRate > 0 {
			w("local_max_rate=%d", opts.MaxRate)
		}
	} else {
		w("anonymous_enable=YES")
		w("local_enable=NO")
		w("anon_root=%s", root)
		w("no_anon_password=YES")
		w("anon_world_readable_only=YES")
		if opts.MaxRate > 0 {
			w("anon_max_rate=%d", opts.MaxRate)
		}
	}
	if err := os.WriteFile(v.ConfPath, []byte(b.String()), 0o600); err != nil {
		return nil, false, fmt.Errorf("write %s: %w", v.ConfPath, err)
	}
	proc, err := startProc(dir, ProcOptions{}, bin, v.ConfPath)
	if err != nil {
		return nil, false, err
	}
	v.proc = proc
	t.Cleanup(func() {
		v.stop()
		if t.Failed() {
			v.proc.dump(t)
			t.Logf("testenv: vsftpd log %s:\n%s", v.LogPath, tail(readFile(v.LogPath), dumpLimit))
		}
	})
	ready := poll(VsftpdStartTimeout, func() bool {
		return v.proc.Exited() || strings.Contains(greeting(addr), token)
	})
	if v.proc.Exited() {
		out := strings.TrimSpace(v.proc.Output())
		if strings.Contains(out, "could not bind") {
			return nil, true, fmt.Errorf("vsftpd could not bind %s: %s", addr, lastLine(out))
		}
		return nil, false, fmt.Errorf("vsftpd exited at startup (%s), config %s: %s", v.proc.cmd.ProcessState, v.ConfPath, tail(out, 4096))
	}
	if !ready {
		v.stop()
		return nil, false, fmt.Errorf("vsftpd did not greet on %s within %v: %s", addr, VsftpdStartTimeout, tail(v.proc.Output(), 4096))
	}
	return v, false, nil
}

// greeting returns the first line an FTP server at addr sends, or "".
func greeting(addr string) string {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return ""
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	_, _ = conn.Write([]byte("QUIT\r\n"))
	return line
}

// Stop stops vsftpd and every session, as a crash of the server would:
// sessions run in their own sessions (setsid), out of reach of a process
// group signal, so Stop freezes the listener (SIGSTOP: no new session can
// start), kills its descendants, then kills it, and waits. Clients see
// their connections drop. Stop is idempotent; the cleanup calls it.
func (v *Vsftpd) Stop(t testing.TB) {
	t.Helper()
	v.stop()
}

func (v *Vsftpd) stop() {
	v.stopOnce.Do(func() {
		if v.proc.Exited() {
			return
		}
		_ = v.proc.Signal(sigStop)
		pids := descendants(v.proc.Pid())
		for _, pid := range pids {
			killPid(pid)
		}
		v.proc.Kill()
		// SIGKILL takes effect asynchronously: wait until the sessions are
		// gone (or zombies), so their connections are closed on return.
		poll(StopTimeout, func() bool {
			for _, pid := range pids {
				if alive(pid) {
					return false
				}
			}
			return true
		})
	})
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// descendants returns the pids of pid's children, grandchildren and so on,
// from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// Pid returns the vsftpd listener's process id.
func (v *Vsftpd) Pid() int { return v.proc.Pid() }

// FTPTransfer is one download in vsftpd's log.
type FTPTransfer struct {
	// Path is the file's absolute path on the server.
	Path string
	// Bytes is how many bytes were sent (from the REST offset on).
	Bytes int64
	// OK is false for a transfer that failed or that the client cut.
	OK bool
}

var (
	vsftpdTransferRE = regexp.MustCompile(`\] (OK|FAIL) DOWNLOAD: Client "[^"]*", "([^"]*)", (\d+) bytes`)
	vsftpdCommandRE  = regexp.MustCompile(`\] FTP command: Client "[^"]*", "([^"]*)"`)
)

// Transfers returns the downloads vsftpd has logged so far, oldest first.
// vsftpd logs a transfer when it ends: poll with WaitFor for an expected
// count.
func (v *Vsftpd) Transfers(t testing.TB) []FTPTransfer {
	t.Helper()
	var out []FTPTransfer
	for _, m := range v.logMatches(t, vsftpdTransferRE) {
		n, err := strconv.ParseInt(m[3], 10, 64)
		if err != nil {
			t.Fatalf("testenv: vsftpd log %s: byte count %q: %v", v.LogPath, m[3], err)
		}
		out = append(out, FTPTransfer{Path: m[2], Bytes: n, OK: m[1] == "OK"})
	}
	return out
}

// BytesServed sums the bytes of logged downloads whose path ends in suffix
// ("" for all).
func (v *Vsftpd) BytesServed(t testing.TB, suffix string) int64 {
	t.Helper()
	var total int64
	for _, tr := range v.Transfers(t) {
		if strings.HasSuffix(tr.Path, suffix) {
			total += tr.Bytes
		}
	}
	return total
}

// Commands returns the FTP commands clients sent so far ("REST 1234",
// "RETR blobs/sha256/..."), oldest first; PASS is logged as "PASS
// <password>", without the password.
func (v *Vsftpd) Commands(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, m := range v.logMatches(t, vsftpdCommandRE) {
		out = append(out, m[1])
	}
	return out
}

func (v *Vsftpd) logMatches(t testing.TB, re *regexp.Regexp) [][]string {
	t.Helper()
	data, err := os.ReadFile(v.LogPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("testenv: read vsftpd log: %v", err)
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1] // a line still being written waits for next time
	} else {
		data = nil
	}
	var out [][]string
	for _, line := range strings.Split(string(data), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			out = append(out, m)
		}
	}
	return out
}

// UniqueUserName returns a system user name that does not exist yet:
// prefix (at most 20 characters of [a-z0-9_-], starting with a letter)
// followed by random digits.
func UniqueUserName(t testing.TB, prefix string) string {
	t.Helper()
	if !regexp.MustCompile(`^[a-z][a-z0-9_-]{0,19}$`).MatchString(prefix) {
		t.Fatalf("testenv: user name prefix %q: want 1 to 20 of [a-z0-9_-], starting with a letter", prefix)
	}
	for range 100 {
		name := fmt.Sprintf("%s%06d", prefix, rand.IntN(1_000_000))
		if _, err := userHome(name); err != nil {
			return name
		}
	}
	t.Fatalf("testenv: no free user name with prefix %q", prefix)
	return ""
}

// requireRoot skips the test (fails it in CI) unless it runs as root.
func requireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("testenv: %s needs root; CI is set, so this fails instead of skipping (.ci/run runs as root)", what)
	}
	SkipMissing(t, "root", what+" needs root: run the tests as root (.ci/run does)")
}

// userMu serialises account changes of this process: useradd and userdel
// lock /etc/passwd and fail rather than wait when another holds it.
var userMu sync.Mutex

// createUser adds a local account whose home is home, and deletes it at
// cleanup (after the servers started later have stopped: cleanups run last
// in, first out).
func createUser(t testing.TB, name, password, home string) {
	t.Helper()
	if _, err := userHome(name); err == nil {
		t.Fatalf("testenv: user %q exists already; use a name unique to the test (UniqueUserName)", name)
	}
	useradd := RequireBinary(t, "useradd")
	chpasswd := RequireBinary(t, "chpasswd")
	userdel := RequireBinary(t, "userdel")
	if err := accountCommand(nil, useradd, "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
		"--comment", "dpcache test account", "--no-user-group", name); err != nil {
		t.Fatalf("testenv: create user %q: %v", name, err)
	}
	t.Cleanup(func() {
		if err := accountCommand(nil, userdel, "--force", name); err != nil {
			t.Errorf("testenv: delete user %q: %v", name, err)
		}
	})
	if err := accountCommand(strings.NewReader(name+":"+password+"\n"), chpasswd); err != nil {
		t.Fatalf("testenv: set the password of %q: %v", name, err)
	}
}

// accountCommand runs an account tool, retrying while /etc/passwd is
// locked by another process.
func accountCommand(stdin *strings.Reader, bin string, args ...string) error {
	userMu.Lock()
	defer userMu.Unlock()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		cmd := exec.Command(bin, args...)
		if stdin != nil {
			_, _ = stdin.Seek(0, 0)
			cmd.Stdin = stdin
		}
		var out []byte
		out, err = cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		err = fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, bytes.TrimSpace(out))
		if !bytes.Contains(out, []byte("lock")) {
			return err
		}
		time.Sleep(time.Duration(50*(attempt+1)) * time.Millisecond)
	}
	return err
}

// userHome returns the home directory of a local account, or an error if
// there is none.
func userHome(name string) (string, error) {
	data, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 6 && f[0] == name {
			return f[5], nil
		}
	}
	return "", fmt.Errorf("no user %q in /etc/passwd", name)
}

// makeReadable lets any user reach dir (o+x on its ancestors, where this
// process owns them) and read what is in it (o+r, o+x for directories).
func makeReadable(dir string) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if ownedByUs(fi) {
				if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
					return err
				}
			} else {
				return fmt.Errorf("%s is not traversable by other users and not ours to change", d)
			}
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fi.Mode().Perm() | 0o004
		if d.IsDir() {
			want |= 0o001
		}
		if d.Type()&fs.ModeSymlink != 0 || want == fi.Mode().Perm() {
			return nil
		}
		return os.Chmod(p, want)
	})
}
