package catalog

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/manifest"
	"github.com/dpcache/dpcache/source"
)

func TestAgeBucket(t *testing.T) {
	t.Parallel()
	tests := []struct {
		lag  time.Duration
		want string
	}{
		{0, AgeCurrent},
		{-time.Hour, AgeCurrent}, // clocks disagree: not behind
		{23*time.Hour + 59*time.Minute, AgeCurrent},
		{24 * time.Hour, Age24h},
		{71 * time.Hour, Age24h},
		{72 * time.Hour, Age3d},
		{7*24*time.Hour - time.Second, Age3d},
		{7 * 24 * time.Hour, Age7d},
		{400 * 24 * time.Hour, Age7d},
	}
	for _, tt := range tests {
		t.Run(tt.lag.String(), func(t *testing.T) {
			t.Parallel()
			if got := AgeBucket(tt.lag); got != tt.want {
				t.Fatalf("AgeBucket(%v) = %q, want %q", tt.lag, got, tt.want)
			}
		})
	}
}

func TestAgeRefs_Age(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	refs := AgeRefs{"av": {
		newest: versionRec{Version: "9", Serial: 9, Published: now},
		known: []versionRec{
			{Version: "2", Serial: 2, Published: now.Add(-10 * day)},
			{Version: "5", Serial: 5, Published: now.Add(-4 * day)},
			{Version: "8", Serial: 8, Published: now.Add(-2 * time.Hour)},
			{Version: "9", Serial: 9, Published: now},
		},
	}}
	tests := []struct {
		name    string
		product string
		serial  uint64
		want    string
	}{
		{"newest", "av", 9, AgeCurrent},
		{"newer than known", "av", 12, AgeCurrent},
		{"hours behind", "av", 8, AgeCurrent},
		{"known, 4 days", "av", 5, Age3d},
		{"unknown, dated by the next known (lower bound)", "av", 4, Age3d},
		{"unknown, before everything known", "av", 1, Age7d},
		{"known, 10 days", "av", 2, Age7d},
		{"unknown product", "other", 1, AgeCurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := refs.Age(tt.product, tt.serial); got != tt.want {
				t.Fatalf("age(%s, %d) = %q, want %q", tt.product, tt.serial, got, tt.want)
			}
		})
	}
}

func TestParseWindow(t *testing.T) {
	t.Parallel()
	at := func(h, m int) time.Time { return time.Date(2025, 3, 14, h, m, 0, 0, time.Local) }
	tests := []struct {
		in      string
		wantErr bool
		in_     []time.Time // inside
		out     []time.Time // outside
	}{
		{in: "22:00-06:00", in_: []time.Time{at(22, 0), at(23, 59), at(0, 0), at(5, 59)}, out: []time.Time{at(6, 0), at(12, 0), at(21, 59)}},
		{in: "09:00-17:30", in_: []time.Time{at(9, 0), at(17, 29)}, out: []time.Time{at(8, 59), at(17, 30), at(0, 0)}},
		{in: "00:00-24:00", wantErr: true}, // same instant
		{in: "23:00-24:00", in_: []time.Time{at(23, 30)}, out: []time.Time{at(0, 0), at(22, 59)}},
		{in: "", in_: []time.Time{at(3, 0), at(15, 0)}},
		{in: "10:00-10:00", wantErr: true},
		{in: "25:00-01:00", wantErr: true},
		{in: "10:60-11:00", wantErr: true},
		{in: "10-12", wantErr: true},
		{in: "22:00", wantErr: true},
		{in: "ab:cd-01:00", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			w, err := ParseWindow(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseWindow(%q): %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.in) {
					t.Errorf("error %q does not name the input", err)
				}
				return
			}
			if got := w.String(); got != tt.in && tt.in != "23:00-24:00" {
				t.Errorf("String() = %q, want %q", got, tt.in)
			}
			for _, ti := range tt.in_ {
				if !w.Contains(ti) || w.untilOpen(ti) != 0 {
					t.Errorf("%s should contain %s", tt.in, ti.Format("15:04"))
				}
			}
			for _, to := range tt.out {
				if w.Contains(to) {
					t.Errorf("%s should not contain %s", tt.in, to.Format("15:04"))
				}
				if u := w.untilOpen(to); u <= 0 || u > 24*time.Hour || !w.Contains(to.Add(u)) {
					t.Errorf("%s: untilOpen(%s) = %v, which is not the opening", tt.in, to.Format("15:04"), u)
				}
			}
		})
	}
}

