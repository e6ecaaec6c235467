// Package testenv helps tests that run real third-party servers and real
// processes: it finds (or demands, in CI) the binaries they need, starts a real
// nginx as an HTTP origin, builds the dpcache binary once per test binary, and
// runs child processes with their output captured.
//
// Everything a helper starts is stopped by t.Cleanup, before the test's
// temporary directories are removed, so tests never leak processes or
// goroutines (packages using testenv can run goleak.VerifyTestMain).
//
// # Missing binaries
//
// A helper that needs a binary (nginx, go) calls [RequireBinary]: outside CI a
// missing binary skips the test with the Debian package to install; when the
// CI environment variable is non-empty it fails the test instead, so CI never
// passes by silently skipping.
//
// Such skips are not silent outside CI either: [SkipMissing] (which
// RequireBinary uses, and tests call for root or a Docker engine) records
// them, and a package whose TestMain calls [VerifyTestMain] or [Main] ends
// its run with a summary, "SKIPPED in PKG: ...", naming each test and what
// to install, shown even by a plain `go test ./...` in a terminal or a pipe.
//
// # Caveats
//
// All helpers call t.Fatal on failure, so they must be called from the
// goroutine running the test (as the testing package requires), never from a
// goroutine the test started.
package testenv
