package testenv

import (
	"net"
	"testing"
	"time"
)

// FreeAddr returns "host:port" with a TCP port that was free on host (for
// example "127.0.0.1") a moment ago: it listens on port 0 and closes the
// listener. Another process may take the port before the caller binds it, so
// callers that can should retry with a new address on a bind failure.
func FreeAddr(t testing.TB, host string) string {
	t.Helper()
	addr, err := freeAddr(host)
	if err != nil {
		t.Fatalf("testenv: find a free TCP port on %s: %v", host, err)
	}
	return addr
}

func freeAddr(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", err
	}
	return addr, nil
}

// WaitFor polls cond until it returns true, starting every 5 ms and backing
// off to every 100 ms, and fails the test naming what it waited for if timeout
// passes first. cond is called from the calling goroutine only and is called
// once more at the deadline, so a condition that became true just in time
// passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("testenv: timed out after %v waiting for %s", timeout, what)
	}
}

// poll reports whether cond became true within timeout.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	interval := 5 * time.Millisecond
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return cond()
		}
		time.Sleep(min(interval, left))
		interval = min(2*interval, 100*time.Millisecond)
	}
}
