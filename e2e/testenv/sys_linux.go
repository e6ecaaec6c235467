package testenv

import (
	"io/fs"
	"os"
	"syscall"
)

// sigStop pauses a process.
const sigStop = syscall.SIGSTOP

// procAttr puts a child in its own process group and kills it with the
// test binary.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid: true,
		// If the test binary dies (a panic, a -timeout), take the child with it.
		Pdeathsig: syscall.SIGKILL,
	}
}

// killGroup sends sig to the process group led by pid.
func killGroup(pid int, sig syscall.Signal) {
	// The group id is the leader's pid (Setpgid). Callers signal the group
	// only while the leader runs or just after it exited: Linux does not reuse
	// a pid while a group of that id has members, and allocates pids
	// sequentially, so the id cannot name someone else's group by then.
	_ = syscall.Kill(-pid, sig)
}

// killPid kills one process.
func killPid(pid int) { _ = syscall.Kill(pid, syscall.SIGKILL) }

// ownedByUs reports whether this process's user owns fi.
func ownedByUs(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
