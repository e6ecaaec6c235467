package gossip_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/dpcache/dpcache/gossip"
)

// Two DPs of one site on loopback: the second joins the first, announces
// that it holds serial 7 of a product, and the first learns it.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := func(name string, join ...string) (*gossip.Gossip, chan error) {
		cfg := gossip.DefaultConfig()
		cfg.Name, cfg.Site, cfg.GRPCAddr = name, "paris", "127.0.0.1:9443"
		cfg.BindAddr = "127.0.0.1:0" // a free port; LocalAddr tells which
		cfg.Join = join
		cfg.LeaveTimeout = time.Second
		cfg.Logger = slog.New(slog.DiscardHandler)
		g, err := gossip.New(cfg)
		if err != nil {
			panic(err)
		}
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()
		return g, done
	}
	a, aDone := start("dp-a")
	b, bDone := start("dp-b", a.LocalAddr())

	b.SetVersions("kes-db", []uint64{7})
	for {
		changed := a.Changed()
		if holders := a.Holders("paris", "kes-db", 7); len(holders) > 0 {
			fmt.Println("dp-a learnt that", holders[0].Name, "holds kes-db serial 7")
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			fmt.Println("timed out")
			return
		}
	}
	fmt.Println("owners of a blob, in failover order:", len(a.Owners("paris", "sha256-of-a-blob")))

	cancel() // both leave and stop
	<-aDone
	<-bDone
	// Output:
	// dp-a learnt that dp-b holds kes-db serial 7
	// owners of a blob, in failover order: 2
}
