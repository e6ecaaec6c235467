package ops

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dpcache/dpcache/gossip"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// The status page: one server-rendered HTML document (no script, no
// external asset) that refreshes itself. Its figures come from the same
// place as AdminService.GetStatus and ListEndpoints (the admin fan-out,
// through Cluster); the traffic chart comes from a history sampled in
// memory.

//go:embed statuspage.html
var statusPageHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": formatBytes,
	"pct":   func(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) },
	"clock": func(t time.Time) string { return t.Format("15:04:05") },
}).Parse(statusPageHTML))

const (
	// statusRefresh is how often the page reloads itself, in seconds.
	statusRefresh = 10
	// statusSampleInterval is how often the traffic history takes a sample.
	statusSampleInterval = 10 * time.Second
	// statusHistory is how far back the traffic chart goes.
	statusHistory = 6 * time.Hour
	// chartPoints bounds the points drawn per series.
	chartPoints = 360
	// outdatedShown bounds the outdated endpoints listed by name.
	outdatedShown = 25
)

// PageConfig is what the status page says about the DP itself.
type PageConfig struct {
	Name, Site string
	DataDir    string // whose file system's free space is shown
	Logger     *slog.Logger
}

// Cluster is where the status page's figures come from: the DP's admin
// service. Its methods are called concurrently, from HTTP handlers and the
// sampling loop.
type Cluster interface {
	// Status is AdminService.GetStatus for the whole cluster.
	Status(ctx context.Context) (*pb.GetStatusResponse, error)
	// OutdatedEndpoints is AdminService.ListEndpoints, outdated only.
	OutdatedEndpoints(ctx context.Context) ([]*pb.EndpointInfo, error)
	// EndpointCounts counts the site's endpoints by age bucket and last
	// result; nil when
	// endpoint reporting gives no figures.
	EndpointCounts() *EndpointCounts
	// Stale returns the products whose upstreams all offer an expired
	// latest.json, with its expiry.
	Stale() map[string]time.Time
}

// StatusPage serves the status page and keeps the cluster's traffic
// history for its chart: cumulative bytes from the internet and delivered
// to endpoints, sampled every statusSampleInterval from the members'
// counters. A member's counters restart at zero with its process; the
// history counts increases only (as Prometheus's increase() does), so its
// curves never go down. Safe for concurrent use.
type StatusPage struct {
	cfg     PageConfig
	cluster Cluster

	mu      sync.Mutex             // protects the fields below
	last    map[string]*pb.Traffic // each member's counters when last seen
	cum     trafficTotals
	samples []trafficSample // ring buffer of cap statusHistory/statusSampleInterval
	next    int             // where the next sample goes once the ring is full
}

// trafficTotals are cumulative cluster counters, as the history saw them.
type trafficTotals struct {
	upstream, peer, served uint64
}

// internet is what crossed the sites' internet links.
func (t trafficTotals) internet() uint64 { return t.upstream }

// delivered is what reached endpoints: bytes served minus those a peer DP
// received (served counts bytes sent to peers too).
func (t trafficTotals) delivered() uint64 {
	if t.peer > t.served {
		return 0
	}
	return t.served - t.peer
}

type trafficSample struct {
	at     time.Time
	totals trafficTotals
}

// NewStatusPage returns the status page of a DP; it starts nothing.
func NewStatusPage(cfg PageConfig, cluster Cluster) *StatusPage {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &StatusPage{cfg: cfg, cluster: cluster, last: map[string]*pb.Traffic{}, samples: make([]trafficSample, 0, int(statusHistory/statusSampleInterval))}
}

