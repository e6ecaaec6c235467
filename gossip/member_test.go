package gossip

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestEntry_Merge(t *testing.T) {
	t.Parallel()
	v := func(clock uint64, truncated bool, serials ...uint64) versionsPart {
		return versionsPart{Clock: clock, Truncated: truncated, Versions: map[string][]uint64{"p": serials}}
	}
	tests := []struct {
		name      string
		cur, in   versionsPart
		wantApply bool
	}{
		{"newer replaces", v(5, false, 1), v(6, false, 2), true},
		{"older ignored", v(6, false, 2), v(5, false, 1), false},
		{"same clock ignored", v(6, false, 2), v(6, false, 1), false},
		{"full replaces truncated at same clock", v(6, true, 2), v(6, false, 2, 3), true},
		{"truncated does not replace full at same clock", v(6, false, 2, 3), v(6, true, 2), false},
		{"newer truncated replaces full", v(6, false, 2, 3), v(7, true, 4), true},
		{"zero clock never applies to empty", versionsPart{}, versionsPart{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := entry{Name: "n", Versions: tt.cur}
			if got := e.mergeVersions(tt.in); got != tt.wantApply {
				t.Fatalf("applied = %v, want %v", got, tt.wantApply)
			}
			want := tt.cur
			if tt.wantApply {
				want = tt.in
			}
			if !reflect.DeepEqual(e.Versions, want) {
				t.Fatalf("versions = %+v, want %+v", e.Versions, want)
			}
			// The same rule holds for the fetching part.
			f := entry{Fetching: fetchingPart{Clock: tt.cur.Clock, Truncated: tt.cur.Truncated}}
			if got := f.mergeFetching(fetchingPart{Clock: tt.in.Clock, Truncated: tt.in.Truncated}); got != tt.wantApply {
				t.Fatalf("fetching applied = %v, want %v", got, tt.wantApply)
			}
		})
	}
}

func TestEntry_Leaving(t *testing.T) {
	t.Parallel()
	e := entry{Versions: versionsPart{Clock: 10}, Fetching: fetchingPart{Clock: 11}}
	if e.leaving() {
		t.Fatal("leaving without a leave")
	}
	if !e.mergeLeave(12) || !e.leaving() {
		t.Fatal("leave at 12 not applied")
	}
	if e.mergeLeave(12) || e.mergeLeave(3) {
		t.Fatal("same or older leave applied again")
	}
	// The node came back: its new state is above the leave.
	e.mergeVersions(versionsPart{Clock: 13})
	if e.leaving() {
		t.Fatal("still leaving after newer state")
	}
}

