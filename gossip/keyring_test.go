package gossip

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testKey returns a key of n bytes derived from seed.
func testKey(seed byte, n int) []byte {
	return bytes.Repeat([]byte{seed}, n)
}

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func TestParseKeyFile(t *testing.T) {
	t.Parallel()
	k16, k24, k32 := testKey(1, 16), testKey(2, 24), testKey(3, 32)
	tests := []struct {
		name     string
		data     string
		want     [][]byte
		wantLine string // for errors: the "line N" or other text the error names
	}{
		{"one key", b64(k32) + "\n", [][]byte{k32}, ""},
		{"no final newline", b64(k32), [][]byte{k32}, ""},
		{"every size, in order", b64(k24) + "\n" + b64(k16) + "\n" + b64(k32) + "\n", [][]byte{k24, k16, k32}, ""},
		{"comments, blanks, spaces, CRLF", "# gossip keys\r\n\r\n  " + b64(k32) + "  \r\n\t# old one:\r\n" + b64(k16) + " # until May\r\n", [][]byte{k32, k16}, ""},
		{"duplicates count once", b64(k16) + "\n" + b64(k32) + "\n" + b64(k16) + "\n", [][]byte{k16, k32}, ""},
		{"byte order mark", "\ufeff" + b64(k16) + "\n", [][]byte{k16}, ""},
		{"empty", "", nil, "no key"},
		{"only comments", "# nothing yet\n\n", nil, "no key"},
		{"not base64", b64(k32) + "\n\nnot-a-key!\n", nil, "line 3: not a base64 key"},
		{"unpadded", b64(k32) + "\n" + strings.TrimRight(b64(k16), "="), nil, "line 2: not a base64 key"},
		{"two keys on a line", b64(k16) + " " + b64(k16), nil, "line 1: not a base64 key"},
		{"wrong size", b64(testKey(4, 20)), nil, "line 1: a key of 20 bytes; want 16, 24 or 32"},
		{"binary", "\x00\x01\x02", nil, "line 1: not a base64 key"},
		{"too large", strings.Repeat("#\n", MaxKeyFileSize/2+1), nil, "larger than 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseKeyFile("/etc/dpcache/gossip.keys", []byte(tt.data))
			if tt.wantLine == "" {
				if err != nil {
					t.Fatalf("ParseKeyFile: %v", err)
				}
				if !slices.EqualFunc(got, tt.want, bytes.Equal) {
					t.Fatalf("keys = %x, want %x", got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseKeyFile = %x, want an error naming %q", got, tt.wantLine)
			}
			msg := err.Error()
			if !errors.Is(err, ErrKeyFile) || !strings.Contains(msg, "/etc/dpcache/gossip.keys") || !strings.Contains(msg, tt.wantLine) {
				t.Errorf("error %q: want ErrKeyFile naming the file and %q", msg, tt.wantLine)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is more than one line", msg)
			}
			if strings.Contains(msg, b64(k32)) || strings.Contains(msg, b64(k16)) {
				t.Errorf("error %q quotes a key", msg)
			}
		})
	}
}

func TestReadKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.keys")
	key := testKey(9, 32)
	if err := os.WriteFile(good, []byte(b64(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadKeyFile(good)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0], key) {
		t.Fatalf("ReadKeyFile = %x, %v; want the key", got, err)
	}

	missing := filepath.Join(dir, "missing.keys")
	if _, err := ReadKeyFile(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v, want ErrNotExist naming it", err)
	}

	// A huge file is refused without being read whole.
	big := filepath.Join(dir, "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadKeyFile(big); !errors.Is(err, ErrKeyFile) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("1 GiB file: %v, want ErrKeyFile (too large)", err)
	}
}

func TestKeyFingerprint(t *testing.T) {
	t.Parallel()
	a, b := KeyFingerprint(testKey(1, 32)), KeyFingerprint(testKey(2, 32))
	if len(a) != 8 || a == b || a != KeyFingerprint(testKey(1, 32)) {
		t.Errorf("fingerprints %q, %q: want 8 hex digits, distinct and stable", a, b)
	}
	if strings.Contains(b64(testKey(1, 32)), a) {
		t.Errorf("fingerprint %q is part of the key", a)
	}
}

// FuzzParseKeyFile: any input either yields at least one valid key, each
// once, or an error of one line that wraps ErrKeyFile and does not quote
// the input.
func FuzzParseKeyFile(f *testing.F) {
	for _, seed := range []string{
		"",
		b64(testKey(1, 32)) + "\n",
		"# keys\n" + b64(testKey(1, 16)) + "\r\n" + b64(testKey(2, 24)) + " # old\n\n",
		b64(testKey(1, 16)) + "\n" + b64(testKey(1, 16)),
		"\ufeff" + b64(testKey(3, 32)),
		"AAAA\n",
		"not a key",
		"====\n#\n\x00",
		b64(testKey(5, 20)),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := ParseKeyFile("keys", data)
		if err != nil {
			msg := err.Error()
			if !errors.Is(err, ErrKeyFile) || strings.ContainsAny(msg, "\r\n") {
				t.Fatalf("error %q: want ErrKeyFile on one line", msg)
			}
			for line := range strings.SplitSeq(string(data), "\n") {
				line = strings.TrimSpace(line)
				if len(line) >= 16 && !strings.ContainsFunc(line, notBase64) && strings.Contains(msg, line) {
					t.Fatalf("error %q quotes the line %q", msg, line)
				}
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("no error and no key")
		}
		if err := validateKeys(keys); err != nil {
			t.Fatal(err)
		}
		var again strings.Builder
		for i, k := range keys {
			if slices.IndexFunc(keys, func(x []byte) bool { return bytes.Equal(x, k) }) != i {
				t.Fatalf("key %d listed twice", i)
			}
			fmt.Fprintln(&again, b64(k))
		}
		back, err := ParseKeyFile("keys", []byte(again.String()))
		if err != nil || !slices.EqualFunc(back, keys, bytes.Equal) {
			t.Fatalf("keys written back parse as %x, %v; want %x", back, err, keys)
		}
	})
}

func notBase64(r rune) bool {
	return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '+' || r == '/' || r == '=')
}

