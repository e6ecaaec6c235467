package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNotLocal means FindListener found no process of this machine
// listening on the address: the DP runs elsewhere, under another user,
// or /proc is missing.
var ErrNotLocal = errors.New("no process of this machine listens there")

// FindListener returns the id of the process on this machine that listens
// on the TCP address addr (host:port): the DP, when it runs here. It reads
// /proc/net/tcp and tcp6 for the listening socket's inode, then
// /proc/PID/fd for the process holding it, so it finds only processes this
// user may inspect. Errors wrap ErrNotLocal.
func FindListener(addr string) (int, error) {
	return findListener("/proc", addr)
}

func findListener(proc, addr string) (int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("%s: %v: %w", addr, err, ErrNotLocal)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%s: bad port: %w", addr, ErrNotLocal)
	}
	ips, err := net.DefaultResolver.LookupNetIP(context.Background(), "ip", host)
	if err != nil {
		return 0, fmt.Errorf("%s: %v: %w", addr, err, ErrNotLocal)
	}
	local := localAddrs()
	var want []netip.Addr
	for _, ip := range ips {
		if ip = ip.Unmap(); ip.IsLoopback() || local[ip] {
			want = append(want, ip)
		}
	}
	if len(want) == 0 {
		return 0, fmt.Errorf("%s is not an address of this machine: %w", addr, ErrNotLocal)
	}
	inodes := map[string]bool{}
	for _, f := range []string{"net/tcp", "net/tcp6"} {
		data, err := os.ReadFile(filepath.Join(proc, f))
		if err != nil {
			continue
		}
		for _, l := range listeners(data, uint16(port)) {
			for _, w := range want {
				if l.addr.IsUnspecified() || l.addr == w {
					inodes[l.inode] = true
				}
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("%s: no listening socket in %s/net/tcp: %w", addr, proc, ErrNotLocal)
	}
	dirs, _ := filepath.Glob(filepath.Join(proc, "[0-9]*", "fd"))
	for _, dir := range dirs {
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue // another user's process, or gone
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			if inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] {
				return strconv.Atoi(filepath.Base(filepath.Dir(dir)))
			}
		}
	}
	return 0, fmt.Errorf("%s: the listening socket belongs to no process this user may inspect: %w", addr, ErrNotLocal)
}

// localAddrs returns the addresses of this machine's interfaces.
func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

type listener struct {
	addr  netip.Addr
	inode string
}

// tcpListen is the state of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// listeners parses /proc/net/tcp or tcp6 and returns the sockets listening
// on port.
func listeners(data []byte, port uint16) []listener {
	var out []listener
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != tcpListen {
			continue
		}
		hexAddr, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(hexPort, 16, 16); err != nil || uint16(p) != port {
			continue
		}
		if a, ok := parseProcAddr(hexAddr); ok {
			out = append(out, listener{addr: a.Unmap(), inode: f[9]})
		}
	}
	return out
}

// parseProcAddr decodes an address of /proc/net/tcp: the bytes of each
// 32-bit word in host order (little-endian on the machines dpcache runs
// on), in hex.
func parseProcAddr(s string) (netip.Addr, bool) {
	b, err := hex.DecodeString(s)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.Addr{}, false
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return a, true
}

// readMemory returns RssAnon and VmRSS, in bytes, from /proc/PID/status.
func readMemory(pid int) (rssAnon, vmRSS int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseStatus(data)
}

func parseStatus(data []byte) (rssAnon, vmRSS int64, err error) {
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "RssAnon" && name != "VmRSS") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if name == "RssAnon" {
			rssAnon = n << 10
		} else {
			vmRSS = n << 10
		}
		found++
	}
	if found < 2 {
		return 0, 0, errors.New("no RssAnon and VmRSS lines")
	}
	return rssAnon, vmRSS, nil
}

// sampler records the peaks of one process's memory.
type sampler struct {
	pid   int
	every time.Duration
	mu    sync.Mutex // protects mem
	mem   Memory
}

func newSampler(pid int, every time.Duration) *sampler {
	s := &sampler{pid: pid, every: every, mem: Memory{PID: pid}}
	s.sample()
	s.mem.RssAnonStart = s.mem.RssAnonPeak
	return s
}

// run samples until ctx ends, then once more.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.sample()
			return
		case <-t.C:
			s.sample()
		}
	}
}

func (s *sampler) sample() {
	anon, rss, err := readMemory(s.pid)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mem.RssAnonPeak = max(s.mem.RssAnonPeak, anon)
	s.mem.VmRSSPeak = max(s.mem.VmRSSPeak, rss)
	s.mem.Samples++
}

func (s *sampler) memory() Memory {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mem
}
