package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jlaffaye/ftp"
)

// FTP pool limits.
const (
	// ftpMaxIdle is how many logged-in control connections an FTP source
	// keeps for reuse. A transfer holds its connection; more transfers at
	// once log in more connections, which are closed rather than kept.
	ftpMaxIdle = 4
	// ftpIdleTime is how long a pooled connection may sit unused before it
	// is closed instead of reused (servers drop idle sessions: vsftpd
	// after 300 s by default).
	ftpIdleTime = 30 * time.Second
)

// errLogin marks a refused login, which must not read as "not found".
var errLogin = errors.New("login refused")

// FTP is a repository on an FTP server (vsftpd, ProFTPD, IIS, a NAS),
// read in passive mode (EPSV, else PASV) and binary type, with REST to
// start a blob at an offset. Paths are relative to the login directory, as
// in curl: ftp://host/updates/ is "updates/" under it, ftp://host/%2Fsrv/
// is the absolute /srv/.
//
// Each transfer uses its own logged-in control connection; up to
// ftpMaxIdle of them are kept for reuse, so a document and its signature
// cost one login. FTP sources never go through an HTTP proxy
// (Options.Proxy applies to http:// and https:// only).
//
// FTP is safe for concurrent use.
type FTP struct {
	addr    string // host:port
	user    string
	pass    string
	root    string // "" (the login directory) or a directory ending in "/"
	name    string // the URL with the password redacted
	timeout time.Duration

	mu     sync.Mutex // guards idle and closed
	idle   []*ftpConn // logged-in connections, most recently used last
	closed bool
}

// NewFTP returns a Source for the repository at u
// (ftp://[user[:password]@]host[:port]/path). Without a user it logs in
// as "anonymous". It does not connect until first used.
func NewFTP(u *url.URL, opts Options) (*FTP, error) {
	opts = opts.withDefaults()
	port := u.Port()
	if port == "" {
		port = "21"
	}
	root := strings.TrimPrefix(u.Path, "/")
	if root != "" && !strings.HasSuffix(root, "/") {
		root += "/"
	}
	if strings.ContainsAny(root, "\r\n") {
		return nil, fmt.Errorf("source %q: %w: line break in the path", Redact(u.String()), ErrBadURL)
	}
	user, pass := "anonymous", "anonymous@"
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
		pass, _ = u.User.Password()
	}
	if strings.ContainsAny(user+pass, "\r\n") {
		return nil, fmt.Errorf("source %q: %w: line break in the user or password", Redact(u.String()), ErrBadURL)
	}
	n := *u
	n.RawQuery, n.Fragment, n.RawPath = "", "", ""
	if !strings.HasSuffix(n.Path, "/") {
		n.Path += "/"
	}
	return &FTP{
		addr: net.JoinHostPort(u.Hostname(), port), user: user, pass: pass,
		root: root, name: n.Redacted(), timeout: opts.Timeout,
	}, nil
}

// String implements Source.
func (f *FTP) String() string { return f.name }

// Close implements Source: it logs out the pooled connections. Transfers
// in progress finish and then close their own.
func (f *FTP) Close() error {
	f.mu.Lock()
	idle := f.idle
	f.idle, f.closed = nil, true
	f.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
	return nil
}

// Latest implements Source.
func (f *FTP) Latest(ctx context.Context, product string) (Signed, error) {
	rel, err := LatestPath(product)
	if err != nil {
		return Signed{}, err
	}
	return f.signed(ctx, rel)
}

// Manifest implements Source.
func (f *FTP) Manifest(ctx context.Context, product, version string) (Signed, error) {
	rel, err := ManifestPath(product, version)
	if err != nil {
		return Signed{}, err
	}
	return f.signed(ctx, rel)
}

