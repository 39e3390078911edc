package main

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine run starts ends when it returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// httptest servers' and idle clients' connection goroutines may still be unwinding.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}
