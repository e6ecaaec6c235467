// Package e2e holds dpcache's process-level end-to-end tests. They build the
// real dpcache binary (testenv.BuildDpcache), publish a repository with it,
// serve that repository with a real nginx, and run distribution points
// (`dpcache node`) and endpoint updates (`dpcache update`) as separate
// processes on 127.0.0.1. They check only what a user, an administrator or a
// script sees: exit codes, the one error line on stderr, `--json` results,
// the installed files, and the origin's access log (how often each blob
// crossed the "internet link").
//
// Run them with
//
//	go test -race -count=1 ./e2e/
//
// They need nginx and minisign (Debian packages). Outside CI a missing binary
// skips the tests that need it; with CI set it fails them (see testenv).
//
// The cluster tests (cluster_test.go) run several DPs as processes that
// gossip on loopback, kill them with SIGKILL mid-transfer, and stop the
// origin. The multi-host test (docker_test.go) builds a FROM scratch image
// around a static dpcache binary, runs DPs as containers on a private
// network, cuts one off (docker network disconnect) and checks that the
// cluster heals by itself; it skips when Docker is not installed.
//
// # Caveats
//
// The tests never assert durations. Slow transfers (nginx's limit_rate) only
// make requests overlap or leave time to kill a process mid-transfer; every
// condition is polled with a deadline.
package e2e
