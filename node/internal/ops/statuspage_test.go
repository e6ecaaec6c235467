package ops

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

func renderPage(t *testing.T, in pageInput) string {
	t.Helper()
	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, buildPage(in)); err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	if strings.Contains(html, "ZgotmplZ") {
		t.Fatalf("html/template refused a value:\n%s", html)
	}
	return html
}

func member(name, site, state string, traffic *pb.Traffic, cache *pb.CacheUsage, versions ...*pb.ProductVersions) *pb.MemberStatus {
	return &pb.MemberStatus{Name: name, Site: site, State: state, GrpcAddress: "10.0.0.1:7340", HttpAddress: "10.0.0.1:7341", Traffic: traffic, Cache: cache, Versions: versions}
}

func TestStatusPage_Build(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	now := time.Date(2030, 1, 2, 15, 4, 5, 0, time.UTC)
	twoDPs := &pb.GetStatusResponse{
		Members: []*pb.MemberStatus{
			member("dp-b", "lyon", "dead", nil, nil, &pb.ProductVersions{Product: "av", Serials: []uint64{1}}),
			member("dp-a", "paris", "alive", &pb.Traffic{UpstreamBytes: 100 << 20, ServedBytes: 600 << 20}, &pb.CacheUsage{Bytes: 300 << 20, MaxBytes: 1 << 30, Blobs: 12, FreeDiskBytes: 50 * gib},
				&pb.ProductVersions{Product: "av", Serials: []uint64{2, 3}}),
		},
		Traffic: &pb.Traffic{UpstreamBytes: 100 << 20, ServedBytes: 600 << 20},
	}
	tests := []struct {
		name      string
		in        pageInput
		want      []string
		wantNot   []string
		wantOrder []string // must appear in this order
	}{
		{
			name: "cluster, ratio and quota",
			in:   pageInput{name: "dp-a", site: "paris", now: now, status: twoDPs, localFree: 50 * gib, localFreeKnown: true},
			want: []string{
				`<meta http-equiv="refresh" content="10">`, `id="saved">83%<`, "reached endpoints 6.0×",
				"Site paris", "Site lyon", `<span class="pill dead">dead</span>`, "did not answer",
				`<span class="serial newest">3</span>`, `<span class="behind">behind</span>`,
				"29% of the 1 GiB quota", `style="width: 29%"`, "12 blobs", "600 MiB", "100 MiB",
				`id="no-endpoints"`, "none reported", "Collecting data",
			},
			wantNot:   []string{`id="low-disk"`, "banner error"},
			wantOrder: []string{"Site paris", "dp-a", "Site lyon", "dp-b"},
		},
		{
			name: "low disk here and on a peer",
			in: pageInput{name: "dp-a", site: "paris", now: now, localFree: gib, localFreeKnown: true, status: &pb.GetStatusResponse{Members: []*pb.MemberStatus{
				member("dp-a", "paris", "alive", &pb.Traffic{}, &pb.CacheUsage{FreeDiskBytes: gib}),
				member("dp-c", "paris", "alive", &pb.Traffic{}, &pb.CacheUsage{FreeDiskBytes: 512 << 20}),
				member("dp-d", "paris", "alive", &pb.Traffic{}, &pb.CacheUsage{FreeDiskBytes: 3 * gib}),
			}, Traffic: &pb.Traffic{}}},
			want:    []string{`id="low-disk"`, "dp-a has 1 GiB free", "dp-c has 512 MiB free", "no quota", "nothing delivered yet"},
			wantNot: []string{"dp-d has"},
		},
		{
			name: "over quota",
			in: pageInput{name: "dp-a", site: "paris", now: now, status: &pb.GetStatusResponse{Members: []*pb.MemberStatus{
				member("dp-a", "paris", "alive", &pb.Traffic{ServedBytes: 10}, &pb.CacheUsage{Bytes: 3 * gib, MaxBytes: 2 * gib, FreeDiskBytes: 9 * gib}),
			}, Traffic: &pb.Traffic{ServedBytes: 10}}},
			want: []string{`class="bar over"`, "150% of the 2 GiB quota", `style="width: 100%"`, "nothing came from the internet", `id="saved">100%<`},
		},
		{
			name: "endpoints by age, furthest behind first",
			in: pageInput{name: "dp-a", site: "paris", now: now, status: twoDPs,
				counts:        &EndpointCounts{Ages: map[string]int{"current": 40, "24h": 3, "3d": 2, "7d": 1}, Results: map[string]int{"stale": 4, "failed": 1}},
				outdatedKnown: true,
				outdated: []*pb.EndpointInfo{
					{Status: &pb.EndpointStatus{Id: "e1", Hostname: "pc-aaa", Site: "paris", Product: "av", Version: "2", Reported: timestamppb.New(now)}, Age: "24h"},
					{Status: &pb.EndpointStatus{Id: "e2", Hostname: "pc-zzz", Site: "paris", Product: "av", Version: "1", Reported: timestamppb.New(now)}, Age: "7d"},
					{Status: &pb.EndpointStatus{Id: "e3", Hostname: "pc-mmm", Site: "lyon", Product: "av", Version: "1", Reported: timestamppb.New(now)}, Age: "3d"},
				}},
			want:      []string{`<div class="n">40</div>`, "older than 7 days", `id="outdated"`, "2030-01-02 15:04", `id="endpoint-results"`, "stale: every source offered an expired version", "failed their last update"},
			wantNot:   []string{"none reported"},
			wantOrder: []string{"pc-zzz", "pc-mmm", "pc-aaa"},
		},
		{
			name:    "endpoints all current",
			in:      pageInput{name: "dp-a", site: "paris", now: now, status: twoDPs, counts: &EndpointCounts{Ages: map[string]int{"current": 5}}, outdatedKnown: true},
			want:    []string{"No outdated endpoint."},
			wantNot: []string{`id="endpoint-results"`},
		},
		{
			name: "status unavailable",
			in:   pageInput{name: "dp-a", site: "paris", now: now, errs: []string{"cluster status: cache closed"}},
			want: []string{`<div class="banner error">cluster status: cache closed</div>`, "0 DPs in 0 sites"},
		},
		{
			name: "names are escaped",
			in: pageInput{name: "dp-a", site: "paris", now: now, status: &pb.GetStatusResponse{Members: []*pb.MemberStatus{
				member("<b>x</b>", "paris", "alive", nil, nil),
			}}},
			want:    []string{"&lt;b&gt;x&lt;/b&gt;"},
			wantNot: []string{"<b>x</b>"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			html := renderPage(t, tt.in)
			for _, w := range tt.want {
				if !strings.Contains(html, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(html, w) {
					t.Errorf("page shows %q", w)
				}
			}
			rest := html[strings.Index(html, "<main>"):]
			for _, w := range tt.wantOrder {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Errorf("%q missing or out of order (want %q)", w, tt.wantOrder)
					break
				}
				rest = rest[i+len(w):]
			}
			if t.Failed() {
				t.Logf("page:\n%s", html)
			}
		})
	}
}