func TestJittered(t *testing.T) {
	t.Parallel()
	for range 100 {
		if d := jittered(time.Hour); d < time.Hour || d > time.Hour+6*time.Minute {
			t.Fatalf("jittered(1h) = %v, want within [1h, 1h06m]", d)
		}
	}
}

func TestFetchOrder_DatabasesFirst(t *testing.T) {
	t.Parallel()
	d := func(c byte) string { return strings.Repeat(string(c), 64) }
	m := &manifest.Manifest{Files: []manifest.File{
		{Path: "modules/a", SHA256: d('a'), Component: manifest.ComponentModules},
		{Path: "db/b", SHA256: d('b'), Component: manifest.ComponentDatabases},
		{Path: "modules/c", SHA256: d('c'), Component: manifest.ComponentModules},
		{Path: "db/c-again", SHA256: d('c'), Component: manifest.ComponentDatabases}, // same bytes in both
		{Path: "db/e", SHA256: d('e'), Component: manifest.ComponentDatabases},
	}}
	dbs, mods := fetchOrder(m)
	var got []string
	for _, f := range append(dbs, mods...) {
		got = append(got, f.SHA256[:1])
	}
	if strings.Join(got, "") != "bcea" {
		t.Fatalf("fetch order %v, want b c e (databases) then a (modules)", got)
	}
}

// A chunked file's blobs are its chunks, in its component's group; its
// whole digest is no blob to fetch.
func TestFetchOrder_Chunks(t *testing.T) {
	t.Parallel()
	d := func(c byte) string { return strings.Repeat(string(c), 64) }
	m := &manifest.Manifest{Files: []manifest.File{
		{Path: "modules/a", Size: 3, SHA256: d('a'), Component: manifest.ComponentModules,
			Chunks: []manifest.Chunk{{SHA256: d('c'), Size: 1}, {SHA256: d('d'), Size: 2}}},
		{Path: "db/b", Size: 3, SHA256: d('b'), Component: manifest.ComponentDatabases,
			Chunks: []manifest.Chunk{{SHA256: d('d'), Size: 2}, {SHA256: d('e'), Size: 1}}},
	}}
	dbs, mods := fetchOrder(m)
	var got []string
	for _, f := range append(dbs, mods...) {
		got = append(got, f.SHA256[:1])
	}
	if strings.Join(got, "") != "dec" {
		t.Fatalf("fetch order %v, want d e (databases) then c (modules)", got)
	}
}

// TestDocKey: a document fetch is shared only by requests with the same
// forwarded mark and the same chain of DPs; detach keeps both and drops
// the caller's cancellation.
func TestDocKey(t *testing.T) {
	t.Parallel()
	self, other := source.NewInstanceID(), source.NewInstanceID()
	c := &Catalog{ctx: source.WithVia(context.Background(), []string{self})}
	req, cancel := context.WithCancel(context.Background())
	cancel()
	keys := map[string]string{}
	for name, ctx := range map[string]context.Context{
		"endpoint or the DP itself": req,
		"forwarded":                 WithForwarded(req, true),
		"from another DP":           source.WithVia(req, []string{other, self}),
		"forwarded from another DP": WithForwarded(source.WithVia(req, []string{other, self}), true),
	} {
		fctx := c.detach(ctx)
		if fctx.Err() != nil {
			t.Errorf("%s: the fetch's context ends with the caller's", name)
		}
		key := docKey(fctx, "av/latest.json")
		if prev, dup := keys[key]; dup {
			t.Errorf("%s and %s share the key %q", name, prev, key)
		}
		keys[key] = name
	}
	// The DP's own requests and its endpoints' share one fetch.
	mine := source.WithVia(req, []string{self})
	if docKey(c.detach(mine), "p") != docKey(c.detach(req), "p") {
		t.Errorf("an endpoint's request over gRPC and one without a chain do not share a fetch")
	}
}
