package suite

import (
	"cmp"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"
)

// result is what one scenario measured and whether its bound held.
type result struct {
	name, about string
	bound       string // what must hold
	boundNote   string // what was measured against it, when that is not just "lost"
	sent, ok    int
	failures    map[string]int // by status and error code, or transport error
	lbRetries   int64          // connections a kasd refused, sent to another kasd
	lost        int            // requests counted against the bound
	allowed     int            // the most lost requests allowed; -1 when the bound is not a count
	allowedText string         // the table's "allowed" column when not just allowed
	broken      bool
	recovery    time.Duration // fault → end of the last counted request; -1 when none
	p50, p99    time.Duration
	maxLatency  time.Duration
	placement   []int
	notes       []string
	excerpts    []string // warn and error log lines, when the bound broke
	settle      string   // why the fleet was not whole again after the scenario
	settleTime  time.Duration
	settleWhy   string  // the last thing that was not whole yet
	cpuBusy     float64 // the host's CPU busy during the scenario, percent (every process, not only ours)
	loadavg     string
	breakdown   []string // where the failures were: by kasd, by agent, when
	faulted     []string // the kasd the fault touched (their peer links may go down)
	collateral  int      // peer links lost between kasd the fault did not touch: the host stalled
	err         error    // the scenario could not run as planned
}

func (r *result) pass() bool { return r.err == nil && !r.broken && r.settle == "" }

// summarize counts r's requests; counted says which count against the bound, and recovery runs
// from fault to the end of the last of them.
func summarize(r *loadRun, fault time.Duration, counted func(sample) bool) *result {
	res := &result{failures: map[string]int{}, recovery: -1, allowed: -1, lbRetries: r.lbRetries.Load()}
	lat := make([]time.Duration, 0, len(r.samples))
	var last time.Duration = -1
	for _, x := range r.samples {
		res.sent++
		if x.outcome == "" {
			res.ok++
		} else {
			res.failures[x.outcome]++
		}
		if counted(x) {
			res.lost++
			last = max(last, x.end)
		}
		lat = append(lat, x.latency())
	}
	if last >= 0 {
		res.recovery = max(0, last-fault)
	}
	res.breakdown = breakdown(r, fault)
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		res.p50, res.p99, res.maxLatency = lat[n/2], lat[n*99/100], lat[n-1]
	}
	return res
}

// limit sets the bound: at most allowed counted requests (allowed < 0: the caller decides).
func (r *result) limit(allowed int, bound string) {
	r.allowed, r.bound = allowed, bound
	if allowed >= 0 {
		r.broken = r.lost > allowed
	}
}

// stalled reports a broken bound on a host that stalled during the scenario: peer links between
// kasd that the fault did not touch went down (their idle timeout is 1 s), which is a second
// fault, beyond what the bound is for.
func (r *result) stalled() bool { return r.err == nil && r.broken && r.collateral > 0 }

func (r *result) verdict() string {
	switch {
	case r.err != nil:
		return "ERROR"
	case r.stalled():
		return "FAIL (host stall)"
	case r.broken:
		return "FAIL"
	case r.settle != "":
		return "FAIL (no recovery)"
	}
	return "pass"
}

func (r *result) failureString() string {
	if len(r.failures) == 0 {
		return "none"
	}
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range r.failures {
		all = append(all, kv{k, v})
	}
	slices.SortFunc(all, func(a, b kv) int { return cmp.Or(b.v-a.v, strings.Compare(a.k, b.k)) })
	var parts []string
	for _, e := range all {
		parts = append(parts, fmt.Sprintf("%d × %s", e.v, e.k))
	}
	return strings.Join(parts, ", ")
}

