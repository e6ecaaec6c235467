package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/dpcache/dpcache/pki"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// Who may ask a DP what (DESIGN.md, "Trust on a hostile network"), checked
// in interceptors before any handler runs.
//
// With client certificates (Config.ClientCAFile), a gRPC call without a
// certificate is Unauthenticated, health checks excepted (one of another
// CA fails the TLS handshake), and the certificate's role decides:
//
//	                         endpoint  dp   admin
//	DistributionService      yes       yes  no
//	  forwarded requests     no        yes  no
//	  ReportStatus           own name  own name
//	AdminService             no        yes  yes
//	reflection               no        yes  yes
//	health                   yes       yes  yes
//	HTTP /repo/              yes       yes  no
//	HTTP / and /metrics      no        no   yes
//
// A certificate may report only under its own name (its common name) as
// the endpoint id. Anything else is PermissionDenied (HTTP 403); an HTTP
// request without a certificate is 401. /healthz and /readyz are always
// open.
//
// Without client certificates, AdminService, reflection and forwarded
// requests are honoured only from loopback and from the IP addresses the
// cluster's live members gossip from; the rest is open, as is HTTP.

// caller is who sent a request.
type caller struct {
	addr    net.Addr
	cert    bool // a verified client certificate was presented
	name    string
	role    pki.Role
	badCert error // why the certificate presented is not valid here
}

func (c caller) String() string {
	if !c.cert {
		return "a client without certificate"
	}
	if c.role == "" {
		return fmt.Sprintf("the certificate of %q (no role)", c.name)
	}
	return fmt.Sprintf("the %s certificate of %q", c.role, c.name)
}

// grpcCaller reads the caller of a gRPC request from its context and, with
// client certificates, verifies the one it presented.
func (a *authorizer) grpcCaller(ctx context.Context) caller {
	var c caller
	p, ok := peer.FromContext(ctx)
	if !ok {
		return c
	}
	c.addr = p.Addr
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || !a.mutual || len(info.State.PeerCertificates) == 0 {
		return c
	}
	leaf, err := a.verify(info.State.PeerCertificates)
	if err != nil {
		c.badCert = err
		return c
	}
	c.cert = true
	c.name, c.role = pki.Identify(leaf)
	return c
}

// authorizer decides who may ask what.
type authorizer struct {
	// mutual: client certificates are required (gRPC) and roles decide.
	mutual bool
	// memberIPs returns the IP addresses of the cluster's live members
	// (nil without a cluster); called per request that needs it.
	memberIPs func() []net.IP
	// verify verifies a client's certificate chain (when mutual).
	verify func([]*x509.Certificate) (*x509.Certificate, error)
	log    *slog.Logger
}

// newAuthorizer returns the DP's authorizer.
func (n *Node) newAuthorizer() *authorizer {
	a := &authorizer{mutual: n.tls.mutual(), memberIPs: n.memberIPs, log: n.log}
	if a.mutual {
		a.verify = n.tls.verifyClient
	}
	return a
}

// memberIPs returns the IP addresses of the cluster's live members.
func (n *Node) memberIPs() []net.IP {
	if n.gossip == nil {
		return nil
	}
	var out []net.IP
	for _, m := range n.gossip.Live("") {
		// The gossip address, and the advertised gRPC host when it is an
		// IP (a host with several interfaces may dial from that one).
		for _, addr := range []string{m.Addr, m.GRPCAddr} {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				continue
			}
			if ip := net.ParseIP(host); ip != nil {
				out = append(out, ip)
			}
		}
	}
	return out
}

// trustedHost reports whether addr is loopback or a member of the cluster.
func (a *authorizer) trustedHost(addr net.Addr) bool {
	var ip net.IP
	switch v := addr.(type) {
	case *net.TCPAddr:
		ip = v.IP
	default:
		if addr == nil {
			return false
		}
		host, _, err := net.SplitHostPort(addr.String())
		if err != nil {
			return false
		}
		ip = net.ParseIP(host)
	}
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	for _, m := range a.memberIPs() {
		if m.Equal(ip) {
			return true
		}
	}
	return false
}

const (
	distributionPrefix = "/" + "dpcache.v1.DistributionService" + "/"
	adminPrefix        = "/" + "dpcache.v1.AdminService" + "/"
	healthPrefix       = "/grpc.health.v1.Health/"
	reflectionPrefix   = "/grpc.reflection."
)