func (f *FTP) signed(ctx context.Context, rel string) (Signed, error) {
	data, err := f.read(ctx, rel)
	if err != nil {
		return Signed{}, err
	}
	sig, err := f.read(ctx, rel+".minisig")
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Signed{}, err
	}
	return Signed{Data: data, Signature: sig, Source: f.name}, nil
}

// errTooLarge stops reading a document larger than maxDocument.
var errTooLarge = errors.New("document too large")

// read retrieves a whole (small) file.
func (f *FTP) read(ctx context.Context, rel string) ([]byte, error) {
	var data []byte
	err := f.withConn(ctx, func(c *ftpConn) error {
		resp, err := c.sc.Retr(f.root + rel)
		if err != nil {
			return err
		}
		data, err = io.ReadAll(io.LimitReader(resp, maxDocument+1))
		if err != nil {
			return err
		}
		if len(data) > maxDocument {
			return errTooLarge
		}
		// The 226 reply is what says the file was sent whole: a data
		// connection that closes early looks like a clean end.
		return resp.Close()
	})
	if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("%s: %s: document larger than %d bytes: %w", f, rel, maxDocument, ErrDataLoss)
	}
	if err != nil {
		return nil, f.wrap(rel, err)
	}
	return data, nil
}

// withConn runs fn on a logged-in connection, armed for ctx. A connection
// taken from the pool that fails other than by an FTP reply (the server
// dropped the idle session) is replaced by a fresh one, once.
func (f *FTP) withConn(ctx context.Context, fn func(*ftpConn) error) error {
	for attempt := 0; ; attempt++ {
		c, pooled, err := f.get(ctx)
		if err != nil {
			return err
		}
		end := c.begin(ctx, f.timeout)
		err = fn(c)
		end()
		if err == nil {
			f.put(c)
			return nil
		}
		if reusable(err) {
			f.put(c)
			return err
		}
		c.close()
		if pooled && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return err
	}
}

// reusable reports whether a connection is still in a known state after
// err: the server answered a command with an error reply.
func reusable(err error) bool {
	var te *textproto.Error
	return errors.As(err, &te) && te.Code != ftp.StatusNotAvailable
}

// Blob implements Source. It asks the blob's size (SIZE), so that an
// offset past the end is an error and a transfer that stops early is
// io.ErrUnexpectedEOF, then retrieves it from offset (REST, RETR).
func (f *FTP) Blob(ctx context.Context, digest string, offset int64) (io.ReadCloser, error) {
	rel, err := BlobPath(digest)
	if err != nil {
		return nil, err
	}
	path := f.root + rel
	for attempt := 0; ; attempt++ {
		c, pooled, err := f.get(ctx)
		if err != nil {
			return nil, f.wrap(rel, err)
		}
		end := c.begin(ctx, f.timeout)
		size, err := c.sc.FileSize(path)
		if err == nil {
			switch {
			case offset > size:
				end()
				f.put(c)
				return nil, fmt.Errorf("%s: %s: offset %d is past the end (%d bytes): %w", f, rel, offset, size, ErrDataLoss)
			case offset == size:
				end()
				f.put(c)
				return io.NopCloser(strings.NewReader("")), nil
			}
			var resp *ftp.Response
			resp, err = c.sc.RetrFrom(path, uint64(offset))
			if err == nil {
				return &ftpBlob{f: f, c: c, resp: resp, end: end, ctx: ctx, rel: rel, left: size - offset, size: size}, nil
			}
		}
		end()
		if reusable(err) {
			f.put(c)
			return nil, f.wrap(rel, err)
		}
		c.close()
		if pooled && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return nil, f.wrap(rel, err)
	}
}

