package source_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/dpcache/dpcache/e2e/testenv"
	pb "github.com/dpcache/dpcache/proto/dpcache/v1"
	"github.com/dpcache/dpcache/source"
)

// TestHTTPS_CA: nginx over HTTPS with a certificate of a test CA works with
// the CA file, and without it fails with an error that says the
// certificate is not trusted (not a bare x509 message).
func TestHTTPS_CA(t *testing.T) {
	t.Parallel()
	r := newRepo(t)
	ca := testenv.NewTestCA(t)
	ngx := testenv.StartNginxTLS(t, r.root, ca, testenv.NginxOptions{})

	testSourceBasics(t, r, parse(t, ngx.TLSURL, source.Options{CAFile: ca.CAFile}))
	testSourceBasics(t, r, parse(t, ngx.TLSURL, source.Options{TLSConfig: &tls.Config{RootCAs: ca.Pool}}))

	other := testenv.NewTestCA(t)
	for name, opts := range map[string]source.Options{
		"system roots":  {},
		"other CA file": {CAFile: other.CAFile},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			src := parse(t, ngx.TLSURL, opts)
			_, err := src.Latest(testCtx(t), r.product)
			checkErr(t, src, err, source.ErrUnavailable)
			if err == nil {
				return
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), "not signed by a CA trusted here") {
				t.Errorf("error %q does not say the certificate is not trusted", err)
			}
			if opts.CAFile != "" && !strings.Contains(err.Error(), opts.CAFile) {
				t.Errorf("error %q does not name the CA file", err)
			}
		})
	}
}

// TestHTTPS_WrongHost: a certificate of a trusted CA for another host name
// is refused, and the error says so.
func TestHTTPS_WrongHost(t *testing.T) {
	t.Parallel()
	ca := testenv.NewTestCA(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "{}")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = ca.TLSConfig(t, "updates.example.com")
	srv.StartTLS()
	t.Cleanup(srv.Close)
	src := parse(t, srv.URL, source.Options{CAFile: ca.CAFile})
	_, err := src.Latest(testCtx(t), "kes")
	checkErr(t, src, err, source.ErrUnavailable)
	if err != nil && !strings.Contains(err.Error(), "does not name 127.0.0.1") {
		t.Errorf("error %q does not say the certificate is for another host", err)
	}
}

// TestOptions_CAFileErrors: a CA file that cannot be used is a clear error
// naming the file, when the source is created.
func TestOptions_CAFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, file := range []string{garbage, missing, dir} {
		for _, raw := range []string{"https://updates.example.com/", "grpcs://dp1:7340"} {
			src, err := source.Parse(raw, source.Options{CAFile: file})
			if err == nil {
				src.Close()
				t.Errorf("Parse(%s) with CA file %s succeeded", raw, file)
				continue
			}
			if !errors.Is(err, source.ErrBadOptions) || !strings.Contains(err.Error(), file) {
				t.Errorf("Parse(%s) with CA file %s: %v, want ErrBadOptions naming the file", raw, file, err)
			}
		}
	}
}

// TestGRPCS: grpcs:// reaches a DP over TLS with the CA file, and refuses
// it without.
func TestGRPCS(t *testing.T) {
	t.Parallel()
	ca := testenv.NewTestCA(t)
	f := &fakeDP{latest: func(req *pb.GetLatestRequest) (*pb.GetLatestResponse, error) {
		return &pb.GetLatestResponse{Latest: &pb.SignedDocument{Data: []byte("latest of " + req.GetProduct()), Signature: []byte("sig")}}, nil
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.TLSConfig(t, "127.0.0.1"))))
	pb.RegisterDistributionServiceServer(srv, f)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	addr := ln.Addr().String()

	src := parse(t, "grpcs://"+addr, source.Options{CAFile: ca.CAFile})
	if src.String() != "grpcs://"+addr {
		t.Errorf("String() = %q", src)
	}
	got, err := src.Latest(testCtx(t), "kes")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Data) != "latest of kes" || got.Source != "grpcs://"+addr {
		t.Errorf("Latest = %q from %q", got.Data, got.Source)
	}

	untrusted := parse(t, "grpcs://"+addr, source.Options{Timeout: 5 * time.Second})
	_, err = untrusted.Latest(testCtx(t), "kes")
	checkErr(t, untrusted, err, source.ErrUnavailable)
	// Plain gRPC to a TLS server fails too, rather than hanging.
	plain := parse(t, "grpc://"+addr, source.Options{Timeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	_, err = plain.Latest(ctx, "kes")
	checkErr(t, plain, err, source.ErrUnavailable)
}