// method decides whether c may call method (before its request is read).
func (a *authorizer) method(c caller, method string) error {
	if strings.HasPrefix(method, healthPrefix) {
		return nil
	}
	if a.mutual && c.badCert != nil {
		return status.Errorf(codes.Unauthenticated, "this DP refuses %v (it takes certificates of its --client-ca)", c.badCert)
	}
	if a.mutual && !c.cert {
		return status.Error(codes.Unauthenticated, "this DP requires a client certificate signed by its --client-ca: give --cert and --key")
	}
	switch {
	case strings.HasPrefix(method, adminPrefix), strings.HasPrefix(method, reflectionPrefix):
		what := "AdminService"
		if strings.HasPrefix(method, reflectionPrefix) {
			what = "reflection"
		}
		if a.mutual {
			if c.role == pki.RoleAdmin || c.role == pki.RoleDP {
				return nil
			}
			return status.Errorf(codes.PermissionDenied, "%s may not call %s: it takes an admin or dp certificate", c, what)
		}
		if a.trustedHost(c.addr) {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "%s answers only loopback and the cluster's DPs, not %s: run the command on a DP, or give the DPs --client-ca and use an admin certificate", what, hostOf(c.addr))
	case strings.HasPrefix(method, distributionPrefix):
		if !a.mutual || c.role == pki.RoleEndpoint || c.role == pki.RoleDP {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "%s may not call DistributionService: it takes an endpoint or dp certificate", c)
	}
	if a.mutual {
		return status.Errorf(codes.PermissionDenied, "%s may not call %s", c, method)
	}
	return nil
}

// forwardedRequest is a request that may carry the peer-only forwarded
// mark.
type forwardedRequest interface{ GetForwarded() bool }

// request decides whether c may send req, once it is read.
func (a *authorizer) request(c caller, req any) error {
	if f, ok := req.(forwardedRequest); ok && f.GetForwarded() {
		if a.mutual && c.role != pki.RoleDP {
			return status.Errorf(codes.PermissionDenied, "%s may not send a forwarded (peer) request: it takes a dp certificate", c)
		}
		if !a.mutual && !a.trustedHost(c.addr) {
			return status.Errorf(codes.PermissionDenied, "forwarded (peer) requests are taken only from the cluster's DPs, not %s", hostOf(c.addr))
		}
	}
	if r, ok := req.(*pb.ReportStatusRequest); ok && c.cert {
		if id := r.GetStatus().GetId(); id != c.name {
			return status.Errorf(codes.PermissionDenied, "%s may report only under its own name as the endpoint id, not %q", c, id)
		}
	}
	return nil
}

// refused logs a refusal at debug (a probe of the LAN must not flood the
// log) and returns err.
func (a *authorizer) refused(c caller, method string, err error) error {
	a.log.Debug("request refused", "request", method, "from", hostOf(c.addr), "caller", c.String(), "err", err)
	return err
}

func hostOf(addr net.Addr) string {
	if addr == nil {
		return "an unknown address"
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}

// serverOptions returns the gRPC interceptors that apply the rules above.
func (a *authorizer) serverOptions() []grpc.ServerOption {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c := a.grpcCaller(ctx)
		if err := a.method(c, info.FullMethod); err != nil {
			return nil, a.refused(c, info.FullMethod, err)
		}
		if err := a.request(c, req); err != nil {
			return nil, a.refused(c, info.FullMethod, err)
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		c := a.grpcCaller(ss.Context())
		if err := a.method(c, info.FullMethod); err != nil {
			return a.refused(c, info.FullMethod, err)
		}
		return handler(srv, &authStream{ServerStream: ss, check: func(m any) error {
			if err := a.request(c, m); err != nil {
				return a.refused(c, info.FullMethod, err)
			}
			return nil
		}})
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

// authStream checks each request message a stream receives.
type authStream struct {
	grpc.ServerStream
	check func(any) error
}

func (s *authStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.check(m)
}

// http wraps the DP's HTTP handler with the rules above.
func (a *authorizer) http(h http.Handler) http.Handler {
	if a == nil || !a.mutual {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allowed []pki.Role
		switch {
		case r.URL.Path == "/healthz" || r.URL.Path == "/readyz":
			h.ServeHTTP(w, r)
			return
		case strings.HasPrefix(r.URL.Path, repoPrefix):
			allowed = []pki.Role{pki.RoleEndpoint, pki.RoleDP}
		case r.URL.Path == "/" || r.URL.Path == "/metrics":
			allowed = []pki.Role{pki.RoleAdmin}
		default:
			h.ServeHTTP(w, r) // nothing there: 404 or 405
			return
		}
		c := caller{}
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
			c.cert = true
			c.name, c.role = pki.Identify(r.TLS.VerifiedChains[0][0])
		}
		if !c.cert {
			http.Error(w, "a client certificate signed by this DP's --client-ca is required for "+r.URL.Path, http.StatusUnauthorized)
			return
		}
		for _, role := range allowed {
			if c.role == role {
				h.ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, fmt.Sprintf("%s may not read %s", c, r.URL.Path), http.StatusForbidden)
	})
}
