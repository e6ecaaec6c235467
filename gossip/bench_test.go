package gossip

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// BenchmarkVersionSpread: 20 in-process DPs with memberlist's LAN timers
// (gossip every 200ms to 3 nodes, probe every 1s, push/pull every 30s).
// Each iteration one DP announces a new serial with SetVersions; the time
// until all 20 report it in Holders is measured. Reported: mean and worst
// spread in ms, and the mean against the 2 s target (ratio_to_target ≤ 1 is
// good).
func BenchmarkVersionSpread(b *testing.B) {
	const n = 20
	const target = 2 * time.Second
	nodes := make([]*testNode, 0, n)
	for i := range n {
		cfg := testConfig(fmt.Sprintf("bench%02d", i), "site-a")
		cfg.Memberlist = memberlist.DefaultLANConfig()
		cfg.RejoinInterval = 0 // default
		if i > 0 {
			cfg.Join = []string{nodes[0].LocalAddr()}
		}
		nodes = append(nodes, startNode(b, cfg))
	}
	waitAlive(b, nodes, nodes, 60*time.Second)

	var total, worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src := nodes[i%n]
		serial := uint64(i + 1)
		start := time.Now()
		src.SetVersions("kes-db", []uint64{serial})
		for _, o := range nodes {
			for {
				ch := o.Changed()
				if len(o.Holders("site-a", "kes-db", serial)) > 0 {
					break
				}
				select {
				case <-ch:
				case <-time.After(30 * time.Second):
					b.Fatalf("%s does not know serial %d after 30s", o.cfg.Name, serial)
				}
			}
		}
		d := time.Since(start)
		total += d
		worst = max(worst, d)
	}
	b.StopTimer()
	mean := total / time.Duration(b.N)
	b.ReportMetric(float64(mean.Microseconds())/1000, "ms/spread")
	b.ReportMetric(float64(worst.Microseconds())/1000, "ms_worst")
	b.ReportMetric(float64(mean)/float64(target), "ratio_to_target")
}