func TestConfig_Validate_Keys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"keys and secret key", func(c *Config) { c.Keys, c.SecretKey = [][]byte{testKey(1, 16)}, testKey(2, 16) }, "both"},
		{"bad second key", func(c *Config) { c.Keys = [][]byte{testKey(1, 16), testKey(2, 17)} }, "key 1 is 17 bytes"},
	} {
		c := testConfig("v", "s")
		tc.mod(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig naming %q", tc.name, err, tc.want)
		}
	}
}

func TestGossip_SetKeys_Errors(t *testing.T) {
	t.Parallel()
	plain := startNode(t, testConfig("keys-plain", "s"))
	if err := plain.SetKeys([][]byte{testKey(1, 32)}); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("SetKeys without encryption: %v, want ErrNotEncrypted", err)
	}
	if fps := plain.KeyFingerprints(); fps != nil {
		t.Errorf("KeyFingerprints without encryption: %v", fps)
	}

	cfg := testConfig("keys-enc", "s")
	cfg.Keys = [][]byte{testKey(1, 32), testKey(2, 16), testKey(1, 32)}
	enc := startNode(t, cfg)
	want := fingerprints([][]byte{testKey(1, 32), testKey(2, 16)})
	if got := enc.KeyFingerprints(); !slices.Equal(got, want) {
		t.Fatalf("KeyFingerprints = %v, want %v", got, want)
	}
	for _, bad := range [][][]byte{nil, {testKey(3, 32), testKey(4, 15)}} {
		if err := enc.SetKeys(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("SetKeys(%d keys, one bad or none): %v, want ErrInvalidConfig", len(bad), err)
		}
	}
	if got := enc.KeyFingerprints(); !slices.Equal(got, want) {
		t.Errorf("after refused SetKeys: %v, want unchanged %v", got, want)
	}
}