// wrap maps an FTP error to this package's sentinels, naming the source.
func (f *FTP) wrap(rel string, err error) error {
	var te *textproto.Error
	switch {
	case errors.Is(err, errLogin):
		return fmt.Errorf("%s: %s: %w: %v", f, rel, ErrUnavailable, err)
	case errors.As(err, &te) && te.Code == ftp.StatusFileUnavailable:
		return fmt.Errorf("%s: %s: %w (FTP %d %s)", f, rel, ErrNotFound, te.Code, te.Msg)
	case errors.As(err, &te):
		return fmt.Errorf("%s: %s: %w (FTP %d %s)", f, rel, ErrUnavailable, te.Code, te.Msg)
	}
	return fmt.Errorf("%s: %s: %w: %v", f, rel, ErrUnavailable, err)
}

// get returns a pooled connection (pooled true) or a new logged-in one.
func (f *FTP) get(ctx context.Context) (*ftpConn, bool, error) {
	var stale []*ftpConn
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, false, errors.New("source closed")
	}
	var c *ftpConn
	for len(f.idle) > 0 && c == nil {
		last := f.idle[len(f.idle)-1]
		f.idle = f.idle[:len(f.idle)-1]
		if time.Since(last.idleSince) < ftpIdleTime {
			c = last
		} else {
			stale = append(stale, last)
		}
	}
	f.mu.Unlock()
	for _, s := range stale {
		s.close()
	}
	if c != nil {
		return c, true, nil
	}
	c, err := f.dial(ctx)
	return c, false, err
}

// put returns a connection in a known state to the pool, or closes it.
func (f *FTP) put(c *ftpConn) {
	f.mu.Lock()
	if f.closed || len(f.idle) >= ftpMaxIdle {
		f.mu.Unlock()
		c.close()
		return
	}
	c.idleSince = time.Now()
	f.idle = append(f.idle, c)
	f.mu.Unlock()
}

// dial connects and logs in, within the source's timeout and ctx.
func (f *FTP) dial(ctx context.Context) (*ftpConn, error) {
	c := &ftpConn{ctx: ctx}
	d := &net.Dialer{Timeout: f.timeout, KeepAlive: 30 * time.Second}
	var stop func() bool
	dial := func(network, address string) (net.Conn, error) {
		conn, err := d.DialContext(c.ctx, network, address)
		if err != nil {
			return nil, err
		}
		if c.ctrl == nil {
			// The greeting and the login are read under this deadline.
			c.ctrl = conn
			_ = conn.SetDeadline(time.Now().Add(f.timeout))
			stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(aLongTimeAgo) })
		} else {
			c.setData(conn)
		}
		return conn, nil
	}
	sc, err := ftp.Dial(f.addr, ftp.DialWithDialFunc(dial), ftp.DialWithShutTimeout(f.timeout))
	if err != nil {
		if stop != nil {
			stop()
		}
		return nil, fmt.Errorf("connect to %s: %w", f.addr, err)
	}
	c.sc = sc
	err = sc.Login(f.user, f.pass)
	stop()
	if err != nil {
		c.close()
		return nil, fmt.Errorf("%w as %q: %w", errLogin, f.user, err)
	}
	return c, nil
}

// aLongTimeAgo is a deadline that makes blocked I/O return at once.
var aLongTimeAgo = time.Unix(1, 0)

// ftpConn is one logged-in control connection and the data connection of
// its transfer in progress. It is used by one goroutine at a time; mu
// guards only data, which a context's AfterFunc also reads.
type ftpConn struct {
	sc        *ftp.ServerConn
	ctrl      net.Conn
	ctx       context.Context // the operation in progress: data connections dial under it
	idleSince time.Time

	mu   sync.Mutex
	data net.Conn
}

func (c *ftpConn) setData(conn net.Conn) {
	c.mu.Lock()
	c.data = conn
	c.mu.Unlock()
}

// begin arms the connection for one operation: commands must be answered
// within timeout, and ctx's end interrupts any I/O. The returned function
// disarms ctx (not the deadline, which the next begin resets).
func (c *ftpConn) begin(ctx context.Context, timeout time.Duration) func() {
	c.ctx = ctx
	_ = c.ctrl.SetDeadline(time.Now().Add(timeout))
	stop := context.AfterFunc(ctx, func() {
		_ = c.ctrl.SetDeadline(aLongTimeAgo)
		c.mu.Lock()
		if c.data != nil {
			_ = c.data.SetDeadline(aLongTimeAgo)
		}
		c.mu.Unlock()
	})
	return func() { stop() }
}

