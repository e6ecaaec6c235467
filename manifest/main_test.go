package manifest

import (
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// The run ends with the tests skipped for a missing tool (minisign), if any.
func TestMain(m *testing.M) { testenv.Main(m) }