// SetKeys applies any new list in the order that never drops a key in use:
// the keyring ends holding the list's keys, its first key primary.
func TestGossip_SetKeys_Order(t *testing.T) {
	t.Parallel()
	a, b, c, d := testKey(1, 32), testKey(2, 32), testKey(3, 24), testKey(4, 16)
	cfg := testConfig("keys-order", "s")
	cfg.Keys = [][]byte{a}
	g := startNode(t, cfg)
	for _, step := range [][][]byte{
		{a, b},       // add
		{b, a},       // use
		{b},          // remove
		{c, b, d},    // add two, one first at once
		{b, d},       // remove the primary after switching away from it
		{d, a, c, b}, // everything at once
		{a},
		{a},
	} {
		if err := g.SetKeys(step); err != nil {
			t.Fatalf("SetKeys(%v): %v", fingerprints(step), err)
		}
		// The primary first; the order of the others does not matter
		// (each is tried to decrypt).
		got, want := g.KeyFingerprints(), fingerprints(step)
		if got[0] != want[0] || !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
			t.Fatalf("after SetKeys(%v): keyring %v", want, got)
		}
	}
}

// A key rotation on a running cluster (add the new key on every node, then
// make it primary on every node, then remove the old one on every node)
// never loses a member, and gossip flows after every step; afterwards a
// node with only the old key cannot join, one with the new key can.
func TestGossip_SetKeys_Rotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := testKey(1, 32), testKey(2, 32)
	var nodes []*testNode
	for i := range 3 {
		var join []string
		if i > 0 {
			join = []string{nodes[0].LocalAddr()}
		}
		cfg := testConfig(fmt.Sprintf("rot%d", i), "s", join...)
		cfg.Keys = [][]byte{oldKey}
		nodes = append(nodes, startNode(t, cfg))
	}
	waitAlive(t, nodes, nodes, 20*time.Second)

	// Watch membership all along: every node must see the three alive at
	// every look.
	var lost atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, o := range nodes {
				if live := names(o.Live("s")); live != "rot0,rot1,rot2" && lost.Load() == nil {
					lost.Store(fmt.Sprintf("%s saw %q alive", o.cfg.Name, live))
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	stopWatch := func() { once.Do(func() { close(stop); wg.Wait() }) }
	defer stopWatch()

	for i, step := range [][][]byte{{oldKey, newKey}, {newKey, oldKey}, {newKey}} {
		for _, n := range nodes {
			if err := n.SetKeys(step); err != nil {
				t.Fatalf("step %d on %s: %v", i, n.cfg.Name, err)
			}
		}
		// Gossip still flows: a change made by each node reaches the
		// others, and the failure detector has had many rounds (fast
		// timers: 100ms probes) to notice a node it cannot talk to.
		serial := uint64(i + 1)
		for _, n := range nodes {
			n.SetVersions("p", []uint64{serial})
		}
		eventually(t, 10*time.Second, fmt.Sprintf("step %d: holdings spread", i), func() error {
			for _, o := range nodes {
				if got := names(o.Holders("s", "p", serial)); got != "rot0,rot1,rot2" {
					return fmt.Errorf("%s sees holders %q", o.cfg.Name, got)
				}
			}
			return nil
		})
		if l := lost.Load(); l != nil {
			t.Fatalf("step %d lost a member: %v", i, l)
		}
	}
	// An observation window, not a wait for a condition: ten probe
	// rounds after the last step, still nobody lost.
	time.Sleep(time.Second)
	stopWatch()
	if l := lost.Load(); l != nil {
		t.Fatalf("after the rotation a member was lost: %v", l)
	}

	stale := testConfig("rot-old", "s")
	stale.Keys = [][]byte{oldKey}
	sg, err := New(stale)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sg.Join(nodes[0].LocalAddr()); !errors.Is(err, ErrJoin) {
		t.Errorf("a node with the removed key joined %d nodes (err %v), want ErrJoin", n, err)
	}
	if err := sg.Close(); err != nil {
		t.Error(err)
	}

	fresh := testConfig("rot3", "s", nodes[1].LocalAddr())
	fresh.Keys = [][]byte{newKey}
	all := append(nodes, startNode(t, fresh))
	waitAlive(t, all, all, 20*time.Second)
}
