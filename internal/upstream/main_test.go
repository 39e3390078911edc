package upstream

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// httptest servers' connection goroutines may still be unwinding when goleak looks.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}
