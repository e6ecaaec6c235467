package node

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/gossip"
	"github.com/dpcache/dpcache/pki"
)

// logBuffer collects a DP's log lines for a test to search.
type logBuffer struct {
	mu  sync.Mutex // protects buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeKeys(t *testing.T, file string, mode os.FileMode, keys ...[]byte) {
	t.Helper()
	var s strings.Builder
	s.WriteString("# gossip keys, the first encrypts\n")
	for _, k := range keys {
		fmt.Fprintln(&s, base64.StdEncoding.EncodeToString(k))
	}
	if err := os.WriteFile(file, []byte(s.String()), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, mode); err != nil {
		t.Fatal(err)
	}
}

// The gossip key file of a running DP: Reload applies a changed file, a
// change is also found without Reload, and a garbage file keeps the keys
// in use and the cluster whole.
func TestNode_Reload_GossipKeyFile(t *testing.T) {
	t.Parallel()
	v := newVendor(t)
	dir := t.TempDir()
	oldKey, newKey := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	file := func(name string) string { return filepath.Join(dir, name+".keys") }
	for _, name := range []string{"dp-1", "dp-2"} {
		writeKeys(t, file(name), 0o600, oldKey)
	}
	logs := map[string]*logBuffer{"dp-1": {}, "dp-2": {}}
	nodes := startClusterWith(t, v, "http://127.0.0.1:9/", func(c *Config) {
		c.GossipKeyFile = file(c.Name)
		c.Logger = slog.New(slog.NewTextHandler(logs[c.Name], nil))
	}, "s", "s")
	fps := func(keys ...[]byte) []string {
		var out []string
		for _, k := range keys {
			out = append(out, gossip.KeyFingerprint(k))
		}
		return out
	}
	wantKeys := func(n *clusterNode, want []string) {
		t.Helper()
		if got := n.gossip.KeyFingerprints(); !slices.Equal(got, want) {
			t.Fatalf("%s keyring %v, want %v", n.cfg.Name, got, want)
		}
	}
	wantKeys(nodes[0], fps(oldKey))

	// Add the new key (second) on both, by Reload.
	for _, n := range nodes {
		writeKeys(t, file(n.cfg.Name), 0o600, oldKey, newKey)
		if err := n.Reload(); err != nil {
			t.Fatalf("%s: Reload: %v", n.cfg.Name, err)
		}
		wantKeys(n, fps(oldKey, newKey))
	}
	// Move it first, found by the DPs themselves (the file is polled).
	for _, n := range nodes {
		writeKeys(t, file(n.cfg.Name), 0o600, newKey, oldKey)
	}
	testenv.WaitFor(t, 10*keyFilePoll, "the DPs to use the new key", func() bool {
		for _, n := range nodes {
			if !slices.Equal(n.gossip.KeyFingerprints(), fps(newKey, oldKey)) {
				return false
			}
		}
		return true
	})

	// A garbage file on dp-2 changes nothing there.
	if err := os.WriteFile(file("dp-2"), []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := nodes[1].Reload()
	if !errors.Is(err, gossip.ErrKeyFile) || !strings.Contains(err.Error(), file("dp-2")+", line 1") {
		t.Fatalf("Reload of a garbage file: %v, want an error naming the file and line 1", err)
	}
	wantKeys(nodes[1], fps(newKey, oldKey))
	if l := logs["dp-2"].String(); !strings.Contains(l, "keeping the keys in use") {
		t.Errorf("dp-2 did not log the refused file:\n%s", l)
	}
	// Remove the old key on both (dp-2's file good again).
	for _, n := range nodes {
		writeKeys(t, file(n.cfg.Name), 0o644, newKey)
		if err := n.Reload(); err != nil {
			t.Fatalf("%s: Reload: %v", n.cfg.Name, err)
		}
		wantKeys(n, fps(newKey))
	}
	for _, n := range nodes {
		if live := len(n.gossip.Live("")); live != 2 {
			t.Errorf("%s sees %d live DPs, want 2", n.cfg.Name, live)
		}
		l := logs[n.cfg.Name].String()
		if strings.Contains(l, base64.StdEncoding.EncodeToString(newKey)) || strings.Contains(l, base64.StdEncoding.EncodeToString(oldKey)) {
			t.Errorf("%s logged a key:\n%s", n.cfg.Name, l)
		}
		if !strings.Contains(l, "chmod 600 "+file(n.cfg.Name)) {
			t.Errorf("%s did not warn about a key file readable by others:\n%s", n.cfg.Name, l)
		}
	}
}

func TestNode_GossipKeyFile_Start(t *testing.T) {
	t.Parallel()
	v := newVendor(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.keys")
	if err := os.WriteFile(bad, []byte("# keys\n\nAAAA\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.keys")
	writeKeys(t, good, 0o600, bytes.Repeat([]byte{1}, 16))
	base := func() Config {
		cfg := DefaultConfig()
		cfg.Name, cfg.DataDir = "dp-keys", t.TempDir()
		cfg.GRPCAddr, cfg.HTTPAddr, cfg.GossipAddr = "127.0.0.1:0", "", "127.0.0.1:0"
		cfg.Upstream, cfg.Trust = []string{"http://127.0.0.1:9/"}, v.trust
		cfg.Logger = slog.New(slog.DiscardHandler)
		return cfg
	}

	cfg := base()
	cfg.GossipKeyFile = bad
	if n, err := New(cfg); err == nil {
		n.Close()
		t.Fatal("New with a bad key file succeeded")
	} else if !errors.Is(err, gossip.ErrKeyFile) || !strings.Contains(err.Error(), bad+", line 3") {
		t.Errorf("New with a bad key file: %v, want an error naming the file and line 3", err)
	}

	cfg = base()
	cfg.GossipKeyFile, cfg.GossipKey = good, bytes.Repeat([]byte{1}, 16)
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "both a gossip key and a gossip key file") {
		t.Errorf("Validate with a key and a key file: %v", err)
	}

	// TLS without a gossip key: a warning; with one, none.
	caDir, dpCert := filepath.Join(t.TempDir(), "ca"), filepath.Join(t.TempDir(), "dp")
	if err := pki.InitCA(caDir, "test CA"); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(caDir, pki.IssueRequest{Name: "dp", Role: pki.RoleDP, Hosts: []string{"127.0.0.1"}}, dpCert); err != nil {
		t.Fatal(err)
	}
	for _, keyFile := range []string{"", good} {
		var logs logBuffer
		cfg = base()
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.GossipKeyFile = dpCert+".pem", dpCert+".key", keyFile
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		n.Close()
		warned := strings.Contains(logs.String(), "gossip is not encrypted although gRPC uses TLS")
		if warned != (keyFile == "") {
			t.Errorf("TLS, key file %q: warned %v:\n%s", keyFile, warned, logs.String())
		}
	}
}
