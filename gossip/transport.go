package gossip

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// netTransport is memberlist's NetTransport with outgoing dials that end when
// ctx does, so that stopping Run does not wait out TCPTimeout on an address
// that swallows packets. Every other method is NetTransport's.
type netTransport struct {
	*memberlist.NetTransport
	ctx context.Context
}

var _ memberlist.NodeAwareTransport = (*netTransport)(nil)

// newNetTransport listens on host:port, TCP and UDP. With port 0 it retries
// a few times: the kernel picks a free TCP port that may be taken for UDP.
func newNetTransport(ctx context.Context, host string, port int, logger *log.Logger) (*netTransport, error) {
	cfg := &memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: logger}
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		if nt, err = memberlist.NewNetTransport(cfg); err == nil {
			return &netTransport{NetTransport: nt, ctx: ctx}, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("gossip: listen on %s: %w", net.JoinHostPort(host, fmt.Sprint(port)), err)
}

// DialTimeout dials like NetTransport, and gives up when ctx ends.
func (t *netTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(t.ctx, "tcp", addr)
}

// DialAddressTimeout dials like NetTransport, and gives up when ctx ends.
func (t *netTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: msg") into
// slog records at the matching level. memberlist takes a *log.Logger;
// slog.NewLogLogger would log every line at one level, and memberlist's
// DEBUG lines (one per push/pull) would drown its warnings.
type logWriter struct{ l *slog.Logger }

func newMemberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(logWriter{l}, "", 0)
}

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimRight(p, "\n"))
	level := slog.LevelInfo
	for _, lv := range []struct {
		prefix string
		level  slog.Level
	}{{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn}, {"[ERR] ", slog.LevelError}, {"[ERROR] ", slog.LevelError}} {
		if rest, ok := strings.CutPrefix(msg, lv.prefix); ok {
			msg, level = rest, lv.level
			break
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.l.Log(context.Background(), level, msg, "lib", "memberlist")
	return len(p), nil
}
