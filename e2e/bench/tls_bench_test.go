package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpcache/dpcache/pki"
	"github.com/dpcache/dpcache/source"
)

// site is a CA made with pki.InitCA (as `dpcache ca init` does), a dp
// certificate for 127.0.0.1 and an endpoint's, issued with it.
type site struct {
	ca, dpCert, dpKey string
	// endpoint is how an endpoint dials the DP: the site's CA as its only
	// root and the endpoint certificate, no session cache (every
	// connection is a full handshake, as for a new endpoint).
	endpoint *tls.Config
}

func newSite(b *testing.B, dir string) *site {
	b.Helper()
	caDir := filepath.Join(dir, "ca")
	if err := pki.InitCA(caDir, "bench CA"); err != nil {
		b.Fatal(err)
	}
	st := &site{ca: filepath.Join(caDir, pki.CACertFile)}
	issue := func(name string, role pki.Role, hosts ...string) (string, string) {
		prefix := filepath.Join(caDir, name)
		if err := pki.Issue(caDir, pki.IssueRequest{Name: name, Role: role, Hosts: hosts}, prefix); err != nil {
			b.Fatal(err)
		}
		return prefix + ".pem", prefix + ".key"
	}
	st.dpCert, st.dpKey = issue("bench", pki.RoleDP, "127.0.0.1")
	epCert, epKey := issue("pc-bench", pki.RoleEndpoint)
	kp, err := tls.LoadX509KeyPair(epCert, epKey)
	if err != nil {
		b.Fatal(err)
	}
	pem, err := os.ReadFile(st.ca)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		b.Fatalf("no certificate in %s", st.ca)
	}
	st.endpoint = &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
	return st
}

// restart stops the DP of s and starts it again on the same data
// directory: over plain gRPC when st is nil, else with st's dp certificate
// and --client-ca, endpoints then connecting with mTLS.
func (s *setup) restart(b *testing.B, st *site) {
	b.Helper()
	if err := s.node.Stop(); err != nil {
		b.Fatalf("stopping the DP: %v\n%s", err, s.node.Stderr())
	}
	if st == nil {
		s.startNode(b, http.DefaultClient, "http")
		s.connect = func() (*source.GRPC, error) { return source.NewGRPC(s.grpcAddr, source.DefaultOptions()) }
		return
	}
	tr := &http.Transport{TLSClientConfig: st.endpoint.Clone(), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	s.startNode(b, &http.Client{Transport: tr}, "https", "--tls-cert", st.dpCert, "--tls-key", st.dpKey, "--client-ca", st.ca)
	opts := source.DefaultOptions()
	opts.TLSConfig = st.endpoint
	s.connect = func() (*source.GRPC, error) { return source.NewGRPCTLS(s.grpcAddr, opts) }
}

// BenchmarkServeCachedTLS compares one endpoint reading the cached blob
// whole over mTLS with the same read over plain gRPC, from the same DP and
// data directory, restarted between the two with --tls-cert and
// --client-ca. Each side is read once per iteration (1 GiB; 256 MiB with
// -short); the ratio is TLS over plaintext throughput. The DP's CPU time
// per GiB sent is reported beside it: the client decrypts on the same
// cores, so the ratio understates what a DP serving remote endpoints keeps.
func BenchmarkServeCachedTLS(b *testing.B) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	s := newSetup(b, size)
	st := newSite(b, s.dir)
	var plain, secure, plainCPU, secureCPU []float64
	read := func() (mbps, cpuPerGiB float64) {
		cpu0 := cpuSeconds(b, s.node.Pid())
		mbps = parallel(b, 1, size, size, s.readDP)
		return mbps, (cpuSeconds(b, s.node.Pid()) - cpu0) * (1 << 30) / float64(size)
	}
	for range b.N {
		rate, cpu := read()
		plain, plainCPU = append(plain, rate), append(plainCPU, cpu)
		s.restart(b, st)
		rate, cpu = read()
		secure, secureCPU = append(secure, rate), append(secureCPU, cpu)
		s.restart(b, nil)
	}
	bp, bs := slices.Max(plain), slices.Max(secure)
	b.ReportMetric(bp, "plain-MB/s")
	b.ReportMetric(bs, "tls-MB/s")
	b.ReportMetric(bs/bp, "ratio")
	b.ReportMetric(slices.Min(plainCPU), "plain-dp-cpu-s/GiB")
	b.ReportMetric(slices.Min(secureCPU), "tls-dp-cpu-s/GiB")
	b.Logf("1 client, %d MiB: plaintext %v MB/s, mTLS %v MB/s, ratio %.2f (aim >= 0.7); DP CPU per GiB %.2f s plaintext, %.2f s mTLS",
		size>>20, round(plain), round(secure), bs/bp, slices.Min(plainCPU), slices.Min(secureCPU))
}