// Run samples the cluster's traffic until ctx ends.
func (s *StatusPage) Run(ctx context.Context) {
	t := time.NewTicker(statusSampleInterval)
	defer t.Stop()
	for {
		s.Sample(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// Sample asks the cluster for its counters and records a point.
func (s *StatusPage) Sample(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, statusSampleInterval)
	defer cancel()
	resp, err := s.cluster.Status(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.Debug("status page: no traffic sample", "err", err)
		}
		return
	}
	s.observe(resp)
	s.mu.Lock()
	defer s.mu.Unlock()
	p := trafficSample{time.Now(), s.cum}
	if len(s.samples) < cap(s.samples) {
		s.samples = append(s.samples, p)
		return
	}
	s.samples[s.next] = p
	s.next = (s.next + 1) % len(s.samples)
}

// observe adds the increase of each member's counters since last seen.
// Members that did not answer are skipped; their increase counts later.
func (s *StatusPage) observe(resp *pb.GetStatusResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc := func(now, before uint64) uint64 {
		if now < before { // the member restarted
			return now
		}
		return now - before
	}
	for _, m := range resp.GetMembers() {
		t := m.GetTraffic()
		if t == nil {
			continue
		}
		before := s.last[m.GetName()]
		if before == nil {
			before = &pb.Traffic{}
		}
		s.cum.upstream += inc(t.GetUpstreamBytes(), before.GetUpstreamBytes())
		s.cum.peer += inc(t.GetPeerBytes(), before.GetPeerBytes())
		s.cum.served += inc(t.GetServedBytes(), before.GetServedBytes())
		s.last[m.GetName()] = &pb.Traffic{UpstreamBytes: t.GetUpstreamBytes(), PeerBytes: t.GetPeerBytes(), ServedBytes: t.GetServedBytes()}
	}
}

// history returns the samples in time order and the current totals.
func (s *StatusPage) history() ([]trafficSample, trafficTotals) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]trafficSample, 0, len(s.samples))
	out = append(out, s.samples[s.next:]...)
	out = append(out, s.samples[:s.next]...)
	return out, s.cum
}

// statusPageTimeout bounds gathering a page's figures from the cluster.
const statusPageTimeout = 5 * time.Second

