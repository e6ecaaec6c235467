package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// StopTimeout is how long Stop, and the cleanup of every helper, waits for a
// process to exit after the polite signal before it kills the process group.
const StopTimeout = 10 * time.Second

// dumpLimit caps how much of a process's output is logged when a test fails.
const dumpLimit = 64 << 10

// ProcOptions tunes StartProcWith. The zero value runs the process in the
// test's working directory with the test binary's environment.
type ProcOptions struct {
	// Env is added to the test binary's environment ("KEY=value"); a key set
	// here wins over the inherited one.
	Env []string
	// Dir is the working directory; empty means the test's working directory.
	Dir string
	// Stdin is the process's standard input; nil means /dev/null.
	Stdin io.Reader
}

// Proc is a child process started by StartProc. Its stdout and stderr go to
// files in a temporary directory, and are logged when the test fails. The
// process runs in its own process group; Kill, Stop and the test's cleanup
// signal the whole group, so its children do not outlive it.
//
// All methods are safe for concurrent use.
type Proc struct {
	// Name is the program's base name, for messages.
	Name string
	// StdoutPath and StderrPath are the files that receive the output.
	StdoutPath string
	StderrPath string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and err is set
	err  error         // cmd.Wait's result; read only after done is closed
}

// StartProc starts bin with args and returns at once; see Proc. The test fails
// if the process cannot be started. Cleanup kills the process group, waits for
// it, and logs the output if the test failed.
func StartProc(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	return StartProcWith(t, ProcOptions{}, bin, args...)
}

// StartProcWith is StartProc with options.
func StartProcWith(t testing.TB, opts ProcOptions, bin string, args ...string) *Proc {
	t.Helper()
	dir := t.TempDir()
	p, err := startProc(dir, opts, bin, args...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			p.dump(t)
		}
	})
	return p
}

func startProc(dir string, opts ProcOptions, bin string, args ...string) (*Proc, error) {
	name := filepath.Base(bin)
	p := &Proc{
		Name:       name,
		StdoutPath: filepath.Join(dir, name+".stdout"),
		StderrPath: filepath.Join(dir, name+".stderr"),
		done:       make(chan struct{}),
	}
	stdout, err := os.Create(p.StdoutPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: create stdout file: %w", name, err)
	}
	defer stdout.Close()
	stderr, err := os.Create(p.StderrPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: create stderr file: %w", name, err)
	}
	defer stderr.Close()

	cmd := exec.Command(bin, args...)
	cmd.Dir = opts.Dir
	if len(opts.Env) > 0 {
		cmd.Env = append(os.Environ(), opts.Env...)
	}
	cmd.Stdin = opts.Stdin
	// Files, not pipes: exec starts no copying goroutines and nothing is lost
	// if the process is killed.
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done returns a channel that is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the exit code, or -1 if the process is running or was
// killed by a signal.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process (not its group). Sending to a process that
// has exited is not an error.
func (p *Proc) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", p.Name, p.Pid(), err)
	}
	return nil
}

// Kill kills the process group with SIGKILL, as a crash or power loss would,
// and waits until the process has exited.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	p.signalGroup(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM to the process, waits up to StopTimeout for it to exit,
// then kills the process group. It returns the process's exit error (nil for
// exit status 0; an *exec.ExitError otherwise, also when it was killed).
// Calling Stop on an exited process only returns that error.
func (p *Proc) Stop() error {
	return p.stop(syscall.SIGTERM)
}

func (p *Proc) stop(sig syscall.Signal) error {
	if p.Exited() {
		return p.err
	}
	_ = p.Signal(sig)
	timer := time.NewTimer(StopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
	}
	// Kill what is left of the group: the leader if it ignored sig, children
	// it left behind otherwise.
	p.signalGroup(syscall.SIGKILL)
	<-p.done
	return p.err
}

// Wait waits for the process to exit and returns its exit error (nil for exit
// status 0), or ctx's error if ctx ends first (the process keeps running).
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("wait for %s (pid %d): %w", p.Name, p.Pid(), ctx.Err())
	}
}

// Stdout returns what the process has written to stdout so far.
func (p *Proc) Stdout() string { return readFile(p.StdoutPath) }

// Stderr returns what the process has written to stderr so far.
func (p *Proc) Stderr() string { return readFile(p.StderrPath) }

// Output returns stdout followed by stderr, as written so far.
func (p *Proc) Output() string { return p.Stdout() + p.Stderr() }

// signalGroup sends sig to the process group; a group that is gone is fine.
func (p *Proc) signalGroup(sig syscall.Signal) {
	killGroup(p.cmd.Process.Pid, sig)
}

// dump logs the tail of stdout and stderr.
func (p *Proc) dump(t testing.TB) {
	t.Helper()
	state := "running"
	if p.Exited() {
		state = p.cmd.ProcessState.String()
	}
	t.Logf("testenv: %s (pid %d, %s) stdout:\n%s", p.Name, p.Pid(), state, tail(p.Stdout(), dumpLimit))
	t.Logf("testenv: %s (pid %d) stderr:\n%s", p.Name, p.Pid(), tail(p.Stderr(), dumpLimit))
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("<cannot read %s: %v>", path, err)
	}
	return string(b)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("<%d bytes cut>\n%s", len(s)-n, s[len(s)-n:])
}
