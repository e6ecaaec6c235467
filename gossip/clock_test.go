package gossip

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// TestGossip_ForgedClockDropped: a member forges a versions broadcast with
// clock 2^64-1, about the victim itself and about a third member. Both are
// dropped and counted: the victim's clock does not wrap past zero (which
// left its peers with a false serial for good), nobody believes the forged
// holdings, and the victim's real holdings still reach its peers.
func TestGossip_ForgedClockDropped(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, "clk", 2)
	a, victim := nodes[0], nodes[1]
	d := &delegate{g: victim.Gossip}
	for _, about := range []string{victim.cfg.Name, a.cfg.Name} {
		forged, truncated := encodeVersionsMsg(about, versionsPart{Clock: math.MaxUint64, Versions: map[string][]uint64{"av": {99}}}, 1<<16)
		if truncated {
			t.Fatal("forged message truncated")
		}
		d.NotifyMsg(forged)
	}
	state := encodeState(a.cfg.Name, []entry{{Name: a.cfg.Name, Versions: versionsPart{Clock: math.MaxUint64 - 1, Versions: map[string][]uint64{"av": {98}}}}})
	d.MergeRemoteState(state, false)
	if n := victim.Dropped(); n != 3 {
		t.Errorf("Dropped() = %d, want 3 (two broadcasts, one push/pull state)", n)
	}
	victim.mu.Lock()
	clock := victim.clock
	victim.mu.Unlock()
	if clock > uint64(time.Now().UnixNano())+maxClockLead || clock < uint64(time.Now().Add(-time.Hour).UnixNano()) {
		t.Errorf("victim's clock is %d after the forgery, want about the wall clock", clock)
	}
	if hs := victim.Holders("", "av", 99); len(hs) != 0 {
		t.Errorf("the victim believes the forged holdings: %v", names(hs))
	}
	victim.SetVersions("av", []uint64{1})
	eventually(t, 20*time.Second, "the victim's real holdings to reach its peer", func() error {
		if hs := a.Holders("", "av", 1); len(hs) != 1 || hs[0].Name != victim.cfg.Name {
			return fmt.Errorf("holders of av 1 seen by %s: %s", a.cfg.Name, names(hs))
		}
		return nil
	})
}
