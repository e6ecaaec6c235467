//go:build !linux

package testenv

import (
	"io/fs"
	"os"
	"syscall"
)

// The servers testenv starts run on Linux only (skip.go skips a test whose
// tool is missing); these let the packages whose tests use testenv build
// and vet elsewhere (GOOS=windows go vet).

var sigStop = os.Kill

func procAttr() *syscall.SysProcAttr { return nil }

func killGroup(pid int, _ syscall.Signal) { killPid(pid) }

func killPid(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		_ = p.Kill()
	}
}

func ownedByUs(fs.FileInfo) bool { return false }
