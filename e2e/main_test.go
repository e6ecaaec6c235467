package e2e

import (
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// goleak checks the run, which ends with the tests skipped for a missing
// tool (nginx, minisign, vsftpd, squid, docker...), if any.
func TestMain(m *testing.M) { testenv.VerifyTestMain(m) }
