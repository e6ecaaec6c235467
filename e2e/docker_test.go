package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// dockerTimeout bounds one docker command, and the static build of the
// binary (a cold Go build cache compiles every package again without cgo).
const dockerTimeout = 5 * time.Minute

// clusterTimeout bounds how long the containers take to agree on
// membership after a change (failure detection is a few seconds with
// memberlist's LAN timers; a rejoin is retried every 5 s).
const clusterTimeout = 60 * time.Second

// Three DPs in their own containers on a Docker network, each with its own
// IP, joined by container name. One DP is cut off the network: the others
// find it dead, and it finds them dead. The network heals and, with no
// manual join, all three see each other alive again. One DP is killed: the
// others find it dead.
func TestDocker_PartitionHeals(t *testing.T) {
	t.Parallel()
	d := newDocker(t)
	work := t.TempDir()

	// The vendor's repository, served by `dpcache serve` in a container.
	k := vendorKeys(t, work, "vendor")
	src := filepath.Join(work, "src")
	writeFiles(t, src, map[string]int{"databases/base.dat": 512 << 10, "modules/engine.bin": 128 << 10})
	repo := filepath.Join(work, "repo")
	publish(t, repo, k, "1.0", src)

	image := d.buildImage(t)
	net, subnet := d.network(t)
	ip := func(host int) string { return fmt.Sprintf("%s.%d", subnet, host) }

	origin := d.name("origin")
	d.create(t, origin, net, ip(10), image, "serve", "--repo", "/repo", "--listen", ":8080")
	d.must(t, "cp", repo, origin+":/repo")
	d.must(t, "start", origin)

	type dp struct{ name, container, ip string }
	dps := []dp{{name: "dp1"}, {name: "dp2"}, {name: "dp3"}}
	for i := range dps {
		dps[i].container, dps[i].ip = d.name(dps[i].name), ip(11+i)
	}
	for i, p := range dps {
		var join []string
		for j, q := range dps {
			if j != i {
				join = append(join, q.container+":7946")
			}
		}
		d.create(t, p.container, net, p.ip, image, "node",
			"--name", p.name, "--site", "branch", "--data", "/data",
			"--grpc", ":7340", "--http", ":7341", "--gossip", ":7946",
			"--join", strings.Join(join, ","), "--advertise", p.container,
			"--upstream", "http://"+origin+":8080/", "--trust", "/vendor.pub",
			"--product", product, "--refresh", "1s")
		d.must(t, "cp", k.pub, p.container+":/vendor.pub")
		d.must(t, "start", p.container)
	}

	// status asks the DP in container c, from inside it, how it sees the
	// cluster: member name → state.
	status := func(c string) (map[string]string, clusterStatus, error) {
		out, err := d.run("exec", c, "/dpcache", "status", "--node", "127.0.0.1:7340", "--json")
		if err != nil {
			return nil, clusterStatus{}, err
		}
		st := decodeStatus(t, []byte(out))
		states := map[string]string{}
		for _, m := range st.Members {
			states[m.Name] = m.State
		}
		return states, st, nil
	}
	// sees waits until the DP in container c reports every member of want
	// in the given state.
	sees := func(c string, want map[string]string, what string) {
		t.Helper()
		waitDetail(t, clusterTimeout, c+" to see "+what, func() (bool, string) {
			states, st, err := status(c)
			if err != nil {
				return false, err.Error()
			}
			for name, state := range want {
				if states[name] != state {
					return false, fmt.Sprintf("%+v", st.Members)
				}
			}
			return true, ""
		})
	}
	allAlive := map[string]string{"dp1": "alive", "dp2": "alive", "dp3": "alive"}

	for _, p := range dps {
		sees(p.container, allAlive, "all three alive")
	}
	// The DPs reach the origin and each other by name: each fetched the
	// version (--product) and the others know it.
	waitDetail(t, clusterTimeout, "every DP to hold 1.0", func() (bool, string) {
		_, st, err := status(dps[0].container)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range dps {
			m, ok := st.member(p.name)
			if !ok || !m.holds(1) || m.GRPC != p.container+":7340" {
				return false, fmt.Sprintf("%+v", st.Members)
			}
		}
		return true, ""
	})

	// A partition: dp3 loses the network.
	start := time.Now()
	d.must(t, "network", "disconnect", net, dps[2].container)
	sees(dps[0].container, map[string]string{"dp1": "alive", "dp2": "alive", "dp3": "dead"}, "dp3 dead")
	sees(dps[1].container, map[string]string{"dp1": "alive", "dp2": "alive", "dp3": "dead"}, "dp3 dead")
	sees(dps[2].container, map[string]string{"dp1": "dead", "dp2": "dead", "dp3": "alive"}, "dp1 and dp2 dead")

	t.Logf("partition seen by all three after %v", time.Since(start).Round(100*time.Millisecond))

	// The network heals (same address): nobody is told to join.
	start = time.Now()
	d.must(t, "network", "connect", "--ip", dps[2].ip, net, dps[2].container)
	for _, p := range dps {
		sees(p.container, allAlive, "all three alive again after the partition healed")
	}
	t.Logf("healed: all three alive again after %v", time.Since(start).Round(100*time.Millisecond))

	// A crash: dp2 is killed.
	start = time.Now()
	d.must(t, "kill", dps[1].container)
	for _, p := range []dp{dps[0], dps[2]} {
		sees(p.container, map[string]string{"dp1": "alive", "dp2": "dead", "dp3": "alive"}, "dp2 dead after docker kill")
	}
	t.Logf("dp2 seen dead by the others %v after docker kill", time.Since(start).Round(100*time.Millisecond))
}

