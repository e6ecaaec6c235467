package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NginxStartTimeout bounds how long StartNginx waits for nginx to answer.
const NginxStartTimeout = 30 * time.Second

// nginxBindAttempts is how many free ports StartNginx tries before giving up:
// another process can take a port between FreeAddr and nginx's bind.
const nginxBindAttempts = 5

// readyPath answers the readiness probe with a per-instance token, so a probe
// answered by some other server that took the port is not mistaken for ours.
// It is not logged.
const readyPath = "/__testenv/ready"

// NginxOptions tunes StartNginx. The zero value serves root at "/" at full
// speed.
type NginxOptions struct {
	// LimitRate is nginx's limit_rate for every response, for example "64k"
	// or "1m" (bytes per second; k and m are 1024-based). Empty means no limit.
	LimitRate string
	// Prefix serves root under this URL path, for example "/updates/", as a
	// vendor's repository often is. Empty means "/". Requests outside it get
	// 404.
	Prefix string
	// ServerConfig is raw nginx directives added to the server block, for
	// tests that need more (a location that fails, a header). The caller
	// quotes what needs quoting.
	ServerConfig string
}

var (
	limitRateRE = regexp.MustCompile(`^[0-9]+[kKmMgG]?$`)
	prefixRE    = regexp.MustCompile(`^/([A-Za-z0-9._~-]+/)*$`)
)

// normalize validates o and returns it with Prefix in the form "/a/b/".
func (o NginxOptions) normalize() (NginxOptions, error) {
	if o.LimitRate != "" && !limitRateRE.MatchString(o.LimitRate) {
		return o, fmt.Errorf("NginxOptions.LimitRate %q is not an nginx size such as 64k or 1m", o.LimitRate)
	}
	p := o.Prefix
	if p == "" {
		p = "/"
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	if !prefixRE.MatchString(p) || path.Clean(p)+"/" != p && p != "/" {
		return o, fmt.Errorf("NginxOptions.Prefix %q is not a clean URL path of [A-Za-z0-9._~-] segments", o.Prefix)
	}
	o.Prefix = p
	return o, nil
}

// Nginx is a real nginx started by StartNginx, serving a directory as static
// files on 127.0.0.1. Its fields are set once and never change; its methods
// are safe for concurrent use.
type Nginx struct {
	// URL is the root of the served tree, ending in "/": "http://ADDR/" or
	// "http://ADDR/updates/" with NginxOptions.Prefix "/updates/".
	URL string
	// Addr is "127.0.0.1:PORT".
	Addr string
	// Root is the directory served.
	Root string
	// Dir is nginx's prefix directory (configuration, logs, pid, temp files).
	Dir string
	// ConfPath, AccessLog and ErrorLog are files in Dir.
	ConfPath  string
	AccessLog string
	ErrorLog  string

	proc     *Proc
	stopOnce sync.Once
}

// StartNginx starts the Debian nginx (skipping or failing the test as
// RequireBinary does if it is missing) in the foreground, as a child of the
// test, serving root as static files with sendfile on, as a production origin
// would. Everything nginx writes goes to a fresh temporary directory. It
// returns once nginx answers HTTP. t.Cleanup stops it (SIGQUIT, then SIGKILL
// after StopTimeout) and waits for it.
//
// Running as root, nginx's workers would switch to user nobody, which cannot
// read a test's temporary directories (mode 0700); so as root the workers
// stay root ("user root root;"). As any other user the directive is left out.
func StartNginx(t testing.TB, root string, opts NginxOptions) *Nginx {
	t.Helper()
	bin := RequireBinary(t, "nginx")
	opts, err := opts.normalize()
	if err != nil {
		t.Fatalf("testenv: start nginx: %v", err)
	}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		t.Fatalf("testenv: start nginx: root %q: %v", root, err)
	}
	if fi, err := os.Stat(absRoot); err != nil || !fi.IsDir() {
		t.Fatalf("testenv: start nginx: root %q is not a directory (%v)", absRoot, err)
	}

	var lastErr error
	for attempt := 1; attempt <= nginxBindAttempts; attempt++ {
		n, retry, err := startNginx(t, bin, absRoot, opts)
		if err == nil {
			return n
		}
		lastErr = err
		if !retry {
			break
		}
		t.Logf("testenv: nginx attempt %d: %v; retrying on another port", attempt, err)
	}
	t.Fatalf("testenv: start nginx: %v", lastErr)
	return nil
}