// connections is how many new endpoint connections BenchmarkConnectTLS
// makes on each side.
const connections = 1000

// BenchmarkConnectTLS measures endpoints connecting for the first time:
// each makes a new gRPC connection, asks GetLatest once and closes it;
// 1,000 of them over mTLS (a full handshake each, the endpoint's
// certificate verified by the DP) against 1,000 over plain gRPC, from the
// same DP and data directory. "1at-once" connects one after the other;
// "16at-once" keeps 16 connecting at a time, a burst of endpoints. The
// ratio is TLS over plaintext connections per second; the DP's CPU time
// per connection is reported beside it (clients and DP share the cores).
func BenchmarkConnectTLS(b *testing.B) {
	for _, workers := range []int{1, 16} {
		b.Run(fmt.Sprintf("%dat-once", workers), func(b *testing.B) {
			// A setup per sub-benchmark: its processes end with it.
			s := newSetup(b, 1<<20)
			st := newSite(b, s.dir)
			var plain, secure, plainCPU, secureCPU []float64
			for range b.N {
				rate, cpu := connectAll(b, s, workers)
				plain, plainCPU = append(plain, rate), append(plainCPU, cpu)
				s.restart(b, st)
				rate, cpu = connectAll(b, s, workers)
				secure, secureCPU = append(secure, rate), append(secureCPU, cpu)
				s.restart(b, nil)
			}
			bp, bs := slices.Max(plain), slices.Max(secure)
			b.ReportMetric(bp, "plain-conn/s")
			b.ReportMetric(bs, "tls-conn/s")
			b.ReportMetric(bs/bp, "ratio")
			b.ReportMetric(slices.Min(plainCPU)*1e3, "plain-dp-cpu-ms/conn")
			b.ReportMetric(slices.Min(secureCPU)*1e3, "tls-dp-cpu-ms/conn")
			b.Logf("%d connections, %d at once: plaintext %v conn/s, mTLS %v conn/s, ratio %.2f; DP CPU per connection %.2f ms plaintext, %.2f ms mTLS",
				connections, workers, round(plain), round(secure), bs/bp, slices.Min(plainCPU)*1e3, slices.Min(secureCPU)*1e3)
		})
	}
}

// connectAll makes the connections, workers at a time, each a new
// connection to the DP of s that does one GetLatest, and returns how many
// completed per second and the DP's CPU seconds per connection.
func connectAll(b *testing.B, s *setup, workers int) (rate, cpu float64) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	cpu0 := cpuSeconds(b, s.node.Pid())
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= connections {
				if err := connectOnce(ctx, s); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu = (cpuSeconds(b, s.node.Pid()) - cpu0) / connections
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return connections / elapsed.Seconds(), cpu
}

// connectOnce is one new endpoint: a connection of its own, one GetLatest.
func connectOnce(ctx context.Context, s *setup) error {
	dp, err := s.connect()
	if err != nil {
		return err
	}
	defer dp.Close()
	if _, err := dp.Latest(ctx, "bench"); err != nil {
		return fmt.Errorf("GetLatest from %s: %w", dp, err)
	}
	return nil
}
