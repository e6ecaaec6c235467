package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
)

// sitePKI is a CA made by `dpcache ca init` and the certificates `dpcache
// ca issue` made with it.
type sitePKI struct {
	dir  string // the CA's directory
	ca   string // dir/ca.pem
	work string
}

func newSitePKI(t *testing.T, work, name string) *sitePKI {
	t.Helper()
	p := &sitePKI{dir: filepath.Join(work, name), work: work}
	mustRun(t, "ca", "init", "--dir", p.dir)
	p.ca = filepath.Join(p.dir, "ca.pem")
	return p
}

// certPair is a certificate's files.
type certPair struct{ cert, key string }

// flags are the client flags presenting the pair and trusting ca.
func (c certPair) flags(ca string) []string {
	return []string{"--ca", ca, "--cert", c.cert, "--key", c.key}
}

// issue runs `dpcache ca issue` into the PKI's directory.
func (p *sitePKI) issue(t *testing.T, name, role string, hosts ...string) certPair {
	t.Helper()
	prefix := filepath.Join(p.dir, role+"-"+name)
	args := []string{"ca", "issue", "--dir", p.dir, "--name", name, "--role", role, "-o", prefix}
	if len(hosts) > 0 {
		args = append(args, "--host", strings.Join(hosts, ","))
	}
	mustRun(t, args...)
	return certPair{prefix + ".pem", prefix + ".key"}
}

// tlsNodeFlags are a DP's flags for the certificate pair and client CA.
func tlsNodeFlags(c certPair, clientCA string) []string {
	return []string{"--tls-cert", c.cert, "--tls-key", c.key, "--client-ca", clientCA}
}

// tlsDP is a DP with mTLS in front of a published repository, the CA of
// its site, and an admin's and an endpoint's certificates from it.
type tlsDP struct {
	*dpNode
	site            *sitePKI
	admin, endpoint certPair
}

// startTLSDP publishes version 1.0 of product and starts a DP with
// --tls-cert and --client-ca in front of it.
func startTLSDP(t *testing.T) *tlsDP {
	t.Helper()
	work, k, _, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 16 << 10})
	site := newSitePKI(t, work, "ca")
	d := &tlsDP{site: site, admin: site.issue(t, "alice", "admin"), endpoint: site.issue(t, "pc-1", "endpoint")}
	d.dpNode = startNode(t, repo, k.pub, tlsNodeFlags(site.issue(t, "dp-1", "dp", "127.0.0.1"), site.ca)...)
	return d
}