// startNginx makes one attempt on a fresh port. retry reports whether the
// failure was a lost race for the port.
func startNginx(t testing.TB, bin, root string, opts NginxOptions) (*Nginx, bool, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, false, fmt.Errorf("create nginx temp dir: %w", err)
	}
	addr, err := freeAddr("127.0.0.1")
	if err != nil {
		return nil, false, fmt.Errorf("find a free port: %w", err)
	}
	token := randomToken()
	// The cleanup below must see this value, whatever this function returns.
	n := &Nginx{
		URL:       "http://" + addr + opts.Prefix,
		Addr:      addr,
		Root:      root,
		Dir:       dir,
		ConfPath:  filepath.Join(dir, "nginx.conf"),
		AccessLog: filepath.Join(dir, "access.log"),
		ErrorLog:  filepath.Join(dir, "error.log"),
	}
	conf := nginxConfig(n, opts, token, os.Geteuid() == 0)
	if err := os.WriteFile(n.ConfPath, []byte(conf), 0o644); err != nil {
		return nil, false, fmt.Errorf("write %s: %w", n.ConfPath, err)
	}
	proc, err := startProc(dir, ProcOptions{}, bin,
		"-p", dir+"/", "-c", n.ConfPath, "-e", n.ErrorLog, "-g", "daemon off;")
	if err != nil {
		return nil, false, err
	}
	n.proc = proc
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			n.proc.dump(t)
			t.Logf("testenv: nginx error log %s:\n%s", n.ErrorLog, tail(readFile(n.ErrorLog), dumpLimit))
		}
	})

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	ready := poll(NginxStartTimeout, func() bool {
		return n.proc.Exited() || probe(client, "http://"+addr+readyPath) == token
	})
	if n.proc.Exited() {
		errLog := readFile(n.ErrorLog) + n.proc.Stderr()
		if strings.Contains(errLog, "Address already in use") {
			return nil, true, fmt.Errorf("nginx could not bind %s: %s", addr, lastLine(errLog))
		}
		return nil, false, fmt.Errorf("nginx exited at startup (%s), config %s: %s",
			n.proc.cmd.ProcessState, n.ConfPath, tail(strings.TrimSpace(errLog), 4096))
	}
	if !ready {
		n.stop()
		return nil, false, fmt.Errorf("nginx did not answer on %s within %v: %s",
			addr, NginxStartTimeout, tail(readFile(n.ErrorLog), 4096))
	}
	return n, false, nil
}

// probe returns the body of a GET, or "" on any error.
func probe(client *http.Client, url string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return ""
	}
	resp, err := client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

// nginxConfig renders nginx.conf. Every path nginx writes is inside n.Dir.
func nginxConfig(n *Nginx, opts NginxOptions, token string, asRoot bool) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# generated by dpcache e2e/testenv")
	if asRoot {
		// Workers would otherwise run as nobody and get 403 on 0700 temp dirs.
		w("user root root;")
	}
	w("worker_processes 1;")
	w("pid %s;", quote(filepath.Join(n.Dir, "nginx.pid")))
	w("lock_file %s;", quote(filepath.Join(n.Dir, "nginx.lock")))
	w("error_log %s notice;", quote(n.ErrorLog))
	w("events { worker_connections 512; }")
	w("http {")
	w("    default_type application/octet-stream;")
	w("    types { application/json json; text/plain txt minisig; text/html html; }")
	w("    sendfile on;")
	w("    tcp_nopush on;")
	w("    keepalive_timeout 30s;")
	w("    server_tokens off;")
	for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		w("    %s_temp_path %s;", kind, quote(filepath.Join(n.Dir, "tmp", kind)))
	}
	// JSON lines, every value a string (a $status of "000" is no JSON number).
	w(`    log_format testenv escape=json '{"method":"$request_method","uri":"$request_uri",'`)
	w(`        '"status":"$status","bytes":"$body_bytes_sent","range":"$http_range",'`)
	w(`        '"complete":"$request_completion","time":"$msec"}';`)
	w("    access_log %s testenv;", quote(n.AccessLog))
	w("    server {")
	w("        listen %s;", n.Addr)
	w("        server_name localhost;")
	if opts.LimitRate != "" {
		w("        limit_rate %s;", opts.LimitRate)
	}
	w("        location = %s { access_log off; default_type text/plain; return 200 %s; }", readyPath, quote(token))
	if opts.Prefix == "/" {
		w("        location / { root %s; }", quote(n.Root))
	} else {
		w("        location %s { alias %s; }", opts.Prefix, quote(n.Root+"/"))
		w("        location / { return 404; }")
	}
	if opts.ServerConfig != "" {
		w("        %s", opts.ServerConfig)
	}
	w("    }")
	w("}")
	return b.String()
}

