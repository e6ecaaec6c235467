package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
	"github.com/dpcache/dpcache/gossip"
)

// newGossipKey returns a random 32-byte key.
func newGossipKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// writeKeyFile writes keys to file, one base64 key per line, as an
// operator would (mode 600, a comment first).
func writeKeyFile(t *testing.T, file string, keys ...[]byte) {
	t.Helper()
	var s strings.Builder
	s.WriteString("# dpcache gossip keys: the first encrypts, every one decrypts\n")
	for _, k := range keys {
		fmt.Fprintln(&s, base64.StdEncoding.EncodeToString(k))
	}
	if err := os.WriteFile(file, []byte(s.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until dp's stderr contains every one of subs in one line.
func waitLog(t *testing.T, dp *clusterDP, what string, subs ...string) {
	t.Helper()
	waitDetail(t, eventually, fmt.Sprintf("DP %s to log %s", dp.Name, what), func() (bool, string) {
		if dp.proc.Exited() {
			t.Fatalf("DP %s exited (exit %d): %s", dp.Name, dp.proc.ExitCode(), dp.proc.Stderr())
		}
		for _, line := range strings.Split(dp.proc.Stderr(), "\n") {
			if containsAll(line, subs...) {
				return true, line
			}
		}
		return false, fmt.Sprintf("no line with %q", subs)
	})
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// watchMembers polls every DP of dps (`dpcache status --json`) until stop
// is called and records the first look at which one did not list every
// DP of dps alive; stop returns that ("" if none) once the poller has
// ended.
func watchMembers(t *testing.T, dps []*clusterDP) (stop func() string) {
	t.Helper()
	bin := testenv.BuildDpcache(t)
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex // protects lost
	var lost string
	wg.Go(func() {
		for {
			for _, obs := range dps {
				members, err := membersOf(bin, obs.GRPC)
				var missing []string
				for _, want := range dps {
					if members[want.Name] != "alive" {
						missing = append(missing, want.Name)
					}
				}
				mu.Lock()
				if len(missing) > 0 && lost == "" {
					lost = fmt.Sprintf("DP %s did not list %v alive (err %v): %v", obs.Name, missing, err, members)
				}
				mu.Unlock()
			}
			select {
			case <-done:
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	})
	var once sync.Once
	stop = func() string {
		once.Do(func() { close(done); wg.Wait() })
		mu.Lock()
		defer mu.Unlock()
		return lost
	}
	t.Cleanup(func() { stop() })
	return stop
}

// membersOf runs `bin status --node addr --json` and returns each member's
// state by name. Unlike statusOf it needs no *testing.T, for pollers.
func membersOf(bin, addr string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "status", "--node", addr, "--json").Output()
	if err != nil {
		return nil, fmt.Errorf("status --node %s: %w", addr, err)
	}
	var st clusterStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("status --node %s: %w", addr, err)
	}
	members := map[string]string{}
	for _, m := range st.Members {
		members[m.Name] = m.State
	}
	return members, nil
}

// lossDetection bounds how long memberlist (LAN defaults) takes to declare
// dead a member it cannot talk to, among three or four.
const lossDetection = 15 * time.Second

// waitAlone waits until dp reports that it cannot join, then checks that
// it lists only itself and that none of the cluster lists it.
func waitAlone(t *testing.T, dp *clusterDP, cluster []*clusterDP) {
	t.Helper()
	testenv.WaitFor(t, eventually, dp.Name+" to report that it cannot join", func() bool {
		return strings.Contains(dp.proc.Stderr(), "cannot reach the cluster")
	})
	st, err := statusOf(t, dp.GRPC)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 1 || st.Members[0].Name != dp.Name {
		t.Errorf("status --node %s: %+v, want only itself", dp.Name, st.Members)
	}
	for _, c := range cluster {
		st, err := statusOf(t, c.GRPC)
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := st.member(dp.Name); ok {
			t.Errorf("status --node %s lists %s, which has no key of the cluster: %+v", c.Name, dp.Name, m)
		}
	}
}

// Three DPs with a key file form a cluster; a DP with another key, or
// none, never joins them, on either side.
func TestE2E_Cluster_GossipKeyFile(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	keys, otherKeys := filepath.Join(work, "gossip.keys"), filepath.Join(work, "other.keys")
	writeKeyFile(t, keys, newGossipKey(t))
	writeKeyFile(t, otherKeys, newGossipKey(t))
	// No product is asked for: the upstream is never contacted.
	const upstream = "http://127.0.0.1:9/"
	dps := startCluster(t, upstream, k.pub, []dpSpec{{"dp-1", "branch"}, {"dp-2", "branch"}, {"dp-3", "branch"}},
		"--gossip-key-file", keys)
	for _, dp := range dps {
		if s := dp.proc.Stderr(); !strings.Contains(s, "gossip encrypted") || strings.Contains(s, "level=WARN") {
			t.Errorf("DP %s: want an info line on its gossip encryption and no warning:\n%s", dp.Name, s)
		}
	}
	join := []string{dps[0].Gossip, dps[1].Gossip}
	other := startClusterDP(t, "dp-other-key", "branch", upstream, k.pub, join, "--gossip-key-file", otherKeys)
	plain := startClusterDP(t, "dp-no-key", "branch", upstream, k.pub, join)
	waitAlone(t, other, dps)
	waitAlone(t, plain, dps)
	waitMembers(t, dps, dps)
}

// A key rotation across three running DPs, each with its own key file (add
// the new key on every DP, then move it first on every DP, then remove the
// old one), loses no member at any step; a key file that turns to garbage
// on the way leaves its DP running with its keys. Afterwards a DP with the
// new key joins, one with the old key cannot.
func TestE2E_Cluster_GossipKeyRotation(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	oldKey, newKey := newGossipKey(t), newGossipKey(t)
	oldFP, newFP := gossip.KeyFingerprint(oldKey), gossip.KeyFingerprint(newKey)
	const upstream = "http://127.0.0.1:9/"
	file := func(name string) string { return filepath.Join(work, name+".keys") }
	var dps []*clusterDP
	var join []string
	for _, name := range []string{"dp-1", "dp-2", "dp-3"} {
		writeKeyFile(t, file(name), oldKey)
		dp := startClusterDP(t, name, "branch", upstream, k.pub, join, "--gossip-key-file", file(name))
		dps, join = append(dps, dp), append(join, dp.Gossip)
	}
	waitMembers(t, dps, dps)
	lost := watchMembers(t, dps)
	hup := func(dp *clusterDP) {
		t.Helper()
		if err := dp.proc.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	// 1. Add the new key (second: it decrypts, the old one still
	// encrypts) on every DP, and tell each with SIGHUP.
	for _, dp := range dps {
		writeKeyFile(t, file(dp.Name), oldKey, newKey)
		hup(dp)
	}
	for _, dp := range dps {
		waitLog(t, dp, "the new key added", "gossip keys changed", "added=["+newFP+"]")
	}
	// 2. Move it first on every DP; no signal: each DP finds the change.
	for _, dp := range dps {
		writeKeyFile(t, file(dp.Name), newKey, oldKey)
	}
	for _, dp := range dps {
		waitLog(t, dp, "the new key in use", "gossip keys changed", " primary="+newFP+" previous_primary="+oldFP)
	}
	// dp-2's file turns to garbage: it says so, keeps its keys, runs on.
	if err := os.WriteFile(file("dp-2"), []byte("# half-written\nnot a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup(dps[1])
	waitLog(t, dps[1], "the bad file refused", "keeping the keys in use", file("dp-2")+", line 2")
	// 3. Remove the old key on every DP.
	for _, dp := range dps {
		writeKeyFile(t, file(dp.Name), newKey)
		hup(dp)
	}
	for _, dp := range dps {
		waitLog(t, dp, "the old key removed", "gossip keys changed", "removed=["+oldFP+"]")
	}
	lastStep := time.Now()

	// The cluster speaks the new key only. Starting these DPs and seeing
	// them join or fail takes a few of memberlist's probe rounds, during
	// which the watch goes on.
	newFile, oldFile := filepath.Join(work, "new.keys"), filepath.Join(work, "old.keys")
	writeKeyFile(t, newFile, newKey)
	writeKeyFile(t, oldFile, oldKey)
	stale := startClusterDP(t, "dp-old-key", "branch", upstream, k.pub, join, "--gossip-key-file", oldFile)
	fresh := startClusterDP(t, "dp-4", "branch", upstream, k.pub, join, "--gossip-key-file", newFile)
	all := append(dps[:3:3], fresh)
	waitMembers(t, all, all)
	waitAlone(t, stale, all)
	// An observation window, not a wait for a condition: a DP that cannot
	// talk to another is declared dead only after memberlist's probes
	// (1s, each member in turn) and suspicion timeout (4s and more with
	// LAN defaults) have run out, so the watch goes on for that long
	// after the last step.
	if d := lossDetection - time.Since(lastStep); d > 0 {
		time.Sleep(d)
	}
	if l := lost(); l != "" {
		t.Fatalf("a member was lost during the rotation: %s", l)
	}
	for _, dp := range dps {
		if dp.proc.Exited() {
			t.Errorf("DP %s exited: %s", dp.Name, dp.proc.Stderr())
		}
		s := dp.proc.Stderr()
		if strings.Contains(s, base64.StdEncoding.EncodeToString(oldKey)) || strings.Contains(s, base64.StdEncoding.EncodeToString(newKey)) {
			t.Errorf("DP %s logged a gossip key", dp.Name)
		}
	}
}

// --gossip-key and --gossip-key-file together are a usage error; a bad key
// file stops the start with a line naming the file and line; --gossip-key
// alone still works, with a warning that it is deprecated.
func TestE2E_GossipKeyFile_CLI(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	key := base64.StdEncoding.EncodeToString(newGossipKey(t))
	good, bad := filepath.Join(work, "good.keys"), filepath.Join(work, "bad.keys")
	writeKeyFile(t, good, newGossipKey(t))
	if err := os.WriteFile(bad, []byte(key+"\n\n"+key[:20]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"node", "--data", filepath.Join(work, "data"), "--grpc", "127.0.0.1:0", "--http", "",
		"--gossip", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/", "--trust", k.pub}

	r := dpcache(t, append(base, "--gossip-key", key, "--gossip-key-file", good)...)
	line := errorLine(t, r)
	if r.code != 2 || !containsAll(line, "--gossip-key", "--gossip-key-file") || strings.Contains(line, key) {
		t.Errorf("both flags: want exit 2 and a line naming both flags, not the key; got %s", r)
	}

	r = dpcache(t, append(base, "--gossip-key-file", bad)...)
	line = errorLine(t, r)
	if r.code != 1 || !containsAll(line, bad, "line 3", "base64") || strings.Contains(line, key[:20]) {
		t.Errorf("bad key file: want exit 1 and a line naming the file and line 3, not its text; got %s", r)
	}

	dp := startClusterDP(t, "dp-deprecated", "branch", "http://127.0.0.1:9/", k.pub, nil, "--gossip-key", key)
	if s := dp.proc.Stderr(); !containsAll(s, "--gossip-key is deprecated", "--gossip-key-file") {
		t.Errorf("--gossip-key: want a deprecation warning naming --gossip-key-file:\n%s", s)
	}
}
