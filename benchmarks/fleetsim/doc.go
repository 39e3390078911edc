// Package fleetsim runs a fleet of agents in one process with agentd's real connection code:
// every simulated agent is an agentd.Agent (New, Run) with its own token, its own QUIC dialer
// and therefore its own UDP socket, so kasd sees one source address and port per agent as in
// production, and every keep-alive, reconnect, backoff and admission retry is agentd's own.
// Each agent serves one in-process service ("svc") answering a small body.
//
// The scale benchmark (benchmarks/runner/scale.go) starts it as a process of its own
// (benchmarks/cmd/fleetsim) in a network namespace joined to kasd's by a veth pair; the
// process needs one file descriptor per agent and raises its limit to the hard maximum.
package fleetsim
