package node

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/source"
)

// peerPool holds one gRPC connection per peer DP, made on first use and
// closed with the node; the DistributionService source and the
// AdminService client of a peer share it.
type peerPool struct {
	opts source.Options // for the peers' sources (no proxy: peers are on the LAN)
	// dial makes a peer's client: over TLS when the DP runs TLS.
	dial func(addr string, opts source.Options) (*source.GRPC, error)

	mu      sync.Mutex              // protects the fields below
	clients map[string]*source.GRPC // by gRPC address
	closed  bool
}

// newPeerPool dials peers with opts, over TLS when useTLS (opts.TLSConfig
// then holds the DP's identity and how peers are verified).
func newPeerPool(opts source.Options, useTLS bool) *peerPool {
	opts.Proxy = nil // peers are on the LAN
	dial := source.NewGRPC
	if useTLS {
		dial = source.NewGRPCTLS
	}
	return &peerPool{opts: opts, dial: dial, clients: map[string]*source.GRPC{}}
}

// get returns the client of the peer at addr, or nil when it cannot be
// made or the pool is closed.
func (p *peerPool) get(addr string) *source.GRPC {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[addr]; ok {
		return c
	}
	if p.closed {
		return nil
	}
	c, err := p.dial(addr, p.opts)
	if err != nil {
		return nil
	}
	p.clients[addr] = c
	return c
}

// admin returns the client of the peer at addr for its AdminService (the
// same connection serves its blobs).
func (p *peerPool) admin(addr string) (*source.GRPC, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return nil, status.Error(codes.Unavailable, "the DP is shutting down")
	}
	c := p.get(addr)
	if c == nil {
		return nil, fmt.Errorf("peer %s: %w: cannot make a client", addr, ErrUnavailable)
	}
	return c, nil
}

// close closes every connection; later gets return nil. Safe to call twice.
func (p *peerPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.clients {
		c.Close()
	}
	clear(p.clients)
}
