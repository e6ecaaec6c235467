package node

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// stopGrace bounds how long a stopping DP lets the RPCs and HTTP requests
// in progress finish before it cuts them. An idle DP does not wait for it.
const stopGrace = 5 * time.Second

// openingConns holds the connections that have not started a request yet:
// gRPC connections still in their HTTP/2 (or TLS) handshake, and HTTP
// connections in http.StateNew. Neither server lets a stop skip them:
// grpc-go's Stop and GracefulStop wait for every handshake in progress (up
// to its 120s ConnectionTimeout), and http.Server.Shutdown waits up to 5s
// for a new connection to send its request. A client that connects and
// sends nothing (a browser's speculative connection, a port scanner, a
// health probe that died) would hold up the stop that long. Nothing is lost
// by closing them: a client that was about to send its first request
// finds the DP gone, as it would a moment later.
//
// Safe for concurrent use.
type openingConns struct {
	mu      sync.Mutex
	conns   map[net.Conn]struct{} // guarded by mu
	aborted bool                  // guarded by mu; set by abort, never cleared
}

func newOpeningConns() *openingConns {
	return &openingConns{conns: make(map[net.Conn]struct{})}
}

// add records c as opening; after abort it closes c instead.
func (o *openingConns) add(c net.Conn) {
	o.mu.Lock()
	aborted := o.aborted
	if !aborted {
		o.conns[c] = struct{}{}
	}
	o.mu.Unlock()
	if aborted {
		c.Close()
	}
}

// started forgets c: it carries requests now, or it is closed.
func (o *openingConns) started(c net.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.conns, c)
}

// abort closes every opening connection, and from now on every connection
// added.
func (o *openingConns) abort() {
	o.mu.Lock()
	o.aborted = true
	conns := o.conns
	o.conns = make(map[net.Conn]struct{})
	o.mu.Unlock()
	for c := range conns { // outside mu: a conn's Close calls started
		c.Close()
	}
}

// connState is an http.Server.ConnState hook that tracks new connections.
func (o *openingConns) connState(c net.Conn, s http.ConnState) {
	if s == http.StateNew {
		o.add(c)
		return
	}
	o.started(c)
}

// handshakeListener is a gRPC listener whose accepted connections count as
// opening until grpc-go clears the handshake deadline it sets on each one
// (server.go handleRawConn: SetDeadline(now+ConnectionTimeout), handshake,
// SetDeadline(time.Time{})).
type handshakeListener struct {
	net.Listener
	opening *openingConns
}

func (l handshakeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	hc := &handshakeConn{Conn: c, opening: l.opening}
	l.opening.add(hc)
	return hc, nil
}

type handshakeConn struct {
	net.Conn
	opening *openingConns
}

// SetDeadline marks the handshake done when grpc-go clears the deadline.
func (c *handshakeConn) SetDeadline(t time.Time) error {
	if t.IsZero() {
		c.opening.started(c)
	}
	return c.Conn.SetDeadline(t)
}

func (c *handshakeConn) Close() error {
	c.opening.started(c)
	return c.Conn.Close()
}

// stopServers stops the gRPC and HTTP servers together: new connections
// are refused, connections that have not started a request are closed at
// once, and requests in progress get stopGrace to finish before they are
// cut. httpSrv may be nil.
func stopServers(grpcSrv *grpc.Server, grpcOpening *openingConns, httpSrv *http.Server, httpOpening *openingConns) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		stopped := make(chan struct{})
		go func() { grpcSrv.GracefulStop(); close(stopped) }()
		grpcOpening.abort() // a connection accepted later is closed by add
		select {
		case <-stopped:
		case <-time.After(stopGrace):
			grpcSrv.Stop()
			<-stopped
		}
	}()
	if httpSrv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- httpSrv.Shutdown(ctx) }()
			httpOpening.abort()
			if err := <-done; err != nil {
				httpSrv.Close() // the grace is over: cut what remains
			}
		}()
	}
	wg.Wait()
}
