package runner

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine the runner starts must be gone when Run returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
