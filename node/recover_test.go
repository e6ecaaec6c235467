package node

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRecover_GRPC: a unary or stream handler that panics answers
// Internal and logs the panic with its stack.
func TestRecover_GRPC(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	_, err := recoverUnary(log)(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/dpcache.v1.DistributionService/GetLatest"},
		func(context.Context, any) (any, error) { panic("slice bounds out of range") })
	if status.Code(err) != codes.Internal || !strings.Contains(logs.String(), "slice bounds out of range") {
		t.Errorf("panicking unary handler: %v, log %q; want Internal and the panic logged", err, logs.String())
	}
	err = recoverStream(log)(nil, nil, &grpc.StreamServerInfo{FullMethod: "/dpcache.v1.DistributionService/ReadBlob"},
		func(any, grpc.ServerStream) error { panic("index out of range") })
	if status.Code(err) != codes.Internal || !strings.Contains(logs.String(), "index out of range") {
		t.Errorf("panicking handler: %v, log %q; want Internal and the panic logged", err, logs.String())
	}
}

// TestRecover_HTTP: a handler that panics before writing gets a 500; one
// that panics mid-body has its connection cut, so the client sees an
// error, never a complete-looking truncated body; the server goes on.
func TestRecover_HTTP(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	mux := http.NewServeMux()
	mux.HandleFunc("/before", func(http.ResponseWriter, *http.Request) { panic("before") })
	mux.HandleFunc("/during", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		panic("during")
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := httptest.NewUnstartedServer(recoverHTTP(log, mux))
	srv.Config.ErrorLog = slog.NewLogLogger(slog.NewTextHandler(io.Discard, nil), slog.LevelError)
	srv.Start()
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/before")
	if err != nil || resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("panic before writing: %v %v, want 500", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	if resp, err := http.Get(srv.URL + "/during"); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("panic mid-body: the client read a complete body")
		}
	}
	resp, err = http.Get(srv.URL + "/ok")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the panics: %v %v", resp, err)
	}
	resp.Body.Close()
	if !strings.Contains(logs.String(), "before") || !strings.Contains(logs.String(), "during") {
		t.Errorf("panics not logged: %q", logs.String())
	}
}
