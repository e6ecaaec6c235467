package node

import (
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dpcache/dpcache/e2e/testenv"
)

func (o *openingConns) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.conns)
}

// Connections that never send a byte do not hold up a stop; a gRPC
// connection counts as opening only until its handshake is done.
func TestStopServers_SilentConnections(t *testing.T) {
	t.Parallel()
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcOpening, httpOpening := newOpeningConns(), newOpeningConns()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	hs := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: time.Minute, ConnState: httpOpening.connState}
	served := make(chan error, 2)
	go func() { served <- gs.Serve(handshakeListener{grpcLis, grpcOpening}) }()
	go func() { served <- hs.Serve(httpLis) }()

	conn, err := grpc.NewClient("passthrough:///"+grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := grpcOpening.len(); n != 0 {
		t.Fatalf("%d gRPC connections opening after a call, want 0 (did grpc-go stop clearing the handshake deadline?)", n)
	}
	var silent []net.Conn
	for _, addr := range []string{grpcLis.Addr().String(), httpLis.Addr().String()} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	testenv.WaitFor(t, 10*time.Second, "the silent connections accepted", func() bool {
		return grpcOpening.len() == 1 && httpOpening.len() == 1
	})

	stopped := make(chan struct{})
	go func() { stopServers(gs, grpcOpening, hs, httpOpening); close(stopped) }()
	select {
	case <-stopped:
	case <-testCtx(t).Done():
		t.Fatal("stopServers waits for connections that sent nothing")
	}
	for range 2 {
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("silent connection to %s: %v, want closed by the server", c.RemoteAddr(), err)
		}
	}
}
