package node

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A panic in a handler, whatever request caused it, must not kill the DP
// (gRPC does not recover handler panics): it is logged with its stack and
// the request is answered Internal (gRPC) or 500, or cut (HTTP, once the
// body has started).

// recoverOptions returns the gRPC interceptors that turn a handler's panic
// into codes.Internal. They are the outermost, so every other interceptor
// is covered too.
func recoverOptions(log *slog.Logger) []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(recoverUnary(log)), grpc.ChainStreamInterceptor(recoverStream(log))}
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = panicked(log, info.FullMethod, p)
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = panicked(log, info.FullMethod, p)
			}
		}()
		return handler(srv, ss)
	}
}

func panicked(log *slog.Logger, what string, p any) error {
	log.Error("a request handler panicked; the request fails, the DP goes on", "request", what, "panic", p, "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error in the DP (logged there); try again or use another source")
}

// recoverHTTP answers 500 for a handler that panics before writing, and
// cuts the connection of one that panicked mid-body (a client must not
// take a truncated body for a whole one).
func recoverHTTP(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &wroteHeader{ResponseWriter: w}
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler {
				panic(p) // net/http's own way to cut a response: let it
			}
			panicked(log, r.Method+" "+r.URL.Path, p)
			if rec.wrote {
				panic(http.ErrAbortHandler)
			}
			http.Error(w, "internal error in the DP (logged there)", http.StatusInternalServerError)
		}()
		h.ServeHTTP(rec, r)
	})
}

// wroteHeader records whether a response has started.
type wroteHeader struct {
	http.ResponseWriter
	wrote bool
}

func (w *wroteHeader) WriteHeader(code int) { w.wrote = true; w.ResponseWriter.WriteHeader(code) }
func (w *wroteHeader) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Flush lets streamed responses reach the client as they are written.
func (w *wroteHeader) Flush() {
	w.wrote = true
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (flush,
// deadlines).
func (w *wroteHeader) Unwrap() http.ResponseWriter { return w.ResponseWriter }
