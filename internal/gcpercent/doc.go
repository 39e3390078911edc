// Package gcpercent chooses the garbage collector's GOGC for kasd: --gogc.
//
// Why: a kasd that holds thousands of idle agents keeps a large live heap (about 26 KiB per
// agent, mostly quic-go's connection state) and allocates little (keep-alives). With Go's
// default GOGC=100 the runtime lets the heap grow to twice the live heap before it collects,
// and keeps that memory: measured with 2,000 idle agents (docs/scale.md), 60.5 KiB of RSS per
// agent at GOGC=100 against 50.4 at 25. Under request load the same lower GOGC would cost
// CPU on every request (GOGC=50 priced at +10 % tunnel CPU per request at c=64). The cost of
// a collector setting depends on how fast the process allocates, not on the heap's size: a
// cycle scans the live heap (cost ∝ live) and comes every GOGC/100 × live bytes allocated, so
// the collector's CPU is about
//
//	allocation rate × k × 100 / GOGC     (k: the collector's CPU per byte it scans)
//
// whatever the heap. "auto" therefore picks the lowest GOGC (down to Min, 10) whose
// collector CPU stays within a Budget (2 % of one core) at the measured allocation rate, and
// never above Max (100, Go's default): an idle kasd keeps its heap close to the live heap,
// and a kasd under load runs at GOGC=100 exactly as it would without this package.
//
// The policy, sampled every Interval (1 s) from runtime/metrics:
//   - k is measured: the collector's CPU per cycle (/cpu/classes/gc/total) divided by what the
//     cycle scanned (live heap, stacks and globals). Until a first cycle has been measured,
//     GOGC stays at Max.
//   - need = 100 × allocation rate × k / Budget, clamped to [Min, Max].
//   - Up at once: a need above the current GOGC is applied within one interval, so a burst
//     of requests never waits for a slower collector setting for longer than that.
//   - Down slowly: only after the need has stayed below 80 % of the current GOGC for Hold
//     (20 s) in a row, and then to the highest need seen during that time: no flapping.
//
// Lowering GOGC lowers the heap goal, but the runtime's scavenger keeps what the last
// collection had in use plus 10 %, so the high-water mark of a reconnect storm (at GOGC=100)
// would stay. After a step down the controller therefore calls debug.FreeOSMemory (a
// collection, then every free page back to the operating system), at most once per 5 minutes.
//
// Settings: "auto" (kasd's default), "runtime" (leave GOGC to Go: 100, or the GOGC
// environment variable), or a number (a fixed GOGC; "off" is not offered: kasd must
// collect). A GOGC environment variable wins over "auto": the operator chose.
//
// Concurrency: Controller.Run runs in its caller's goroutine until ctx ends, then restores the
// GOGC it found. GOGC belongs to the process, so only one Controller adjusts it at a time: a
// second one (two daemons in one test process) leaves it alone and says so.
//
// Metrics: <namespace>_gogc_changes_total{direction="up"|"down"},
// <namespace>_gc_memory_releases_total; the current value is the Go collector's
// go_gc_gogc_percent.
package gcpercent
