// Package adminclient is the client of a distribution point's
// AdminService, shared by the command line (dpcache status, endpoints,
// prefetch) and by a DP asking its peers for their own figures.
//
// # Concurrency
//
// A Client is safe for concurrent use, as gRPC clients are; it holds no
// lock of its own.
package adminclient

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// Client is a DP's AdminService: the generated client's calls, plus the
// ones a DP makes of its peers.
type Client struct {
	pb.AdminServiceClient
	conn *grpc.ClientConn // owned (Dial); nil over a shared connection
}

// Dial returns a Client of the DP at addr (host:port, plain gRPC) over a
// connection of its own, made on first use; Close closes it.
func Dial(addr string) (*Client, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("DP %q: %w", addr, err)
	}
	return &Client{AdminServiceClient: pb.NewAdminServiceClient(conn), conn: conn}, nil
}

// New returns a Client over a connection the caller owns (a DP's
// connection to a peer); Close does not close it.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{AdminServiceClient: pb.NewAdminServiceClient(conn)}
}

// Close closes the connection Dial made. Safe to call twice.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// ErrNoMember: a DP answered its own status with no member.
var ErrNoMember = errors.New("the DP answered with no member")

// Self returns the DP's own figures (GetStatus, local only): traffic, cache
// use and versions held, without asking its peers.
func (c *Client) Self(ctx context.Context) (*pb.MemberStatus, error) {
	resp, err := c.GetStatus(ctx, &pb.GetStatusRequest{LocalOnly: true})
	if err != nil {
		return nil, err
	}
	if len(resp.GetMembers()) != 1 {
		return nil, ErrNoMember
	}
	return resp.GetMembers()[0], nil
}

// OwnReports returns the endpoint reports the DP keeps itself
// (ListEndpoints, local only), without asking its peers.
func (c *Client) OwnReports(ctx context.Context) ([]*pb.EndpointStatus, error) {
	resp, err := c.ListEndpoints(ctx, &pb.ListEndpointsRequest{LocalOnly: true})
	if err != nil {
		return nil, err
	}
	out := make([]*pb.EndpointStatus, 0, len(resp.GetEndpoints()))
	for _, e := range resp.GetEndpoints() {
		if st := e.GetStatus(); st != nil {
			out = append(out, st)
		}
	}
	return out, nil
}