// close drops the connection without waiting for the server: QUIT is sent
// if the socket takes it at once, then both connections are closed.
func (c *ftpConn) close() {
	c.mu.Lock()
	if c.data != nil {
		_ = c.data.Close()
	}
	c.mu.Unlock()
	if c.sc == nil {
		if c.ctrl != nil {
			_ = c.ctrl.Close()
		}
		return
	}
	_ = c.ctrl.SetDeadline(time.Now().Add(100 * time.Millisecond))
	_ = c.sc.Quit()
}

// ftpBlob reads one RETR transfer. At the end of the data it checks the
// server's 226 reply and the byte count against SIZE, then returns the
// connection to the pool.
type ftpBlob struct {
	f    *FTP
	c    *ftpConn
	resp *ftp.Response
	end  func()
	ctx  context.Context
	rel  string
	left int64 // bytes still expected
	size int64
	err  error // sticky: io.EOF after a clean end, or the failure
}

// ftpReadBuffer is the buffer WriteTo reads the data connection with.
const ftpReadBuffer = 256 << 10

func (b *ftpBlob) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.resp.Read(p)
	b.left -= int64(n)
	return n, b.after(err)
}

// WriteTo copies the rest of the blob to w with a large buffer (io.Copy
// uses it).
func (b *ftpBlob) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, ftpReadBuffer)
	var total int64
	for b.err == nil {
		n, err := b.resp.Read(buf)
		b.left -= int64(n)
		err = b.after(err)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
	if b.err == io.EOF {
		return total, nil
	}
	return total, b.err
}

// after checks the state after a read that returned err; it returns the
// error the caller sees and makes it sticky when final.
func (b *ftpBlob) after(err error) error {
	if b.left < 0 {
		return b.fail(fmt.Errorf("%s: %s: more bytes than the %d the server announced: %w", b.f, b.rel, b.size, ErrDataLoss))
	}
	if err == nil {
		return nil
	}
	if err != io.EOF {
		if b.ctx.Err() != nil {
			return b.fail(fmt.Errorf("%s: %s: %w: %v", b.f, b.rel, ErrUnavailable, b.ctx.Err()))
		}
		return b.fail(fmt.Errorf("%s: %s: %w: %v", b.f, b.rel, ErrUnavailable, err))
	}
	// The data connection closes at the end and when a transfer fails:
	// only the 226 reply and the byte count tell which.
	if cerr := b.resp.Close(); cerr != nil {
		return b.fail(fmt.Errorf("%s: %s: transfer ended at byte %d of %d without the server's confirmation (%v): %w",
			b.f, b.rel, b.size-b.left, b.size, cerr, io.ErrUnexpectedEOF))
	}
	if b.left > 0 {
		return b.fail(fmt.Errorf("%s: %s: transfer ended at byte %d of %d: %w", b.f, b.rel, b.size-b.left, b.size, io.ErrUnexpectedEOF))
	}
	b.end()
	b.f.put(b.c)
	b.c = nil
	b.err = io.EOF
	return io.EOF
}

// fail records err and drops the connection.
func (b *ftpBlob) fail(err error) error {
	b.err = err
	b.release()
	return err
}

// release drops the connection of an unfinished transfer.
func (b *ftpBlob) release() {
	if b.c == nil {
		return
	}
	b.end()
	b.c.close()
	b.c = nil
}

// Close ends the transfer. An unfinished one is dropped with its
// connection rather than aborted, so Close never waits for the server.
func (b *ftpBlob) Close() error {
	b.release()
	if b.err == nil {
		b.err = errors.New("read after Close")
	}
	return nil
}
