package e2e

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/e2e/testenv"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// SIGTERM to an idle DP that a watcher streams from, and that a browser
// and a client still in its handshake are connected to (they have sent
// nothing): the DP ends the watch with Unavailable, exits 0, and its peer
// reports it "left", not "dead". The stop time is logged, not asserted.
func TestE2E_SIGTERMStopsIdleDPAndLeaves(t *testing.T) {
	t.Parallel()
	_, k, _, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 64 << 10})
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{})
	dps := startCluster(t, origin.URL, k.pub, []dpSpec{{"dp-1", "branch"}, {"dp-2", "branch"}}, "--product", product)
	victim, peer := dps[0], dps[1]
	waitDetail(t, eventually, "both DPs to hold 1.0 (then they are idle)", func() (bool, string) {
		st, err := statusOf(t, peer.GRPC)
		if err != nil {
			return false, err.Error()
		}
		for _, dp := range dps {
			if m, ok := st.member(dp.Name); !ok || !m.holds(1) {
				return false, fmt.Sprintf("%+v", st.Members)
			}
		}
		return true, ""
	})

	// A watcher whose stream is open: it has received the current latest.
	conn, err := grpc.NewClient("passthrough:///"+victim.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	watch, err := pb.NewDistributionServiceClient(conn).WatchLatest(ctx, &pb.WatchLatestRequest{Product: product})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("WatchLatest: first message: %v", err)
	}
	// Connections that never send a byte, on both ports.
	for _, addr := range []string{victim.GRPC, victim.HTTP} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}

	start := time.Now()
	if err := victim.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = victim.proc.Wait(ctx)
	t.Logf("the idle DP stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("DP after SIGTERM: %v, want exit 0\nstderr:\n%s", err, victim.proc.Stderr())
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("WatchLatest after the DP stopped: %v, want Unavailable", err)
	}
	waitDetail(t, eventually, "dp-2 to see dp-1 left", func() (bool, string) {
		st, err := statusOf(t, peer.GRPC)
		if err != nil {
			return false, err.Error()
		}
		m, ok := st.member(victim.Name)
		if ok && m.State == "dead" {
			t.Fatalf("dp-2 sees dp-1 dead, want left: %+v", st.Members)
		}
		return ok && m.State == "left", fmt.Sprintf("%+v", st.Members)
	})
}