// The history counts increases only: a member that restarts (counters back
// at zero) never makes the curves go down, and members that did not answer
// catch up later.
func TestStatusPage_HistoryAcrossRestarts(t *testing.T) {
	t.Parallel()
	s := NewStatusPage(PageConfig{}, nil)
	obs := func(ms ...*pb.MemberStatus) trafficTotals {
		s.observe(&pb.GetStatusResponse{Members: ms})
		_, tot := s.history()
		return tot
	}
	tr := func(up, peer, served uint64) *pb.Traffic {
		return &pb.Traffic{UpstreamBytes: up, PeerBytes: peer, ServedBytes: served}
	}
	steps := []struct {
		members []*pb.MemberStatus
		want    trafficTotals
	}{
		{[]*pb.MemberStatus{{Name: "a", Traffic: tr(10, 0, 30)}, {Name: "b", Traffic: tr(0, 10, 5)}}, trafficTotals{10, 10, 35}},
		{[]*pb.MemberStatus{{Name: "a", Traffic: tr(15, 0, 50)}, {Name: "b"}}, trafficTotals{15, 10, 55}},                      // b did not answer
		{[]*pb.MemberStatus{{Name: "a", Traffic: tr(2, 0, 4)}, {Name: "b", Traffic: tr(0, 12, 9)}}, trafficTotals{17, 12, 63}}, // a restarted
	}
	for i, st := range steps {
		if got := obs(st.members...); got != st.want {
			t.Fatalf("step %d: totals %+v, want %+v", i, got, st.want)
		}
	}
	if d := (trafficTotals{peer: 5, served: 3}).delivered(); d != 0 {
		t.Fatalf("delivered with more peer than served bytes: %d, want 0", d)
	}
}

func TestStatusPage_Chart(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2030, 1, 2, 10, 0, 0, 0, time.UTC)
	var samples []trafficSample
	for i := range 2000 { // more than chartPoints: thinned
		samples = append(samples, trafficSample{t0.Add(time.Duration(i) * 10 * time.Second), trafficTotals{upstream: uint64(i) << 20, served: uint64(i) * 5 << 20}})
	}
	c := buildChart(samples)
	if c.Empty {
		t.Fatal("chart empty")
	}
	if pts := strings.Count(c.DeliveredLine, "L") + 1; pts > chartPoints+1 || pts < chartPoints/2 {
		t.Fatalf("%d points drawn, want about %d", pts, chartPoints)
	}
	// Every coordinate lies inside the plot.
	for _, m := range regexp.MustCompile(`([0-9.]+),([0-9.]+)`).FindAllStringSubmatch(c.DeliveredArea+c.InternetArea, -1) {
		var x, y float64
		fmt.Sscan(m[1], &x)
		fmt.Sscan(m[2], &y)
		if x < c.Left-0.1 || x > c.Right+0.1 || y < c.Top-0.1 || y > c.Base+0.1 {
			t.Fatalf("point %v,%v outside the plot", x, y)
		}
	}
	if c.Delivered != 1999*5<<20 || c.Internet != 1999<<20 {
		t.Fatalf("chart span: delivered %d, internet %d", c.Delivered, c.Internet)
	}
	if len(c.XTicks) != 5 || c.XTicks[0].Label != "10:00" || c.XTicks[4].Label != "15:33" {
		t.Fatalf("x ticks %+v", c.XTicks)
	}
	if l := c.YTicks[len(c.YTicks)-1].Label; l != "10 GiB" {
		t.Fatalf("top y tick %q, want 10 GiB", l)
	}
	if !buildChart(samples[:1]).Empty || !buildChart([]trafficSample{samples[0], samples[0]}).Empty {
		t.Fatal("a chart without a time span is drawn")
	}
}

func TestStatusPage_Format(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		b    uint64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1 KiB"}, {1536, "1.5 KiB"}, {300 << 20, "300 MiB"}, {5 << 30, "5 GiB"}, {1<<40 + 1<<39, "1.5 TiB"}} {
		if got := formatBytes(tt.b); got != tt.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tt.b, got, tt.want)
		}
	}
	for _, tt := range []struct{ raw, want float64 }{{3, 5}, {700, 1024}, {1500, 2048}, {3 << 20, 5 << 20}, {0.3 * (1 << 30), 500 << 20}} {
		if got := niceStep(tt.raw); got != tt.want {
			t.Errorf("niceStep(%v) = %v, want %v", tt.raw, got, tt.want)
		}
	}
}
