//go:build unix

package agent

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

// tcpProxy forwards connections on 127.0.0.1 to a DP, counting the bytes
// it sends back and passing them through mangle; kill cuts every
// connection at once, as a crash of the DP would.
type tcpProxy struct {
	ln     net.Listener
	target string
	mangle func(b []byte) // may change b in place; called by one reader at a time
	sent   atomic.Int64

	mu    sync.Mutex // guards conns, dead, mangle calls
	conns []net.Conn
	dead  bool
	wg    sync.WaitGroup
}

func startProxy(t testing.TB, target string, mangle func([]byte)) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, mangle: mangle}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { p.kill(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		p.mu.Lock()
		if err != nil || p.dead {
			p.mu.Unlock()
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		p.conns = append(p.conns, c, up)
		p.wg.Add(2)
		p.mu.Unlock()
		go func() { defer p.wg.Done(); _, _ = io.Copy(up, c); up.Close() }()
		go func() {
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := up.Read(buf)
				if n > 0 {
					p.sent.Add(int64(n))
					if p.mangle != nil {
						p.mu.Lock()
						p.mangle(buf[:n])
						p.mu.Unlock()
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			c.Close()
		}()
	}
}

// kill closes the listener and every connection.
func (p *tcpProxy) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
}

// twoDPs publishes a chunked file of size bytes in r and starts two DPs
// over r, the second behind a proxy (mangle as startProxy); it returns
// the file, the published version, the DPs' sources (the first DP first)
// and the proxy.
func twoDPs(t *testing.T, size int, mangle func([]byte)) (map[string]string, *repo, *manifest.PublishResult, []source.Source, *tcpProxy) {
	r := newRepo(t)
	big := pseudoRandom(size)
	files := map[string]string{"db/big.db": big}
	pub := r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, files)
	dp1, dp2 := startDP(t, r), startDP(t, r)
	px := startProxy(t, dp2.GRPCAddr(), mangle)
	var srcs []source.Source
	for _, addr := range []string{dp1.GRPCAddr(), px.addr()} {
		g, err := source.NewGRPC(addr, source.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		srcs = append(srcs, g)
	}
	return files, r, pub, srcs, px
}

// With two DPs at the head of the sources, a chunked file's chunks are
// read from both: each serves a share.
func TestUpdate_Batched_TwoDPsShare(t *testing.T) {
	files, r, _, srcs, px := twoDPs(t, 12<<20, nil)
	cfg := testConfig(t, r.trust, srcs...)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), files)
	size := int64(len(files["db/big.db"]))
	second := px.sent.Load()
	t.Logf("downloaded %d bytes; the second DP sent %d", res.BytesDownloaded, second)
	if res.BytesDownloaded != size {
		t.Errorf("downloaded %d bytes, want %d", res.BytesDownloaded, size)
	}
	if second < size/10 || second > size*9/10 {
		t.Errorf("the second DP sent %d bytes of %d: the chunks were not shared", second, size)
	}
}

// A DP cut off in the middle of an install (every connection closed) is
// dropped; the other DP serves the rest.
func TestUpdate_Batched_DPKilledMidway(t *testing.T) {
	files, r, _, srcs, px := twoDPs(t, 12<<20, nil)
	cfg := testConfig(t, r.trust, srcs...)
	var once sync.Once
	cfg.Progress = func(done, total int64) {
		if total > 0 && done > total/3 && px.sent.Load() > 0 {
			once.Do(px.kill)
		}
	}
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), files)
	size := int64(len(files["db/big.db"]))
	t.Logf("downloaded %d bytes; the killed DP sent %d", res.BytesDownloaded, px.sent.Load())
	if res.BytesDownloaded < size || px.sent.Load() == 0 {
		t.Errorf("downloaded %d bytes of %d, the killed DP sent %d", res.BytesDownloaded, size, px.sent.Load())
	}
}

// A DP that sends a chunk whose bytes do not match its digest is dropped
// and the chunk is read from the other DP.
func TestUpdate_Batched_LyingDP(t *testing.T) {
	size := 12 << 20
	big := pseudoRandom(size)
	// Needles: 16 bytes inside every 64 KiB of the file; the first one
	// the second DP sends gets a byte flipped (a needle split across two
	// reads is missed, the next one is not).
	var needles [][]byte
	for off := 1000; off+16 < size; off += 64 << 10 {
		needles = append(needles, []byte(big[off:off+16]))
	}
	var flipped atomic.Bool
	mangle := func(b []byte) {
		if flipped.Load() {
			return
		}
		for _, n := range needles {
			if i := bytes.Index(b, n); i >= 0 {
				b[i+8] ^= 0xff
				flipped.Store(true)
				return
			}
		}
	}
	files, r, _, srcs, px := twoDPs(t, size, mangle)
	if files["db/big.db"] != big {
		t.Fatal("pseudoRandom is not deterministic")
	}
	cfg := testConfig(t, r.trust, srcs...)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), files)
	t.Logf("downloaded %d bytes; the lying DP sent %d", res.BytesDownloaded, px.sent.Load())
	if !flipped.Load() {
		t.Fatal("the second DP sent no chunk to corrupt")
	}
	if res.BytesDownloaded <= int64(size) {
		t.Errorf("downloaded %d bytes for %d: the corrupt chunk was not fetched again", res.BytesDownloaded, size)
	}
}

// A DP heading the sources that does not hold the version (its upstream
// lacks it) answers every chunk not found: its batches go to the next DP.
func TestUpdate_Batched_FirstDPLacksVersion(t *testing.T) {
	r := newRepo(t)
	big := pseudoRandom(12 << 20)
	files := map[string]string{"db/big.db": big}
	r.publishWith(t, manifest.PublishOptions{Version: "1", Chunk: true}, files)
	empty := startDP(t, newRepo(t))
	full := startDP(t, r)
	var srcs []source.Source
	for _, addr := range []string{empty.GRPCAddr(), full.GRPCAddr()} {
		g, err := source.NewGRPC(addr, source.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		srcs = append(srcs, g)
	}
	cfg := testConfig(t, r.trust, srcs...)
	res := mustUpdate(t, cfg)
	assertTree(t, current(t, cfg), files)
	if res.BytesDownloaded != int64(len(big)) {
		t.Errorf("downloaded %d bytes, want %d", res.BytesDownloaded, len(big))
	}
	if got := empty.Traffic().ServedBytes; got != 0 {
		t.Errorf("the DP without the version served %d bytes", got)
	}
}
