// Package procs chooses GOMAXPROCS for a daemon (kasd, agentd): --gomaxprocs.
//
// Why: every request crosses several goroutines in each daemon (the socket reader, quic-go's
// connection loop and send queue, the request's own goroutine). When one of them readies another
// while a P is idle, the Go scheduler wakes a second OS thread, which spins looking for work and
// usually finds none. On a host where a thread wake-up costs tens of microseconds (virtual
// machines), that is most of a daemon's CPU at low load and a large part of its latency:
// measured on a 2-core VM (docs/performance.md, "GOMAXPROCS follows the load"), one P instead of
// two took a 1 KiB GET through the local route from +750 to +550 µs and kasd's CPU per request
// at c=1 from 460 to 300 µs. One P is also a ceiling: a daemon that needs more than a core must
// get more Ps, and quickly.
//
// Settings:
//   - "auto" (the default): start with one P and follow the process's CPU use, sampled every
//     Interval (200 ms): double the Ps (up to Max, the runtime's own default, which honours a
//     container CPU limit) as soon as the process used more than Up (75 %) of the Ps it has;
//     halve them, never below what the CPU use needs at Target (60 %) per P, once it has needed
//     fewer for Hold (2 s) in a row. A burst therefore waits at most one interval for more
//     cores, and the count does not flap between two values.
//   - "runtime": leave GOMAXPROCS to the Go runtime (the number of CPUs, or the container's CPU
//     limit).
//   - N > 0: exactly N.
//
// A GOMAXPROCS environment variable wins over "auto": the operator chose.
//
// Concurrency: Controller.Run runs in its caller's goroutine until ctx ends, then restores the
// GOMAXPROCS it found. GOMAXPROCS belongs to the process, so only one Controller adjusts it at a
// time: a second one (two daemons in one test process) leaves it alone and says so.
//
// Metrics: <namespace>_gomaxprocs_changes_total{direction="up"|"down"}; the current value is
// the Go collector's go_sched_gomaxprocs_threads.
package procs