// quote makes s one nginx string token.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Stop stops nginx gracefully (SIGQUIT: it finishes requests in flight),
// kills it and its workers after StopTimeout, and waits. Later requests get
// "connection refused", as from an origin that went down. Stop is idempotent;
// the test's cleanup calls it too.
func (n *Nginx) Stop(t testing.TB) {
	t.Helper()
	n.stop()
}

func (n *Nginx) stop() {
	n.stopOnce.Do(func() { _ = n.proc.stop(syscall.SIGQUIT) })
}

// Pid returns the nginx master's process id.
func (n *Nginx) Pid() int { return n.proc.Pid() }

// AccessEntry is one request in nginx's access log.
type AccessEntry struct {
	Method string
	// URI is the request URI as sent: path and query, not decoded.
	URI    string
	Status int
	// Bytes is the number of body bytes sent (body_bytes_sent); for a request
	// the client abandoned, what had been sent by then.
	Bytes int64
	// Range is the Range request header, "" if none.
	Range string
	// Complete reports whether nginx sent the whole response
	// ($request_completion).
	Complete bool
}

type rawEntry struct {
	Method   string `json:"method"`
	URI      string `json:"uri"`
	Status   string `json:"status"`
	Bytes    string `json:"bytes"`
	Range    string `json:"range"`
	Complete string `json:"complete"`
}

// Requests parses the access log: every request nginx has finished so far,
// oldest first. nginx logs a request after sending its last byte, so a client
// may see a response a moment before its entry appears: wait for an expected
// count with WaitFor rather than reading it once.
func (n *Nginx) Requests(t testing.TB) []AccessEntry {
	t.Helper()
	entries, err := parseAccessLog(n.AccessLog)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return entries
}

func parseAccessLog(file string) ([]AccessEntry, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read nginx access log: %w", err)
	}
	// A line still being written has no newline yet: leave it for next time.
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var entries []AccessEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var raw rawEntry
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			return nil, fmt.Errorf("nginx access log %s line %d: %w", file, line, err)
		}
		status, err := strconv.Atoi(raw.Status)
		if err != nil {
			return nil, fmt.Errorf("nginx access log %s line %d: status %q: %w", file, line, raw.Status, err)
		}
		size, err := strconv.ParseInt(raw.Bytes, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("nginx access log %s line %d: bytes %q: %w", file, line, raw.Bytes, err)
		}
		entries = append(entries, AccessEntry{
			Method:   raw.Method,
			URI:      raw.URI,
			Status:   status,
			Bytes:    size,
			Range:    raw.Range,
			Complete: raw.Complete == "OK",
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("nginx access log %s: %w", file, err)
	}
	return entries, nil
}

// CountRequests returns how many logged requests have a URI path (query
// left out) ending in pathSuffix; "" counts every request.
func (n *Nginx) CountRequests(t testing.TB, pathSuffix string) int {
	t.Helper()
	count := 0
	for _, e := range n.Requests(t) {
		if strings.HasSuffix(uriPath(e.URI), pathSuffix) {
			count++
		}
	}
	return count
}

// BytesServed returns the body bytes sent for logged requests whose URI
// starts with prefix (for example "/blobs/" or "/updates/blobs/"); "" sums
// every request.
func (n *Nginx) BytesServed(t testing.TB, prefix string) int64 {
	t.Helper()
	var total int64
	for _, e := range n.Requests(t) {
		if strings.HasPrefix(e.URI, prefix) {
			total += e.Bytes
		}
	}
	return total
}

func uriPath(uri string) string {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}
