package dpcachev1

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
)

// Transport sizes for blob streams, shared by DP servers and every client.
// gRPC's defaults (64 KiB windows, growing by BDP estimation) starve a LAN
// link; fixed large windows keep the pipe full.
const (
	// StreamWindow is one stream's flow-control window.
	StreamWindow = 16 << 20
	// ConnWindow is one connection's flow-control window.
	ConnWindow = 64 << 20
	// BufferSize is the transport's larger buffer: a server's writes, a
	// client's reads, the direction blob bytes flow.
	BufferSize = 1 << 20
	// smallBuffer is the buffer of the direction requests flow.
	smallBuffer = 64 << 10
	// MaxMessage bounds one message a client receives (a blob chunk or a
	// document).
	MaxMessage = 80 << 20
	// MaxRequest bounds one message a server receives (requests, reports).
	MaxRequest = 1 << 20
	// MaxStreams bounds the concurrent calls on one client connection: an
	// agent uses a handful, a peer DP a few dozen.
	MaxStreams = 256
)

// ServerOptions are the gRPC server options of a DP: the zero-copy blob
// codec, its buffer pool, and the windows and buffers above.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(Codec{}),
		experimental.BufferPool(BufferPool),
		grpc.InitialWindowSize(StreamWindow),
		grpc.InitialConnWindowSize(ConnWindow),
		grpc.ReadBufferSize(smallBuffer),
		grpc.WriteBufferSize(BufferSize),
		grpc.MaxRecvMsgSize(MaxRequest),
		grpc.MaxSendMsgSize(MaxMessage),
		grpc.MaxConcurrentStreams(MaxStreams),
		// Dead clients are found and their streams ended; clients may
		// ping at most every 10 s, with or without calls.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
}

// DialOptions are the options every dpcache client dials a DP with, over
// the given transport credentials (plaintext or TLS).
func DialOptions(creds credentials.TransportCredentials) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		experimental.WithBufferPool(BufferPool),
		grpc.WithInitialWindowSize(StreamWindow),
		grpc.WithInitialConnWindowSize(ConnWindow),
		grpc.WithReadBufferSize(BufferSize),
		grpc.WithWriteBufferSize(smallBuffer),
		// While a call is open, a DP that stops answering (frozen, or cut
		// off without a reset) is found within 40 s and the call fails,
		// so a silent WatchLatest or blob stream moves to the next
		// source. 30 s respects the servers' 10 s enforcement minimum.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(Codec{}),
			grpc.MaxCallRecvMsgSize(MaxMessage),
		),
	}
}
