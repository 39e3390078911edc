// Package e2e holds process-level end-to-end tests: they build the real bin/kasd, bin/agentd and
// bin/kasctl (or use prebuilt ones from $QKAS_BIN_DIR), run them as separate processes on
// loopback, and talk to them the way a user does: kasctl for secrets, HTTP and curl for the API,
// /readyz and /metrics for state, SIGTERM and SIGKILL for shutdown. quickstart.sh is the README
// quickstart as a script, and TestQuickstartScript runs it.
//
// The package has no non-test code. The harness (harness_test.go) is meant to be reused by further
// e2e tests (a fleet of kasd on etcd):
//   - startKasd / startAgentd start a daemon, wait for its /readyz, and return a handle whose
//     fields name its addresses; every process a test starts is SIGKILLed and reaped in
//     t.Cleanup, so no process outlives its test, and the tail of its log is printed when the test
//     failed.
//   - Proc.Stop sends SIGTERM and waits (SIGKILL after a bound); Proc.Kill is the abrupt end.
//   - kasctl, mintJWT, get and metric drive the binaries and read their state.
//
// The tests are skipped by `go test -short`. Nothing here sleeps for correctness: every wait polls
// a condition with a generous deadline, so a loaded machine makes them slower, not flaky.
package e2e
