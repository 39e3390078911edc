// Package fleetsim runs a fleet of agents in one process with agentd's real connection code:
// every simulated agent is an agentd.Agent (New, Run) with its own token, its own QUIC dialer
// and therefore its own UDP socket, so kasd sees one source address and port per agent as in
// production, and every keep-alive, reconnect, backoff and admission retry is agentd's own.
// Each agent serves one in-process service ("svc") answering a small body.
//
// The scale benchmark (benchmarks/runner/scale.go) starts it as processes of their own
// (benchmarks/cmd/fleetsim) in a network namespace joined to kasd's by a veth pair. A process
// needs one file descriptor per agent and raises its soft limit to the hard one; MaxAgents is
// how many agents fit under a limit (three quarters of it: 15,000 at 20,000), and the
// benchmark splits a larger fleet over several processes with Split (contiguous shares, each
// agent in exactly one) and WriteTokens, and sums what each reports in its Status file.
//
// Config.MaxConnecting bounds how many of the process's agents connect at once
// (agentd.Config.ConnectSlots): real agents each have a CPU of their own, and thousands of
// handshakes at once in one process on one core starve each other past their timeouts.
//
// Invariants: Run owns one goroutine per started agent and returns only when all have
// returned; Started and Connected may be called from any goroutine while it runs.
package fleetsim
