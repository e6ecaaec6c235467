package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// grpcurlResult is how a grpcurl run ended.
type grpcurlResult struct {
	args           []string
	err            error // nil: exit 0
	stdout, stderr string
}

func (r grpcurlResult) String() string {
	return "grpcurl " + strings.Join(r.args, " ") + ": " + errString(r.err) + "\nstdout:\n" + r.stdout + "\nstderr:\n" + r.stderr
}

func errString(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// runGrpcurl runs the pinned grpcurl (make tools) with args, within
// cmdTimeout.
func runGrpcurl(t *testing.T, args ...string) grpcurlResult {
	t.Helper()
	bin := testenv.RequireTool(t, "grpcurl")
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	args = append([]string{"-max-time", "20"}, args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return grpcurlResult{args: args, err: err, stdout: stdout.String(), stderr: stderr.String()}
}

// grpcurlFlags are grpcurl's TLS flags trusting ca and presenting c (none:
// no certificate).
func grpcurlFlags(ca string, c *certPair) []string {
	f := []string{"-cacert", ca}
	if c != nil {
		f = append(f, "-cert", c.cert, "-key", c.key)
	}
	return f
}

// TestE2E_TLS_Grpcurl: the stock grpcurl, with -cacert/-cert/-key, works
// against a DP with --client-ca as the roles allow: an admin lists the
// services through reflection (and saves their descriptors) and calls
// AdminService/GetStatus; an endpoint, which may not use reflection, calls
// DistributionService/GetLatest with the saved descriptors; without a
// certificate every call but the health check is refused.
func TestE2E_TLS_Grpcurl(t *testing.T) {
	t.Parallel()
	testenv.RequireTool(t, "grpcurl")
	d := startTLSDP(t)
	protoset := filepath.Join(t.TempDir(), "dpcache.protoset")

	// Admin: reflection lists the services; -protoset-out keeps their
	// descriptors for the callers that may not use reflection.
	r := runGrpcurl(t, append(grpcurlFlags(d.site.ca, &d.admin), "-protoset-out", protoset, d.GRPC, "list")...)
	if r.err != nil {
		t.Fatalf("list with an admin certificate: %s", r)
	}
	services := nonEmptyLines(r.stdout)
	for _, want := range []string{"dpcache.v1.AdminService", "dpcache.v1.DistributionService", "grpc.health.v1.Health"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("list with an admin certificate: no %s in %q", want, services)
		}
	}
	t.Logf("admin: grpcurl list: %q", services)

	r = runGrpcurl(t, append(grpcurlFlags(d.site.ca, &d.admin), "-d", `{"local_only": true}`, d.GRPC, "dpcache.v1.AdminService/GetStatus")...)
	if r.err != nil {
		t.Fatalf("GetStatus with an admin certificate: %s", r)
	}
	var st struct {
		Members []struct{ Name, State string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("GetStatus: %v\n%s", err, r)
	}
	if len(st.Members) != 1 || st.Members[0].Name != "dp-"+filepath.Base(d.Data) || st.Members[0].State != "alive" {
		t.Errorf("GetStatus with an admin certificate: members %+v, want the DP alone, alive", st.Members)
	}

	// Endpoint: GetLatest with the saved descriptors; reflection is for
	// admins and DPs.
	r = runGrpcurl(t, append(grpcurlFlags(d.site.ca, &d.endpoint), "-protoset", protoset, "-d", `{"product": "`+product+`"}`,
		d.GRPC, "dpcache.v1.DistributionService/GetLatest")...)
	if r.err != nil {
		t.Fatalf("GetLatest with an endpoint certificate: %s", r)
	}
	var latest struct {
		Latest struct{ Data, Signature []byte } // base64 in grpcurl's JSON
	}
	if err := json.Unmarshal([]byte(r.stdout), &latest); err != nil {
		t.Fatalf("GetLatest: %v\n%s", err, r)
	}
	if !bytes.Contains(latest.Latest.Data, []byte(`"`+product+`"`)) || len(latest.Latest.Signature) == 0 {
		t.Errorf("GetLatest with an endpoint certificate: no signed latest.json of %s: %s", product, r.stdout)
	}
	r = runGrpcurl(t, append(grpcurlFlags(d.site.ca, &d.endpoint), d.GRPC, "list")...)
	if r.err == nil || !strings.Contains(r.stderr, "PermissionDenied") {
		t.Errorf("list with an endpoint certificate: want PermissionDenied, got %s", r)
	}

	// No certificate: refused, with the code; the health check answers.
	for _, args := range [][]string{
		{d.GRPC, "list"},
		{"-protoset", protoset, "-d", `{"product": "` + product + `"}`, d.GRPC, "dpcache.v1.DistributionService/GetLatest"},
		{"-protoset", protoset, d.GRPC, "dpcache.v1.AdminService/GetStatus"},
	} {
		r = runGrpcurl(t, append(grpcurlFlags(d.site.ca, nil), args...)...)
		if r.err == nil || !strings.Contains(r.stderr, "Unauthenticated") {
			t.Errorf("without a certificate: want Unauthenticated, got %s", r)
		}
		t.Logf("no certificate: grpcurl %s: %s", args[len(args)-1], strings.Join(strings.Fields(r.stderr), " "))
	}
	r = runGrpcurl(t, append(grpcurlFlags(d.site.ca, nil), "-protoset", protoset, d.GRPC, "grpc.health.v1.Health/Check")...)
	if r.err != nil || !strings.Contains(r.stdout, `"SERVING"`) {
		t.Errorf("health check without a certificate: %s", r)
	}
	// Nor is plaintext gRPC spoken.
	if r = runGrpcurl(t, "-plaintext", d.GRPC, "list"); r.err == nil {
		t.Errorf("plaintext list: want a failure, got %s", r)
	}
}