// docker runs the docker command line for one test and removes what the test
// created.
type docker struct {
	bin    string
	prefix string // of every container and network name
}

// newDocker returns the docker command line, or skips the test when there
// is no Docker: when docker is not installed, or when `docker info` fails
// (no engine, no permission). With CI set and docker installed, an engine
// that does not answer fails the test instead.
func newDocker(t *testing.T) *docker {
	t.Helper()
	bin, err := exec.LookPath("docker")
	if err != nil {
		testenv.SkipMissing(t, "docker", "apt-get install docker.io (this test runs DPs in containers)")
	}
	d := &docker{bin: bin, prefix: fmt.Sprintf("dpcache-e2e-%08x-", rand.Uint32())}
	if out, err := d.run("info", "--format", "{{.ServerVersion}}"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("docker is installed but `docker info` fails, and CI is set: %v", err)
		}
		testenv.SkipMissing(t, "a Docker engine", fmt.Sprintf("`docker info` fails (%v): start dockerd, or give this user access to it", err))
	} else {
		t.Logf("Docker engine %s", strings.TrimSpace(out))
	}
	return d
}

// name returns a container name unique to this run.
func (d *docker) name(s string) string { return d.prefix + s }

// run runs docker with args and returns its stdout; the error holds
// stderr.
func (d *docker) run(args ...string) (string, error) {
	return d.runEnv(nil, args...)
}

func (d *docker) runEnv(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// must runs docker and fails the test if it fails.
func (d *docker) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The image the Docker tests share while any of them runs: one build of
// `make image` for the parallel tests, removed when the last one ends.
var sharedImage struct {
	sync.Mutex
	tag   string
	users int
}

// buildImage returns the image of `make image` (deploy/docker/Dockerfile:
// FROM scratch around the static binary) under a tag of this run, built
// by the first test that asks; the last test's cleanup removes it.
func (d *docker) buildImage(t *testing.T) string {
	t.Helper()
	root := testenv.ModuleRoot(t)
	goBin := testenv.RequireBinary(t, "go")
	makeBin := testenv.RequireBinary(t, "make")
	sharedImage.Lock()
	defer sharedImage.Unlock()
	if sharedImage.users == 0 {
		image := "dpcache-e2e:" + strings.TrimSuffix(strings.TrimPrefix(d.prefix, "dpcache-e2e-"), "-")
		ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
		defer cancel()
		build := exec.CommandContext(ctx, makeBin, "--no-print-directory", "image", "IMAGE="+image, "GO="+goBin, "DOCKER="+d.bin)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("make image IMAGE=%s: %v\n%s", image, err, out)
		}
		sharedImage.tag = image
	}
	sharedImage.users++
	image := sharedImage.tag
	t.Cleanup(func() {
		sharedImage.Lock()
		defer sharedImage.Unlock()
		if sharedImage.users--; sharedImage.users > 0 {
			return
		}
		if _, err := d.run("rmi", "--force", image); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return image
}

// network creates a user-defined bridge network with a /24 subnet (so that
// containers keep their address across a disconnect) and returns its name
// and the subnet's first three octets. Cleanup removes it.
func (d *docker) network(t *testing.T) (name, prefix string) {
	t.Helper()
	name = d.name("net")
	var lastErr error
	for range 8 {
		prefix = fmt.Sprintf("172.%d.%d", 28+rand.IntN(4), rand.IntN(256))
		_, err := d.run("network", "create", "--driver", "bridge", "--subnet", prefix+".0/24", name)
		if err == nil {
			t.Cleanup(func() {
				if _, err := d.run("network", "rm", name); err != nil {
					t.Logf("cleanup: %v", err)
				}
			})
			return name, prefix
		}
		lastErr = err
		if !strings.Contains(err.Error(), "overlap") {
			break
		}
	}
	t.Fatal(lastErr)
	return "", ""
}

// create creates (without starting) a container on net at ip running the
// image with args. Cleanup removes it, after logging its output if the test
// failed.
func (d *docker) create(t *testing.T, container, net, ip, image string, args ...string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			out, err := d.runCombined("logs", "--tail", "200", container)
			t.Logf("docker logs %s (%v):\n%s", container, err, out)
		}
		if _, err := d.run("rm", "--force", "--volumes", container); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	d.must(t, append([]string{"create", "--name", container, "--hostname", container,
		"--network", net, "--ip", ip, image}, args...)...)
}

// runCombined runs docker and returns stdout and stderr together (docker
// logs replays the container's stderr on its own stderr).
func (d *docker) runCombined(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.bin, args...).CombinedOutput()
	return string(out), err
}
