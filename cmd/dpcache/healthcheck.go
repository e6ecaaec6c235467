package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// defaultHealthHTTP is where `dpcache healthcheck` looks for a DP when
// neither --url, --http nor DPCACHE_HTTP says: the node's default --http
// port, on loopback (the check runs next to the DP, in its container).
const defaultHealthHTTP = "127.0.0.1:7341"

// maxHealthBody caps what healthcheck reads of an answer: one short line.
const maxHealthBody = 512

func newHealthcheck() *cobra.Command {
	var rawURL, httpAddr, caFile, serverName string
	var ready bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck [--url URL | --http ADDR] [--ready] [--timeout DUR] [--ca FILE]",
		Short: "Check that a distribution point answers /healthz (a container's health check)",
		Long: `healthcheck asks a DP's HTTP port for /healthz (or /readyz with --ready)
and exits 0 if it answers 200, 1 otherwise, printing one line either way. It
is the health check of the dpcache image, which has no shell:

  HEALTHCHECK CMD ["/dpcache", "healthcheck"]

The DP is at --url, or at http://ADDR/healthz for --http ADDR; without
either, ADDR is DPCACHE_HTTP (the variable that sets the node's --http) or
127.0.0.1:7341. A listen address such as ":7341" or "0.0.0.0:7341" is
checked on 127.0.0.1. A DP with --tls-cert serves its HTTP port over TLS:
give --ca (the site's CA) and the check uses https://, verifying the DP's
certificate for --server-name (default: the URL's host). /healthz and
/readyz need no client certificate, even with --client-ca. Proxy
variables are ignored: the check goes straight to the DP.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("url") && cmd.Flags().Changed("http") {
				return usageError(errors.New("healthcheck: give --url or --http, not both"))
			}
			if timeout <= 0 {
				return usageError(fmt.Errorf("healthcheck: --timeout %v must be positive", timeout))
			}
			if !cmd.Flags().Changed("http") {
				if env := os.Getenv("DPCACHE_HTTP"); env != "" {
					httpAddr = env
				}
			}
			target, err := healthURL(rawURL, httpAddr, ready, caFile != "")
			if err != nil {
				return usageError(fmt.Errorf("healthcheck: %w", err))
			}
			client, err := healthClient(target, caFile, serverName, timeout)
			if err != nil {
				return err
			}
			defer client.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			line, err := checkHealth(ctx, client, target)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "healthy: %s answered %s\n", target, line)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&rawURL, "url", "", "URL to GET, e.g. http://127.0.0.1:7341/healthz (default: built from --http)")
	f.StringVar(&httpAddr, "http", defaultHealthHTTP, "the DP's --http address (default: DPCACHE_HTTP, else 127.0.0.1:7341)")
	f.BoolVar(&ready, "ready", false, "check /readyz (ready to serve endpoints) instead of /healthz (alive)")
	f.DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	f.StringVar(&caFile, "ca", "", "PEM CA file verifying a DP with --tls-cert: the check uses https://")
	f.StringVar(&serverName, "server-name", "", "name the DP's certificate must carry (default: the URL's host)")
	return cmd
}

// healthURL returns the URL healthcheck GETs: rawURL as given, else the
// DP's health path on httpAddr, over https when tls.
func healthURL(rawURL, httpAddr string, ready, tls bool) (*url.URL, error) {
	if rawURL != "" {
		u, err := url.Parse(rawURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--url %q: want http://HOST:PORT/PATH or https://...", rawURL)
		}
		if u.User != nil {
			return nil, fmt.Errorf("--url %q: a health check sends no credentials; remove USER@", u.Redacted())
		}
		if tls && u.Scheme != "https" {
			return nil, fmt.Errorf("--url %q: --ca verifies a TLS port: use https://", rawURL)
		}
		return u, nil
	}
	host, port, err := net.SplitHostPort(httpAddr)
	if err != nil || port == "" {
		return nil, fmt.Errorf("--http %q: want HOST:PORT or :PORT", httpAddr)
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	u := &url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: "/healthz"}
	if ready {
		u.Path = "/readyz"
	}
	if tls {
		u.Scheme = "https"
	}
	return u, nil
}

// healthClient is an HTTP client for one check of target: no proxy, no
// redirect followed, no connection kept; TLS verified against caFile.
func healthClient(target *url.URL, caFile, serverName string, timeout time.Duration) (*http.Client, error) {
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: timeout}).DialContext,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 16 << 10,
	}
	if target.Scheme == "https" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, fmt.Errorf("healthcheck: --ca %s: cannot read it: %w", caFile, unwrapPath(err))
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("healthcheck: --ca %s: no PEM certificate in it (want \"-----BEGIN CERTIFICATE-----\" blocks)", caFile)
			}
			cfg.RootCAs = pool
		}
		tr.TLSClientConfig = cfg
	}
	return &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}, nil
}

// checkHealth GETs target and returns its status and the first line of its
// answer if it is 200; otherwise an error saying what was wrong.
func checkHealth(ctx context.Context, client *http.Client, target *url.URL) (string, error) {
	where := target.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, where, nil)
	if err != nil {
		return "", fmt.Errorf("healthcheck: %s: %w", where, err)
	}
	req.Header.Set("User-Agent", "dpcache-healthcheck")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("healthcheck: %s: %s", where, healthHint(err, target))
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, maxHealthBody)).ReadString('\n')
	line = strings.Join(strings.Fields(strings.Map(printable, line)), " ")
	status := fmt.Sprintf("%d", resp.StatusCode)
	if line != "" {
		status += " " + line
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return status, nil
	case resp.StatusCode == http.StatusBadRequest && target.Scheme == "http" && strings.Contains(line, "HTTPS"):
		return "", fmt.Errorf("healthcheck: %s: the port speaks TLS (a DP with --tls-cert): give --ca with the site's CA", where)
	}
	return "", fmt.Errorf("healthcheck: %s: unhealthy: %s", where, status)
}

// healthHint turns a failed request into what to check.
func healthHint(err error, target *url.URL) string {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	var (
		rec      tls.RecordHeaderError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
	)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: is the DP running, with --http on " + target.Host + "?"
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return "no answer within --timeout: the DP is stuck, or nothing answers at this address"
	case errors.As(err, &rec):
		return "the port does not speak TLS: leave out --ca (or use http://)"
	case errors.As(err, &unknown):
		return "the DP's certificate is not signed by --ca"
	case errors.As(err, &hostname):
		return fmt.Sprintf("the DP's certificate is not valid for %q: give --server-name with a name it carries", hostname.Host)
	}
	return err.Error()
}

// printable drops control characters from a server's answer before it is
// printed.
func printable(r rune) rune {
	if r < 0x20 && r != '\t' || r == 0x7f {
		return -1
	}
	return r
}

// unwrapPath returns the bare cause of a file error (the caller names the
// file).
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
