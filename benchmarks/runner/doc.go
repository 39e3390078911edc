// Package runner runs qkas's benchmarks: it builds (or reuses) bin/kasd, bin/agentd and
// bin/kasctl, starts real processes (kasd, agentd; two kasd sharing an embedded etcd when the
// fleet is available), serves the target service and the baselines in-process or, where their
// CPU is measured (the raw quic-go server, the ReverseProxy hop), in child processes that
// re-execute the runner's program (ChildArg, ChildMain), drives load with package load, and
// writes results.json, REPORT.md and PNG plots into one results directory.
//
// # Scenarios
//
// latency, throughput, hol (head-of-line isolation under loss, network namespaces), scale
// (thousands of agents on one kasd) and failover (kill -9 of the kasd holding an agent). Each
// scenario measures qkas and its baseline in the same run, alternating rounds where it helps, so
// that ratios hold on a noisy machine. A scenario that cannot run (no root, no fleet) is recorded
// as skipped with the reason; the run goes on.
//
// # Ownership
//
// Run owns every process and goroutine it starts: each scenario stops its processes, servers and
// namespaces before returning, also on error (deferred cleanups), and Run returns when all are
// gone. Child processes get SIGKILL from the kernel if the runner dies (Pdeathsig). A child role
// (ChildMain) runs until its context ends, then closes its socket and waits for its goroutines.
//
// # Measures
//
// Tunnel CPU is utime+stime of kasd and agentd from /proc/<pid>/stat (clock ticks, 10 ms),
// summed over the measured rounds of a route and divided by its requests. RSS is VmRSS from
// /proc/<pid>/status. UDP datagrams per request come from the Udp InDatagrams counter of
// /proc/net/snmp (the whole network namespace), minus an idle interval of the same length.
package runner
