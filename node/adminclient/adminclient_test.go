package adminclient

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAdmin answers with fixed figures and remembers LocalOnly.
type fakeAdmin struct {
	pb.UnimplementedAdminServiceServer
	mu      sync.Mutex // protects members
	members []*pb.MemberStatus
}

func (f *fakeAdmin) GetStatus(_ context.Context, req *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	if !req.GetLocalOnly() {
		return nil, errors.New("want local only")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return &pb.GetStatusResponse{Members: f.members}, nil
}

func (f *fakeAdmin) ListEndpoints(_ context.Context, req *pb.ListEndpointsRequest) (*pb.ListEndpointsResponse, error) {
	if !req.GetLocalOnly() {
		return nil, errors.New("want local only")
	}
	return &pb.ListEndpointsResponse{Endpoints: []*pb.EndpointInfo{{Status: &pb.EndpointStatus{Id: "ep-1"}}, {}}}, nil
}

func TestClient_SelfAndOwnReports(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeAdmin{members: []*pb.MemberStatus{{Name: "dp-1"}}}
	srv := grpc.NewServer()
	pb.RegisterAdminServiceServer(srv, fake)
	go srv.Serve(lis)
	defer srv.Stop()
	c, err := Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m, err := c.Self(ctx); err != nil || m.GetName() != "dp-1" {
		t.Fatalf("Self = %v, %v; want dp-1", m, err)
	}
	if sts, err := c.OwnReports(ctx); err != nil || len(sts) != 1 || sts[0].GetId() != "ep-1" {
		t.Fatalf("OwnReports = %v, %v; want the one report", sts, err)
	}
	fake.mu.Lock()
	fake.members = nil
	fake.mu.Unlock()
	if _, err := c.Self(ctx); !errors.Is(err, ErrNoMember) {
		t.Fatalf("Self with no member: %v, want ErrNoMember", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
