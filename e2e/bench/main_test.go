package bench

import (
	"testing"

	"github.com/dpcache/dpcache/e2e/testenv"
)

// The run ends with the benchmarks skipped for a missing tool (nginx), if any.
func TestMain(m *testing.M) { testenv.Main(m) }