// grpcClient dials addr over TLS with the pair (none: no certificate).
func grpcClient(t *testing.T, addr, ca string, c *certPair) *grpc.ClientConn {
	t.Helper()
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if c != nil {
		kp, err := tls.LoadX509KeyPair(c.cert, c.key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// servedSerial returns the serial number of the certificate served on addr.
func servedSerial(addr string) (*big.Int, error) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// waitTLSMembers waits until every DP lists all of them alive, asked with
// an admin certificate.
func waitTLSMembers(t *testing.T, dps []*clusterDP, ca string, admin certPair) {
	t.Helper()
	for _, obs := range dps {
		waitDetail(t, eventually, "DP "+obs.Name+" to see every DP alive over TLS", func() (bool, string) {
			r := dpcache(t, append([]string{"status", "--node", "grpcs://" + obs.GRPC, "--json"}, admin.flags(ca)...)...)
			if r.code != 0 {
				return false, r.String()
			}
			st := decodeStatus(t, []byte(r.stdout))
			alive := 0
			for _, m := range st.Members {
				if m.State == "alive" {
					alive++
				}
			}
			return alive == len(dps), r.stdout
		})
	}
}

// TestE2E_TLS_Cluster: three DPs with mTLS; endpoints update over grpcs://
// from one DP and from another that takes the blobs from its peer over
// TLS; a client without a certificate, with one of another CA or of the
// wrong role is refused with one clear line and nothing changes; an
// endpoint certificate cannot report under another id nor call
// AdminService; a DP whose certificate comes from another CA is refused
// by its peers.
func TestE2E_TLS_Cluster(t *testing.T) {
	t.Parallel()
	work, k, src, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 256 << 10, "modules/engine.bin": 64 << 10})

	site := newSitePKI(t, work, "ca")
	admin := site.issue(t, "alice", "admin")
	pc1 := site.issue(t, "pc-1", "endpoint")
	pc2 := site.issue(t, "pc-2", "endpoint")
	var dps []*clusterDP
	var join []string
	for _, name := range []string{"dp-1", "dp-2", "dp-3"} {
		dp := startClusterDP(t, name, "paris", repo, k.pub, join, tlsNodeFlags(site.issue(t, name, "dp", "127.0.0.1"), site.ca)...)
		dps = append(dps, dp)
		join = append(join, dp.Gossip)
	}
	waitTLSMembers(t, dps, site.ca, admin)

	// Endpoints update over grpcs:// with their certificates.
	ep1 := filepath.Join(work, "ep1")
	res := update(t, "grpcs://"+dps[0].GRPC, ep1, k.pub, pc1.flags(site.ca)...)
	if res.Status != "updated" || res.Source != "grpcs://"+dps[0].GRPC {
		t.Fatalf("update from dp-1: %+v", res)
	}
	checkTree(t, current(ep1), readTree(t, src))
	// Once dp-1 holds it whole, dp-2 serves pc-2 from its peer over TLS.
	waitDetail(t, eventually, "dp-2 to see dp-1 hold serial 1", func() (bool, string) {
		r := dpcache(t, append([]string{"status", "--node", "grpcs://" + dps[1].GRPC, "--json"}, admin.flags(site.ca)...)...)
		if r.code != 0 {
			return false, r.String()
		}
		m, _ := decodeStatus(t, []byte(r.stdout)).member("dp-1")
		return m.holds(1), r.stdout
	})
	ep2 := filepath.Join(work, "ep2")
	update(t, "grpcs://"+dps[1].GRPC, ep2, k.pub, pc2.flags(site.ca)...)
	checkTree(t, current(ep2), readTree(t, src))
	r := mustRun(t, append([]string{"status", "--node", "grpcs://" + dps[1].GRPC, "--json"}, admin.flags(site.ca)...)...)
	if st := decodeStatus(t, []byte(r.stdout)); st.Traffic.PeerBytes == 0 {
		t.Errorf("no byte went between peers over TLS: %s", r.stdout)
	}
	// Each endpoint reported under its certificate's name.
	r = mustRun(t, append([]string{"endpoints", "--node", "grpcs://" + dps[0].GRPC, "--json"}, admin.flags(site.ca)...)...)
	mustContain(t, r.stdout, `"id":"pc-1"`, `"id":"pc-2"`)

	// Refused clients: one line, the code, nothing installed.
	other := newSitePKI(t, work, "other-ca")
	stranger := other.issue(t, "pc-1", "endpoint")
	refusedDir := filepath.Join(work, "refused")
	for _, tc := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"no certificate", []string{"--ca", site.ca}, "Unauthenticated"},
		{"another CA", []string{"--ca", site.ca, "--cert", stranger.cert, "--key", stranger.key}, "Unauthenticated"},
		{"admin role", admin.flags(site.ca), "PermissionDenied"},
	} {
		r := dpcache(t, updateArgs("grpcs://"+dps[0].GRPC, refusedDir, k.pub, tc.flags...)...)
		line := errorLine(t, r)
		mustContain(t, line, tc.want)
		if len(line) > 400 {
			t.Errorf("%s: error line of %d characters: %s", tc.name, len(line), line)
		}
		t.Logf("%s: %s", tc.name, line)
		checkNotInstalled(t, refusedDir)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"status with an endpoint certificate", append([]string{"status", "--node", "grpcs://" + dps[0].GRPC}, pc1.flags(site.ca)...), "PermissionDenied"},
		{"prefetch with an endpoint certificate", append([]string{"prefetch", "--node", "grpcs://" + dps[0].GRPC, "--product", product}, pc1.flags(site.ca)...), "PermissionDenied"},
		{"endpoints without certificate", []string{"endpoints", "--node", "grpcs://" + dps[0].GRPC, "--ca", site.ca}, "Unauthenticated"},
		{"status over plain gRPC", []string{"status", "--node", dps[0].GRPC}, "status"},
	} {
		line := errorLine(t, dpcache(t, tc.args...))
		mustContain(t, line, tc.want)
		t.Logf("%s: %s", tc.name, line)
	}

	// An endpoint certificate reports under its own name only, and the
	// site's inventory does not change otherwise.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := grpcClient(t, dps[0].GRPC, site.ca, &pc1)
	_, err := pb.NewDistributionServiceClient(conn).ReportStatus(ctx, &pb.ReportStatusRequest{Status: &pb.EndpointStatus{
		Id: "pc-99", Hostname: "x", Product: product, Version: "0.1", Result: "updated"}})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("report under another id: %v, want PermissionDenied", err)
	}
	_, err = pb.NewAdminServiceClient(conn).ListEndpoints(ctx, &pb.ListEndpointsRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("ListEndpoints with an endpoint certificate: %v, want PermissionDenied", err)
	}
	_, err = pb.NewDistributionServiceClient(conn).GetLatest(ctx, &pb.GetLatestRequest{Product: product, Forwarded: true})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a forwarded request with an endpoint certificate: %v, want PermissionDenied", err)
	}
	r = mustRun(t, append([]string{"endpoints", "--node", "grpcs://" + dps[0].GRPC, "--json"}, admin.flags(site.ca)...)...)
	if strings.Contains(r.stdout, "pc-99") {
		t.Errorf("a refused report is listed: %s", r.stdout)
	}

	// A DP with another CA's certificate: its peers refuse it, so with no
	// upstream of its own it cannot serve what they hold.
	rogueCert := other.issue(t, "dp-x", "dp", "127.0.0.1")
	rogue := startClusterDP(t, "dp-x", "paris", filepath.Join(work, "no-repo"), k.pub, []string{dps[0].Gossip}, tlsNodeFlags(rogueCert, other.ca)...)
	conn = grpcClient(t, dps[0].GRPC, site.ca, &certPair{rogueCert.cert, rogueCert.key})
	_, err = pb.NewDistributionServiceClient(conn).GetLatest(ctx, &pb.GetLatestRequest{Product: product, Forwarded: true})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("dp-x's certificate at dp-1: %v, want Unauthenticated", err)
	}
	otherEP := other.issue(t, "pc-3", "endpoint")
	r = dpcache(t, updateArgs("grpcs://"+rogue.GRPC, filepath.Join(work, "ep3"), k.pub, otherEP.flags(other.ca)...)...)
	if r.code == 0 {
		t.Errorf("dp-x served a version its peers hold: %s", r)
	}
	checkNotInstalled(t, filepath.Join(work, "ep3"))
}

