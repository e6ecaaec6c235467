package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
)

func newServe() *cobra.Command {
	var repo, listen string
	cmd := &cobra.Command{
		Use:   "serve --repo DIR [--listen ADDR]",
		Short: "Serve a repository folder over HTTP (an origin for demos and tests)",
		Long: `serve is a static HTTP server of a repository folder, with Range support.
Any web server works as well (nginx, a vendor's CDN); this one is for demos,
tests and quick trials.`,
		Args:        noArgs,
		Annotations: map[string]string{"service": "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireFlags(cmd, "repo"); err != nil {
				return err
			}
			if st, err := os.Stat(repo); err != nil || !st.IsDir() {
				return fmt.Errorf("serve: repository %s is not a folder (create one with dpcache publish)", repo)
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("serve: listening on %s: %w (choose another --listen)", listen, err)
			}
			origin := newOrigin(repo)
			slog.Info("serving repository", "repo", repo, "url", "http://"+lis.Addr().String()+"/")
			return origin.serve(cmd.Context(), lis)
		},
	}
	cmd.Flags().StringVar(&repo, "repo", "", "repository root folder")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address to listen on")
	return cmd
}

// origin is a static repository server that counts the bytes it sends.
type origin struct {
	files http.Handler
	sent  atomic.Int64
}

func newOrigin(repo string) *origin {
	return &origin{files: http.FileServer(http.Dir(repo))}
}

// ServeHTTP serves a file and logs it at info: an access log, which is
// how an operator (and the compose e2e test) sees what the origin sent.
func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cw := &countingWriter{ResponseWriter: w, n: &o.sent}
	o.files.ServeHTTP(cw, r)
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	slog.Info("served", "method", r.Method, "path", r.URL.Path, "status", cw.status, "bytes", cw.written, "remote", r.RemoteAddr)
}

// serve runs until ctx ends, then shuts down gracefully.
func (o *origin) serve(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{Handler: o, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// countingWriter adds what it writes to n, and keeps the status and the
// byte count of its one response.
type countingWriter struct {
	http.ResponseWriter
	n       *atomic.Int64
	status  int
	written int64
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	c.written += int64(n)
	return n, err
}
