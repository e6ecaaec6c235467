package node

import (
	"io"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/pki"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

func TestAuthorizer_Rules(t *testing.T) {
	t.Parallel()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	member := net.ParseIP("10.0.0.2")
	mutual := &authorizer{mutual: true, log: quiet}
	open := &authorizer{memberIPs: func() []net.IP { return []net.IP{member} }, log: quiet}
	addr := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }
	cert := func(name string, role pki.Role) caller {
		return caller{addr: addr("10.0.0.9"), cert: true, name: name, role: role}
	}
	const (
		latest = pb.DistributionService_GetLatest_FullMethodName
		report = pb.DistributionService_ReportStatus_FullMethodName
		blobs  = pb.DistributionService_ReadBlobs_FullMethodName
		admin  = pb.AdminService_GetStatus_FullMethodName
		health = "/grpc.health.v1.Health/Check"
		refl   = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	)
	fwd := &pb.GetLatestRequest{Product: "av", Forwarded: true}
	plain := &pb.GetLatestRequest{Product: "av"}
	batch := &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{{Sha256: "ab"}}}
	fwdBatch := &pb.ReadBlobsRequest{Blobs: []*pb.BlobRef{{Sha256: "ab"}}, Forwarded: true}
	reportAs := func(id string) *pb.ReportStatusRequest {
		return &pb.ReportStatusRequest{Status: &pb.EndpointStatus{Id: id, Product: "av"}}
	}
	for _, tc := range []struct {
		name   string
		a      *authorizer
		c      caller
		method string
		req    any
		want   codes.Code
	}{
		{"endpoint reads", mutual, cert("pc-1", pki.RoleEndpoint), latest, plain, codes.OK},
		{"endpoint reads blobs", mutual, cert("pc-1", pki.RoleEndpoint), blobs, batch, codes.OK},
		{"endpoint forwards blobs", mutual, cert("pc-1", pki.RoleEndpoint), blobs, fwdBatch, codes.PermissionDenied},
		{"dp forwards blobs", mutual, cert("dp-2", pki.RoleDP), blobs, fwdBatch, codes.OK},
		{"admin reads blobs", mutual, cert("alice", pki.RoleAdmin), blobs, batch, codes.PermissionDenied},
		{"open: stranger forwards blobs", open, caller{addr: addr("10.0.0.9")}, blobs, fwdBatch, codes.PermissionDenied},
		{"endpoint forwards", mutual, cert("pc-1", pki.RoleEndpoint), latest, fwd, codes.PermissionDenied},
		{"endpoint reports as itself", mutual, cert("pc-1", pki.RoleEndpoint), report, reportAs("pc-1"), codes.OK},
		{"endpoint reports as another", mutual, cert("pc-1", pki.RoleEndpoint), report, reportAs("pc-2"), codes.PermissionDenied},
		{"endpoint admin", mutual, cert("pc-1", pki.RoleEndpoint), admin, nil, codes.PermissionDenied},
		{"endpoint reflection", mutual, cert("pc-1", pki.RoleEndpoint), refl, nil, codes.PermissionDenied},
		{"endpoint health", mutual, cert("pc-1", pki.RoleEndpoint), health, nil, codes.OK},
		{"dp forwards", mutual, cert("dp-2", pki.RoleDP), latest, fwd, codes.OK},
		{"dp admin", mutual, cert("dp-2", pki.RoleDP), admin, nil, codes.OK},
		{"admin admin", mutual, cert("alice", pki.RoleAdmin), admin, nil, codes.OK},
		{"admin reflection", mutual, cert("alice", pki.RoleAdmin), refl, nil, codes.OK},
		{"admin reads", mutual, cert("alice", pki.RoleAdmin), latest, plain, codes.PermissionDenied},
		{"no role", mutual, cert("x", ""), latest, plain, codes.PermissionDenied},
		{"no certificate", mutual, caller{addr: addr("127.0.0.1")}, latest, plain, codes.Unauthenticated},
		{"no certificate, health", mutual, caller{addr: addr("10.0.0.9")}, health, nil, codes.OK},
		{"open: anyone reads", open, caller{addr: addr("10.0.0.9")}, latest, plain, codes.OK},
		{"open: anyone reports", open, caller{addr: addr("10.0.0.9")}, report, reportAs("any"), codes.OK},
		{"open: stranger admin", open, caller{addr: addr("10.0.0.9")}, admin, nil, codes.PermissionDenied},
		{"open: stranger forwards", open, caller{addr: addr("10.0.0.9")}, latest, fwd, codes.PermissionDenied},
		{"open: stranger reflection", open, caller{addr: addr("10.0.0.9")}, refl, nil, codes.PermissionDenied},
		{"open: loopback admin", open, caller{addr: addr("127.0.0.1")}, admin, nil, codes.OK},
		{"open: ::1 forwards", open, caller{addr: addr("::1")}, latest, fwd, codes.OK},
		{"open: member admin", open, caller{addr: addr("10.0.0.2")}, admin, nil, codes.OK},
		{"open: member forwards", open, caller{addr: addr("10.0.0.2")}, latest, fwd, codes.OK},
	} {
		err := tc.a.method(tc.c, tc.method)
		if err == nil && tc.req != nil {
			err = tc.a.request(tc.c, tc.req)
		}
		if got := status.Code(err); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