// TestE2E_TLS_Rotation: a DP's certificate replaced on disk is served to
// new connections on gRPC and HTTP without a restart; SIGHUP reloads it
// and never stops the DP.
func TestE2E_TLS_Rotation(t *testing.T) {
	t.Parallel()
	work, k, _, repo, _ := vendorRepo(t, "1.0", map[string]int{"databases/base.dat": 16 << 10})
	site := newSitePKI(t, work, "ca")
	dpCert := site.issue(t, "dp-1", "dp", "127.0.0.1")
	pc1 := site.issue(t, "pc-1", "endpoint")
	n := startNode(t, repo, k.pub, tlsNodeFlags(dpCert, site.ca)...)

	first, err := servedSerial(n.GRPC)
	if err != nil {
		t.Fatal(err)
	}
	update(t, "grpcs://"+n.GRPC, filepath.Join(work, "ep1"), k.pub, pc1.flags(site.ca)...)

	// Re-issue to the same files: new connections get the new certificate.
	site.issue(t, "dp-1", "dp", "127.0.0.1")
	for _, addr := range []string{n.GRPC, n.HTTP} {
		waitDetail(t, eventually, "the new certificate on "+addr, func() (bool, string) {
			s, err := servedSerial(addr)
			if err != nil {
				return false, err.Error()
			}
			return s.Cmp(first) != 0, fmt.Sprintf("serial %x", s)
		})
	}
	update(t, "grpcs://"+n.GRPC, filepath.Join(work, "ep2"), k.pub, pc1.flags(site.ca)...)

	// SIGHUP: reloaded, still serving.
	second, _ := servedSerial(n.GRPC)
	site.issue(t, "dp-1", "dp", "127.0.0.1")
	if err := n.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitDetail(t, eventually, "the certificate reloaded on SIGHUP", func() (bool, string) {
		s, err := servedSerial(n.GRPC)
		if err != nil {
			return false, err.Error()
		}
		return s.Cmp(second) != 0 && strings.Contains(n.proc.Stderr(), "SIGHUP: reloading files"), fmt.Sprintf("serial %x", s)
	})
	if n.proc.Exited() {
		t.Fatalf("the DP stopped on SIGHUP: %s", n.proc.Stderr())
	}
	if !healthz(n.HTTP) {
		t.Error("the DP does not answer /healthz after SIGHUP")
	}
	// HTTP: /healthz open, /metrics for admins only.
	pem, _ := os.ReadFile(site.ca)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + n.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/metrics without a certificate: %d, want 401", resp.StatusCode)
	}
}