// An old message never overwrites a newer one, through the real callbacks;
// a message about ourselves with a higher clock (from a previous run) makes
// us move past it.
func TestGossip_NotifyMsg_OldDoesNotOverwrite(t *testing.T) {
	t.Parallel()
	g, err := New(testConfig("self", "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	d := &delegate{g}
	send := func(clock uint64, serials ...uint64) {
		b, _ := encodeVersionsMsg("peer", versionsPart{Clock: clock, Versions: map[string][]uint64{"p": serials}}, 0)
		d.NotifyMsg(b)
	}
	peerVersions := func() []uint64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.entries["peer"].Versions.Versions["p"]
	}
	send(10, 1)
	send(12, 1, 2)
	send(11, 9) // late, older: ignored
	if got := peerVersions(); !reflect.DeepEqual(got, []uint64{1, 2}) {
		t.Fatalf("after 10, 12, 11: %v, want [1 2]", got)
	}
	// Push/pull state with an older entry is ignored too; a newer one applies.
	d.MergeRemoteState(encodeState("other", []entry{{Name: "peer", Versions: versionsPart{Clock: 5, Versions: map[string][]uint64{"p": {7}}}}}), false)
	if got := peerVersions(); !reflect.DeepEqual(got, []uint64{1, 2}) {
		t.Fatalf("after older state: %v", got)
	}
	d.MergeRemoteState(encodeState("other", []entry{{Name: "peer", Versions: versionsPart{Clock: 13, Versions: map[string][]uint64{"p": {3}}}}}), false)
	if got := peerVersions(); !reflect.DeepEqual(got, []uint64{3}) {
		t.Fatalf("after newer state: %v", got)
	}
	// Garbage is dropped.
	d.NotifyMsg([]byte{msgVersions, wireFormat, 0xff})
	d.MergeRemoteState([]byte("garbage"), true)

	// A message about us from "the future" (an earlier run with a clock
	// ahead): we move past it and queue our own state.
	g.mu.Lock()
	future := g.clock + 1000
	g.mu.Unlock()
	b, _ := encodeVersionsMsg("self", versionsPart{Clock: future, Versions: map[string][]uint64{"old": {1}}}, 0)
	d.NotifyMsg(b)
	g.mu.Lock()
	self := g.entries["self"]
	if self.Versions.Clock <= future || self.Fetching.Clock <= future || self.Versions.Versions["old"] != nil {
		t.Errorf("after a newer message about self: versions clock %d, fetching clock %d (future %d), versions %v",
			self.Versions.Clock, self.Fetching.Clock, future, self.Versions.Versions)
	}
	g.mu.Unlock()
	if g.queue.NumQueued() == 0 {
		t.Error("nothing queued to re-announce our state")
	}
}

func TestGossip_SetVersions_NoChangeNoBroadcast(t *testing.T) {
	t.Parallel()
	g, err := New(testConfig("self", "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ch := g.Changed()
	g.SetVersions("p", []uint64{3, 1, 3})
	select {
	case <-ch:
	default:
		t.Fatal("Changed not closed by SetVersions")
	}
	me := g.Members()[0]
	if !me.Local || !reflect.DeepEqual(me.Versions, map[string][]uint64{"p": {1, 3}}) || !me.Holds("p", 3) || me.Holds("p", 2) {
		t.Fatalf("self: %+v", me)
	}
	ch = g.Changed()
	g.SetVersions("p", []uint64{1, 3})
	g.SetFetching(nil)
	select {
	case <-ch:
		t.Fatal("Changed closed by a call that changed nothing")
	default:
	}
	g.SetFetching([]string{"b", "a", "b"})
	if me := g.Members()[0]; !reflect.DeepEqual(me.Fetching, []string{"a", "b"}) || !me.IsFetching("a") {
		t.Fatalf("fetching: %v", me.Fetching)
	}
	g.SetVersions("p", nil)
	if me := g.Members()[0]; me.Versions != nil {
		t.Fatalf("versions after removing p: %v", me.Versions)
	}
}

// Rendezvous hashing: balanced, and removing (adding) one member moves only
// the digests it owned (comes to own).
func TestOwners_Rendezvous(t *testing.T) {
	t.Parallel()
	const digests = 1000
	members := func(names ...string) []Member {
		ms := make([]Member, len(names))
		for i, n := range names {
			ms[i] = Member{Name: n}
		}
		return ms
	}
	owner := func(ms []Member, d string) string {
		ms = append([]Member(nil), ms...)
		rankByRendezvous(d, ms)
		return ms[0].Name
	}
	all := members("dp-1", "dp-2", "dp-3", "dp-4", "dp-5")
	before := make(map[string]string, digests)
	count := map[string]int{}
	for i := range digests {
		d := digest(i)
		before[d] = owner(all, d)
		count[before[d]]++
	}
	for _, m := range all {
		// 1000 digests over 5 members: 200 each, σ ≈ 12.6.
		if c := count[m.Name]; c < 140 || c > 260 {
			t.Errorf("%s owns %d of %d digests, want about 200", m.Name, c, digests)
		}
	}
	for gone := range all {
		rest := append(append([]Member(nil), all[:gone]...), all[gone+1:]...)
		moved := 0
		for d, was := range before {
			now := owner(rest, d)
			if now != was {
				moved++
				if was != all[gone].Name {
					t.Fatalf("without %s, %s moved from %s to %s", all[gone].Name, d, was, now)
				}
			}
		}
		if moved != count[all[gone].Name] {
			t.Errorf("without %s, %d digests moved, it owned %d", all[gone].Name, moved, count[all[gone].Name])
		}
	}
	grown := append(append([]Member(nil), all...), Member{Name: "dp-6"})
	gained := 0
	for d, was := range before {
		if now := owner(grown, d); now != was {
			if now != "dp-6" {
				t.Fatalf("adding dp-6 moved %s from %s to %s", d, was, now)
			}
			gained++
		}
	}
	if gained < 100 || gained > 240 {
		t.Errorf("dp-6 gained %d of %d digests, want about 167", gained, digests)
	}
	// Order of the input does not matter.
	rev := members("dp-5", "dp-4", "dp-3", "dp-2", "dp-1")
	for i := range 50 {
		d := digest(i)
		a, b := append([]Member(nil), all...), append([]Member(nil), rev...)
		rankByRendezvous(d, a)
		rankByRendezvous(d, b)
		if names(a) != names(b) {
			t.Fatalf("ranking depends on input order: %s vs %s", names(a), names(b))
		}
	}
}

func TestGossip_ForgetAfter(t *testing.T) {
	t.Parallel()
	g, err := New(testConfig("self", "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	now := time.Now()
	g.mu.Lock()
	g.members["gone"] = &member{name: "gone", alive: false, since: now.Add(-2 * g.cfg.ForgetAfter)}
	g.members["recent"] = &member{name: "recent", alive: false, since: now.Add(-time.Minute)}
	g.entries["gone"] = &known{entry: entry{Name: "gone"}, seen: now.Add(-2 * g.cfg.ForgetAfter)}
	g.entries["orphan"] = &known{entry: entry{Name: "orphan"}, seen: now.Add(-2 * g.cfg.ForgetAfter)}
	g.entries["fresh-orphan"] = &known{entry: entry{Name: "fresh-orphan"}, seen: now}
	g.mu.Unlock()
	g.forget(now)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, name := range []string{"gone", "orphan"} {
		if g.members[name] != nil || g.entries[name] != nil {
			t.Errorf("%s not forgotten", name)
		}
	}
	if g.members["recent"] == nil || g.entries["fresh-orphan"] == nil || g.entries["self"] == nil {
		t.Error("forgot too much")
	}
}

// RankNames predicts Owners from names alone.
func TestRankNames_MatchesOwners(t *testing.T) {
	t.Parallel()
	names := []string{"dp-a", "dp-b", "dp-c", "dp-d"}
	ms := make([]Member, len(names))
	for i, n := range names {
		ms[i].Name = n
	}
	for i := range 200 {
		key := fmt.Sprintf("digest-%d", i)
		rankByRendezvous(key, ms)
		got := RankNames(key, names)
		for j := range ms {
			if got[j] != ms[j].Name {
				t.Fatalf("key %s: RankNames %v, Owners order %v", key, got, ms)
			}
		}
	}
}