// ServeHTTP serves the page.
func (s *StatusPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), statusPageTimeout)
	defer cancel()
	now := time.Now()
	in := pageInput{name: s.cfg.Name, site: s.cfg.Site, now: now, counts: s.cluster.EndpointCounts(), stale: s.cluster.Stale()}
	var err error
	if in.status, err = s.cluster.Status(ctx); err != nil {
		in.errs = append(in.errs, fmt.Sprintf("cluster status: %v", err))
	} else {
		s.observe(in.status)
	}
	if free, ok := DiskFree(s.cfg.DataDir); ok {
		in.localFree, in.localFreeKnown = free, true
	}
	if eps, err := s.cluster.OutdatedEndpoints(ctx); err == nil {
		in.outdated, in.outdatedKnown = eps, true
	}
	in.samples, in.totals = s.history()
	page := buildPage(in)
	var buf bytes.Buffer
	if err := statusTemplate.Execute(&buf, page); err != nil {
		s.cfg.Logger.Error("status page", "err", err)
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

// pageInput is what a page is built from.
type pageInput struct {
	name, site     string
	now            time.Time
	stale          map[string]time.Time  // product → expiry of the latest.json every upstream offers
	status         *pb.GetStatusResponse // nil when it could not be had
	localFree      uint64
	localFreeKnown bool
	counts         *EndpointCounts    // nil: endpoint reporting gave none
	outdated       []*pb.EndpointInfo // when outdatedKnown
	outdatedKnown  bool
	samples        []trafficSample
	totals         trafficTotals // now, for the chart's last point
	errs           []string
}

// pageData is what the template shows.
type pageData struct {
	Name, Site string
	Now        time.Time
	Refresh    int
	Errors     []string
	LowDisk    []lowDisk
	Stale      []staleView
	// StalePeers are the other members of the cluster that show
	// themselves stale; UpstreamDown the members (this DP included) whose
	// every upstream is failing.
	StalePeers   []memberIssue
	UpstreamDown []memberIssue

	Members, Alive, SiteCount int
	Delivered, Internet       uint64
	HasRatio                  bool
	Saved                     float64 // 1 - internet/delivered
	Factor                    float64 // delivered/internet; 0 when nothing came from the internet
	Local                     *cacheView

	Sites     []siteView
	Chart     chartView
	Endpoints endpointsView
}

// staleView is a product whose upstreams all offer an expired version.
type staleView struct {
	Product string
	Expired time.Time
}

// memberIssue is a member in trouble, for a banner.
type memberIssue struct {
	Name     string
	Products []string  // StalePeers: the stale products
	Since    time.Time // UpstreamDown: since when
}

type lowDisk struct {
	Name string
	Free uint64
}

type cacheView struct {
	Bytes, Max, Blobs, Free uint64
	Used                    float64 // Bytes/Max when Max > 0
	Bar                     float64 // Used, at most 1: the bar's width
	Over                    bool
}

type siteView struct {
	Name         string
	Local        bool
	Alive, Total int
	Members      []memberView
}

type memberView struct {
	Name, State, GRPC, HTTP string
	Local, Answered         bool
	Stale                   []string  // products the member serves stale
	UpstreamDown            time.Time // set while every upstream of the member fails
	Products                []productView
	Cache                   *cacheView
	Served, Upstream, Peer  uint64
}

type productView struct {
	Product string
	Serials []serialView
	Behind  bool // the member lacks the newest serial some member holds
}

type serialView struct {
	Serial uint64
	Newest bool
}

type endpointsView struct {
	Reported     bool
	Buckets      []bucketView
	Problems     []bucketView // endpoints whose last update was stale, failed or held (non-zero only)
	Total        int
	ListKnown    bool
	Outdated     []outdatedView
	MoreOutdated int
}

type bucketView struct {
	Age, Label string
	Count      int
	Level      string // "ok", "warn", "bad"
}

type outdatedView struct {
	ID, Hostname, Site, Product, Version, Age, Level string
	Reported                                         time.Time
}

var resultLabels = map[string]string{
	"stale":  "stale: every source offered an expired version",
	"failed": "failed their last update",
	"held":   "held at an older version after a rollback",
}

var ageLabels = map[string]string{"current": "up to date", "24h": "older than 24 h", "3d": "older than 3 days", "7d": "older than 7 days"}

func ageLevel(age string) string {
	switch age {
	case "current":
		return "ok"
	case "24h":
		return "warn"
	default:
		return "bad"
	}
}

// buildPage turns the figures into what the template shows.
func buildPage(in pageInput) pageData {
	p := pageData{Name: in.name, Site: in.site, Now: in.now, Refresh: statusRefresh, Errors: in.errs}
	members := in.status.GetMembers()
	newest := map[string]uint64{}
	for _, m := range members {
		for _, pv := range m.GetVersions() {
			if s := pv.GetSerials(); len(s) > 0 {
				newest[pv.GetProduct()] = max(newest[pv.GetProduct()], slices.Max(s))
			}
		}
	}
	sites := map[string]*siteView{}
	for _, m := range members {
		local := m.GetName() == in.name
		mv := memberView{Name: m.GetName(), State: m.GetState(), GRPC: m.GetGrpcAddress(), HTTP: m.GetHttpAddress(), Local: local, Answered: m.GetTraffic() != nil}
		if t := m.GetTraffic(); t != nil {
			mv.Served, mv.Upstream, mv.Peer = t.GetServedBytes(), t.GetUpstreamBytes(), t.GetPeerBytes()
		}
		mv.Stale = m.GetStaleProducts()
		if len(mv.Stale) > 0 && !local {
			p.StalePeers = append(p.StalePeers, memberIssue{Name: mv.Name, Products: mv.Stale})
		}
		if ts := m.GetUpstreamFailingSince(); ts != nil {
			mv.UpstreamDown = ts.AsTime()
			p.UpstreamDown = append(p.UpstreamDown, memberIssue{Name: mv.Name, Since: mv.UpstreamDown})
		}
		for _, pv := range m.GetVersions() {
			prod := productView{Product: pv.GetProduct()}
			serials := slices.Sorted(slices.Values(pv.GetSerials()))
			for _, s := range serials {
				prod.Serials = append(prod.Serials, serialView{Serial: s, Newest: s == newest[prod.Product]})
			}
			prod.Behind = len(serials) == 0 || serials[len(serials)-1] < newest[prod.Product]
			mv.Products = append(mv.Products, prod)
		}
		if c := m.GetCache(); c != nil {
			cv := &cacheView{Bytes: c.GetBytes(), Max: c.GetMaxBytes(), Blobs: c.GetBlobs(), Free: c.GetFreeDiskBytes()}
			if local && in.localFreeKnown {
				cv.Free = in.localFree
			}
			if cv.Max > 0 {
				cv.Used = float64(cv.Bytes) / float64(cv.Max)
				cv.Bar = min(cv.Used, 1)
				cv.Over = cv.Bytes > cv.Max
			}
			mv.Cache = cv
			if local {
				p.Local = cv
			}
			if !local && cv.Free < LowDiskThreshold {
				p.LowDisk = append(p.LowDisk, lowDisk{m.GetName(), cv.Free})
			}
		}
		sv := sites[m.GetSite()]
		if sv == nil {
			sv = &siteView{Name: m.GetSite(), Local: m.GetSite() == in.site}
			sites[m.GetSite()] = sv
		}
		sv.Total++
		p.Members++
		if mv.State == string(gossip.StateAlive) {
			sv.Alive++
			p.Alive++
		}
		sv.Members = append(sv.Members, mv)
	}
	if in.localFreeKnown && in.localFree < LowDiskThreshold {
		p.LowDisk = append([]lowDisk{{in.name, in.localFree}}, p.LowDisk...)
	}
	for product, exp := range in.stale {
		p.Stale = append(p.Stale, staleView{product, exp})
	}
	slices.SortFunc(p.Stale, func(a, b staleView) int { return cmp.Compare(a.Product, b.Product) })
	byName := func(a, b memberIssue) int { return cmp.Compare(a.Name, b.Name) }
	slices.SortFunc(p.StalePeers, byName)
	slices.SortFunc(p.UpstreamDown, byName)
	for _, sv := range sites {
		slices.SortFunc(sv.Members, func(a, b memberView) int { return cmp.Compare(a.Name, b.Name) })
		p.Sites = append(p.Sites, *sv)
	}
	// This DP's site first, then by name.
	slices.SortFunc(p.Sites, func(a, b siteView) int {
		if a.Local != b.Local {
			if a.Local {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
	p.SiteCount = len(p.Sites)

	if t := in.status.GetTraffic(); t != nil {
		tt := trafficTotals{t.GetUpstreamBytes(), t.GetPeerBytes(), t.GetServedBytes()}
		p.Delivered, p.Internet = tt.delivered(), tt.internet()
		if p.Delivered > 0 {
			p.HasRatio = true
			p.Saved = max(0, 1-float64(p.Internet)/float64(p.Delivered))
			if p.Internet > 0 {
				p.Factor = float64(p.Delivered) / float64(p.Internet)
			}
		}
	}
	p.Chart = buildChart(append(slices.Clip(in.samples), trafficSample{in.now, in.totals}))
	p.Endpoints = buildEndpoints(in)
	return p
}

func buildEndpoints(in pageInput) endpointsView {
	ev := endpointsView{Reported: in.counts != nil, ListKnown: in.outdatedKnown}
	if ev.Reported {
		for _, a := range endpointAgeBuckets {
			ev.Buckets = append(ev.Buckets, bucketView{Age: a, Label: ageLabels[a], Count: in.counts.Ages[a], Level: ageLevel(a)})
			ev.Total += in.counts.Ages[a]
		}
		for _, r := range []string{"stale", "failed", "held"} {
			if n := in.counts.Results[r]; n > 0 {
				level := "bad"
				if r == "held" {
					level = "warn"
				}
				ev.Problems = append(ev.Problems, bucketView{Age: r, Label: resultLabels[r], Count: n, Level: level})
			}
		}
	}
	eps := slices.Clone(in.outdated)
	rank := func(age string) int { return slices.Index(endpointAgeBuckets, age) }
	// Furthest behind first, then by host name.
	slices.SortFunc(eps, func(a, b *pb.EndpointInfo) int {
		if c := cmp.Compare(rank(b.GetAge()), rank(a.GetAge())); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.GetStatus().GetHostname(), b.GetStatus().GetHostname()), cmp.Compare(a.GetStatus().GetId(), b.GetStatus().GetId()))
	})
	for i, e := range eps {
		if i == outdatedShown {
			ev.MoreOutdated = len(eps) - i
			break
		}
		st := e.GetStatus()
		ev.Outdated = append(ev.Outdated, outdatedView{
			ID: st.GetId(), Hostname: st.GetHostname(), Site: st.GetSite(), Product: st.GetProduct(),
			Version: st.GetVersion(), Age: ageLabels[e.GetAge()], Level: ageLevel(e.GetAge()), Reported: st.GetReported().AsTime(),
		})
	}
	return ev
}

// chartView is the traffic chart, drawn as inline SVG.
type chartView struct {
	Empty                  bool
	W, H                   int
	Left, Right, Top, Base float64
	DeliveredArea          string
	DeliveredLine          string
	InternetArea           string
	InternetLine           string
	YTicks, XTicks         []tick
	Since                  time.Time
	Delivered, Internet    uint64 // increase over the chart's span
}

type tick struct {
	Pos   float64
	Label string
}

// buildChart draws the cumulative bytes delivered and from the internet
// over the samples' span (which must be in time order, the current totals
// last).
func buildChart(samples []trafficSample) chartView {
	c := chartView{W: 1120, H: 230, Left: 70, Right: 1110, Top: 12, Base: 202}
	if len(samples) < 2 || !samples[len(samples)-1].at.After(samples[0].at) {
		c.Empty = true
		return c
	}
	if len(samples) > chartPoints {
		step := (len(samples) + chartPoints - 1) / chartPoints
		var thin []trafficSample
		for i := 0; i < len(samples)-1; i += step {
			thin = append(thin, samples[i])
		}
		samples = append(thin, samples[len(samples)-1])
	}
	first, last := samples[0], samples[len(samples)-1]
	c.Since = first.at
	// The chart starts at zero: what the cluster delivered and fetched
	// since the first sample.
	base := first.totals
	val := func(t trafficTotals) (float64, float64) {
		d := float64(t.delivered()) - float64(base.delivered())
		i := float64(t.internet()) - float64(base.internet())
		return max(d, 0), max(i, 0)
	}
	ld, li := val(last.totals)
	c.Delivered, c.Internet = uint64(ld), uint64(li)
	top := 0.0
	for _, s := range samples {
		d, i := val(s.totals)
		top = max(top, d, i)
	}
	step := niceStep(max(top, 1<<20) / 4)
	yMax := step * math.Max(1, math.Ceil(top/step))
	span := last.at.Sub(first.at).Seconds()
	x := func(t time.Time) float64 { return c.Left + (c.Right-c.Left)*t.Sub(first.at).Seconds()/span }
	y := func(v float64) float64 { return c.Base - (c.Base-c.Top)*v/yMax }
	var dl, il strings.Builder
	for k, s := range samples {
		d, i := val(s.totals)
		sep := " L"
		if k == 0 {
			sep = "M"
		}
		fmt.Fprintf(&dl, "%s%.1f,%.1f", sep, x(s.at), y(d))
		fmt.Fprintf(&il, "%s%.1f,%.1f", sep, x(s.at), y(i))
	}
	closeArea := fmt.Sprintf(" L%.1f,%.1f L%.1f,%.1f Z", c.Right, c.Base, c.Left, c.Base)
	c.DeliveredLine, c.InternetLine = dl.String(), il.String()
	c.DeliveredArea, c.InternetArea = c.DeliveredLine+closeArea, c.InternetLine+closeArea
	for v := 0.0; v <= yMax*1.0001; v += step {
		c.YTicks = append(c.YTicks, tick{y(v), formatBytes(uint64(v))})
	}
	layout := "15:04"
	if span < 300 {
		layout = "15:04:05"
	}
	for k := range 5 {
		t := first.at.Add(time.Duration(float64(k) / 4 * span * float64(time.Second)))
		if l := t.Format(layout); k == 0 || l != c.XTicks[len(c.XTicks)-1].Label {
			c.XTicks = append(c.XTicks, tick{x(t), l})
		}
	}
	return c
}

// niceStep rounds raw up to 1, 2 or 5 times a power of ten of a binary
// unit (KiB, MiB, GiB...), for axis ticks that read well.
func niceStep(raw float64) float64 {
	unit := 1.0
	for raw/unit >= 1000 {
		unit *= 1024
	}
	m := raw / unit
	for _, c := range []float64{1, 2, 5, 10, 20, 50, 100, 200, 500} {
		if m <= c {
			return c * unit
		}
	}
	return 1024 * unit
}

// formatBytes prints a byte count with a binary unit: "1.5 GiB".
func formatBytes(b uint64) string {
	const units = "KMGTPE"
	if b < 1024 {
		return fmt.Sprintf("%d B", b)
	}
	v, i := float64(b)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f %ciB", v, units[i])
	}
	return fmt.Sprintf("%.1f %ciB", v, units[i])
}