func (r *result) recoveryString() string {
	if r.recovery < 0 {
		return "-"
	}
	return r.recovery.Round(10 * time.Millisecond).String()
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "-- %s: %s\n", r.name, r.verdict())
	if r.about != "" {
		fmt.Fprintf(w, "   fault:     %s\n", r.about)
	}
	if r.sent > 0 {
		fmt.Fprintf(w, "   requests:  %d sent, %d ok, %d failed: %s\n", r.sent, r.ok, r.sent-r.ok, r.failureString())
		fmt.Fprintf(w, "   latency:   p50 %v, p99 %v, max %v; %d connections refused by a kasd and sent to another\n",
			r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.maxLatency.Round(time.Millisecond), r.lbRetries)
	}
	fmt.Fprintf(w, "   bound:     %s\n", r.bound)
	if r.allowed >= 0 {
		fmt.Fprintf(w, "   measured:  %d lost (allowed %d)\n", r.lost, r.allowed)
	}
	if r.boundNote != "" {
		fmt.Fprintf(w, "   measured:  %s\n", r.boundNote)
	}
	if r.sent > 0 {
		fmt.Fprintf(w, "   recovery:  %s (fault → end of the last request counted against the bound)\n", r.recoveryString())
	}
	if r.sent > 0 {
		fmt.Fprintf(w, "   host:      CPU %.0f%% busy (all processes on the machine, %d cores), load average %s\n", r.cpuBusy, runtime.NumCPU(), r.loadavg)
	}
	for _, b := range r.breakdown {
		fmt.Fprintf(w, "   failures:  %s\n", b)
	}
	for _, n := range r.notes {
		fmt.Fprintf(w, "   note:      %s\n", n)
	}
	if r.collateral > 0 {
		fmt.Fprintf(w, "   host:      %d peer links between kasd the fault did not touch timed out (1 s idle): the host stalled, a second fault\n", r.collateral)
	}
	if r.err != nil {
		fmt.Fprintf(w, "   error:     %v\n", r.err)
	}
	if r.settle != "" {
		fmt.Fprintf(w, "   after:     %s\n", r.settle)
	} else if r.settleWhy != "" {
		fmt.Fprintf(w, "   after:     fleet whole again %v after the load stopped (waited for: %s)\n", r.settleTime.Round(10*time.Millisecond), r.settleWhy)
	}
	for _, e := range r.excerpts {
		fmt.Fprintf(w, "   log: %s\n", e)
	}
}

// printTable prints one line per scenario and the placement at the end of the run.
func printTable(w io.Writer, results []*result, f *fleet) {
	fmt.Fprintf(w, "\n== qkas chaos: %d agentd (2 connections each), 3 kasd, 3 etcd, %d concurrent requests\n", len(f.agents), f.cfg.Concurrency)
	fmt.Fprintf(w, "%-11s %8s %8s %7s %7s %9s %9s  %-18s %s\n", "scenario", "sent", "ok", "failed", "lost", "allowed", "recovery", "result", "max latency")
	for _, r := range results {
		allowed := "-"
		if r.allowed >= 0 {
			allowed = fmt.Sprint(r.allowed)
		}
		if r.allowedText != "" {
			allowed = r.allowedText
		}
		if r.name == "placement" {
			fmt.Fprintf(w, "%-11s %s  %s\n", r.name, r.boundNote, r.verdict())
			continue
		}
		fmt.Fprintf(w, "%-11s %8d %8d %7d %7d %9s %9s  %-18s %v\n", r.name, r.sent, r.ok, r.sent-r.ok, r.lost, allowed,
			r.recoveryString(), r.verdict(), r.maxLatency.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "placement at the end: kasd_agent_connections %s\n", placementString(f, f.connections()))
}

// breakdown says where r's failed requests were: through which kasd, to which agents, and
// when relative to the fault.
func breakdown(r *loadRun, fault time.Duration) []string {
	byKasd := map[int]int{}
	byAgent := map[int]int{}
	var first, last time.Duration = -1, -1
	n := 0
	for _, x := range r.samples {
		if x.outcome == "" {
			continue
		}
		n++
		byKasd[int(x.kasd)]++
		byAgent[int(x.agent)]++
		if first < 0 || x.end < first {
			first = x.end
		}
		last = max(last, x.end)
	}
	if n == 0 {
		return nil
	}
	f := r.s.f
	var ks []string
	for i, k := range f.kasd {
		if byKasd[i] > 0 {
			ks = append(ks, fmt.Sprintf("%s %d", k.id, byKasd[i]))
		}
	}
	type kv struct{ a, n int }
	var as []kv
	for a, c := range byAgent {
		as = append(as, kv{a, c})
	}
	slices.SortFunc(as, func(x, y kv) int { return cmp.Or(y.n-x.n, x.a-y.a) })
	var top []string
	for i, e := range as {
		if i == 5 {
			top = append(top, "…")
			break
		}
		top = append(top, fmt.Sprintf("%s %d", f.agents[e.a].id, e.n))
	}
	return []string{
		fmt.Sprintf("through %s; to %d agents: %s", strings.Join(ks, ", "), len(as), strings.Join(top, ", ")),
		fmt.Sprintf("ended between %+.2fs and %+.2fs from the fault", (first - fault).Seconds(), (last - fault).Seconds()),
	}
}
