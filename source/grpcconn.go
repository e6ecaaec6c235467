package source

import "google.golang.org/grpc"

// Conn returns the client connection g and its copies use, so that a
// caller can reach the DP's other gRPC services (AdminService) over the
// same connection. g's Close closes it.
func (g *GRPC) Conn() grpc.ClientConnInterface { return g.conn }
