package loadtest

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestParseProcAddr(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"0100007F":                         "127.0.0.1",
		"00000000":                         "0.0.0.0",
		"0000000000000000FFFF00000100007F": "::ffff:127.0.0.1",
		"00000000000000000000000001000000": "::1",
	} {
		got, ok := parseProcAddr(in)
		if !ok || got != netip.MustParseAddr(want) {
			t.Errorf("parseProcAddr(%s) = %v, %v; want %s", in, got, ok, want)
		}
	}
	if _, ok := parseProcAddr("zz"); ok {
		t.Error("parseProcAddr(zz) succeeded")
	}
}

func TestListeners(t *testing.T) {
	t.Parallel()
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1CAC 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1CAC 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1CAC 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1CAD 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
`
	got := listeners([]byte(table), 0x1CAC)
	var inodes []string
	for _, l := range got {
		inodes = append(inodes, l.addr.String()+"="+l.inode)
	}
	if want := "127.0.0.1=111 0.0.0.0=222"; strings.Join(inodes, " ") != want {
		t.Errorf("listeners on port 0x1CAC: %v, want %s (established sockets and other ports left out)", inodes, want)
	}
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	anon, rss, err := parseStatus([]byte("Name:\tdpcache\nVmRSS:\t  102400 kB\nRssAnon:\t   51200 kB\nRssFile:\t 51200 kB\n"))
	if err != nil || anon != 50<<20 || rss != 100<<20 {
		t.Errorf("parseStatus = %d, %d, %v; want %d, %d", anon, rss, err, 50<<20, 100<<20)
	}
	if _, _, err := parseStatus([]byte("Name:\tx\n")); err == nil {
		t.Error("parseStatus without the lines succeeded")
	}
}

// This process listens: FindListener finds it, and nothing on a closed port.
func TestFindListener(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp here")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	pid, err := FindListener(addr)
	if err != nil || pid != os.Getpid() {
		t.Errorf("FindListener(%s) = %d, %v; want this process, %d", addr, pid, err, os.Getpid())
	}
	_, port, _ := net.SplitHostPort(addr)
	if pid, err := FindListener("localhost:" + port); err != nil || pid != os.Getpid() {
		t.Errorf("FindListener(localhost:%s) = %d, %v; want %d", port, pid, err, os.Getpid())
	}
	ln.Close()
	if pid, err := FindListener(addr); err == nil {
		t.Errorf("FindListener(%s) after Close = %d, want ErrNotLocal", addr, pid)
	}
	if _, err := FindListener("192.0.2.1:7340"); err == nil {
		t.Error("FindListener of a documentation address (not this machine's) succeeded")
	}
}
