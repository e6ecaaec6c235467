package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// A node takes its settings from the YAML file, the DPCACHE_* environment
// and flags, flags winning over the environment, which wins over the file.
// An unknown setting in the file is an error, not silently ignored.
func TestE2E_NodeConfigPrecedence(t *testing.T) {
	t.Parallel()
	if v, ok := os.LookupEnv("DPCACHE_GRPC"); ok {
		t.Fatalf("DPCACHE_GRPC=%q is set in the test's environment; unset it", v)
	}
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	fileAddr, envAddr, flagAddr := testenv.FreeAddr(t, "127.0.0.1"), testenv.FreeAddr(t, "127.0.0.1"), testenv.FreeAddr(t, "127.0.0.1")
	// Nothing will ask the upstream for anything: no product is configured.
	conf := filepath.Join(work, "dp.yaml")
	writeYAML(t, conf, map[string]string{
		"name":     "dp-yaml",
		"site":     "branch-paris",
		"data":     filepath.Join(work, "data"),
		"grpc":     fileAddr,
		"upstream": "[" + strconv.Quote("http://127.0.0.1:9/updates/") + "]",
		"trust":    "[" + strconv.Quote(k.pub) + "]",
		"refresh":  "200ms",
	})

	cases := []struct {
		name  string
		env   []string
		flags []string
		want  string
	}{
		{name: "flag over environment and file", env: []string{"DPCACHE_GRPC=" + envAddr}, flags: []string{"--grpc", flagAddr}, want: flagAddr},
		{name: "environment over file", env: []string{"DPCACHE_GRPC=" + envAddr}, want: envAddr},
		{name: "file", want: fileAddr},
	}
	// One after the other: they share the addresses and the data directory.
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			httpAddr := testenv.FreeAddr(t, "127.0.0.1")
			args := append([]string{"node", "--config", conf, "--http", httpAddr, "--gossip", "127.0.0.1:0"}, tc.flags...)
			p := testenv.StartProcWith(t, testenv.ProcOptions{Env: tc.env}, testenv.BuildDpcache(t), args...)
			if err := waitReady(t, p, httpAddr); err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, readyTimeout, "gRPC health SERVING on "+tc.want, func() bool { return grpcServing(t, tc.want) })
			for _, other := range []string{fileAddr, envAddr, flagAddr} {
				if other != tc.want && listening(other) {
					t.Errorf("something listens on %s too; want the node only on %s", other, tc.want)
				}
			}
			// The file's other settings were used.
			mustContain(t, p.Stderr(), "dp-yaml", "branch-paris")
			if err := p.Stop(); err != nil {
				t.Errorf("SIGTERM: %v, want exit 0", err)
			}
		})
	}

	t.Run("unknown setting", func(t *testing.T) {
		bad := filepath.Join(work, "bad.yaml")
		writeYAML(t, bad, map[string]string{
			"grpc":      fileAddr,
			"upstreams": "[" + strconv.Quote("http://127.0.0.1:9/") + "]",
			"trust":     "[" + strconv.Quote(k.pub) + "]",
		})
		line := errorLine(t, dpcache(t, "node", "--config", bad, "--http", "127.0.0.1:0"))
		mustContain(t, line, "upstreams", bad)
	})
	t.Run("bad value in the environment", func(t *testing.T) {
		r := dpcacheWith(t, testenv.ProcOptions{Env: []string{"DPCACHE_REFRESH=often"}},
			"node", "--config", conf, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--gossip", "127.0.0.1:0")
		mustContain(t, errorLine(t, r), "DPCACHE_REFRESH", "often")
	})
}

// writeYAML writes a flat YAML mapping; values are written as given (quote
// strings that need it).
func writeYAML(t *testing.T, file string, kv map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# dpcache node settings\n")
	for k, v := range kv {
		if !strings.HasPrefix(v, "[") {
			v = strconv.Quote(v)
		}
		fmt.Fprintf(&b, "%s: %s\n", k, v)
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// SIGTERM stops a node gracefully: exit status 0 within testenv.StopTimeout
// (after which Stop would kill it), its ports released, idle or in the middle
// of an upstream transfer and a client stream.
func TestE2E_GracefulShutdown(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	digest := writeFiles(t, src, map[string]int{"databases/big.dat": 8 << 20})["databases/big.dat"]
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)
	// 8 MiB at 256 KiB/s: the transfer is still running when the node stops.
	origin := testenv.StartNginx(t, repo, testenv.NginxOptions{
		LimitRate:    "256k",
		ServerConfig: "location = /__status { stub_status; access_log off; limit_rate 0; }",
	})

	stop := func(t *testing.T, dp *dpNode) {
		t.Helper()
		if err := dp.proc.Stop(); err != nil {
			t.Fatalf("SIGTERM: %v (exit %d), want exit 0 within %v:\n%s", err, dp.proc.ExitCode(), testenv.StopTimeout, dp.proc.Stderr())
		}
		for _, addr := range []string{dp.GRPC, dp.HTTP} {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				t.Errorf("after exit, %s is still taken: %v", addr, err)
				continue
			}
			l.Close()
		}
	}

	t.Run("idle", func(t *testing.T) {
		stop(t, startNode(t, origin.URL, k.pub))
	})

	t.Run("while transferring", func(t *testing.T) {
		dp := startNode(t, origin.URL, k.pub)
		ep := filepath.Join(work, "endpoint")
		args := updateArgs(dp.URL(), ep, k.pub)
		upd := startDpcache(t, args...)
		// The manifest is logged once sent; the blob transfer follows it.
		testenv.WaitFor(t, eventually, "nginx to be sending the blob", func() bool {
			return upd.Exited() || origin.CountRequests(t, "/manifest.json") > 0 && nginxWriting(t, origin) > 0
		})
		if upd.Exited() {
			t.Fatalf("the update ended before the node was stopped: %s", waitProc(t, upd, args))
		}
		stop(t, dp)
		// The endpoint's update fails cleanly, and leaves nothing installed.
		line := errorLine(t, waitProc(t, upd, args))
		mustContain(t, line, dp.URL())
		checkNotInstalled(t, ep)
		// The node really stopped in the middle of the upstream transfer.
		testenv.WaitFor(t, eventually, "nginx to log the blob transfer", func() bool {
			return len(blobEntries(t, origin, digest)) > 0
		})
		if e := blobEntries(t, origin, digest)[0]; e.Complete {
			t.Errorf("the blob transfer completed (%+v); the node was meant to stop during it", e)
		}
	})
}

// nginxWriting returns how many responses nginx is sending, not counting the
// stub_status request itself.
func nginxWriting(t *testing.T, n *testenv.Nginx) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Addr+"/__status", nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4096))
	for sc.Scan() {
		// "Reading: 0 Writing: 2 Waiting: 0"
		f := strings.Fields(sc.Text())
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "Writing:" {
				w, err := strconv.Atoi(f[i+1])
				if err != nil {
					t.Fatalf("nginx stub_status: %q: %v", sc.Text(), err)
				}
				return w - 1
			}
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return 0
	}
	t.Fatalf("nginx stub_status has no Writing: line (status %s)", resp.Status)
	return 0
}
