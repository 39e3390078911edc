package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/qkas/qkas/benchmarks/plot"
)

func findLatency(l *LatencyResults, route string, c int) *LatencyRun {
	if l == nil {
		return nil
	}
	for i := range l.Runs {
		if l.Runs[i].Route == route && l.Runs[i].Concurrency == c {
			return &l.Runs[i]
		}
	}
	return nil
}

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func us(v float64) string { return fmt.Sprintf("%.0f µs", v) }

// quantiles writes "a / b / c µs".
func quantiles(vs ...float64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%.0f", v)
	}
	return strings.Join(parts, " / ") + " µs"
}

// ratios writes "a₁/b₁ / a₂/b₂ …" as "1.02× / 0.95×".
func ratios(a, b []float64) string {
	parts := make([]string, len(a))
	for i := range a {
		parts[i] = ratio(a[i], b[i])
	}
	return strings.Join(parts, " / ")
}

// headlineRoutes are the latency rows' routes, references first; routeLabel names them.
var (
	headlineRoutes = []string{routeRawQUIC, routeReverseProxy, routeTCPRelay, "local", "forwarded"}
	routeLabel     = map[string]string{
		routeRawQUIC:      "raw quic-go stream per request",
		routeReverseProxy: "one httputil.ReverseProxy hop",
		routeTCPRelay:     "one TCP byte relay (no parsing)",
		"local":           "local route",
		"forwarded":       "forwarded route",
	}
)

// metricNote appends "(reference; note)" or "(note)" to a metric: references are not qkas.
func metricNote(metric, route, note string) string {
	var parts []string
	if !isQkas(route) {
		parts = append(parts, "reference")
	}
	if note != "" {
		parts = append(parts, note)
	}
	if len(parts) == 0 {
		return metric
	}
	return metric + " (" + strings.Join(parts, "; ") + ")"
}

// Targets, stated where the figure is.
var (
	targetAddedP50   = map[string]string{"local": "added ≤ 150 µs", "forwarded": "added ≤ 250 µs"}
	targetCPU        = "≤ 60 µs"
	targetThroughput = map[string]string{"local": "≥ 0.70× raw quic-go", "forwarded": "≥ 0.50× raw quic-go"}
	targetDatagrams  = map[string]string{"local": "≤ 2.2", "forwarded": "≤ 4.4 (2.2 per QUIC hop, 2 hops)"}
)

func isQkas(route string) bool { return route == "local" || route == "forwarded" }

// floorNote is "floor: ..." for a qkas row: what the two references that bound any such
// path from below (a process relaying bytes without parsing them, and one QUIC stream per
// request) measured in the same run, or "" without them. The route crosses both: a relay's
// two TCP legs (client → kasd, agentd → service) and a QUIC leg between two processes.
func floorNote(l *LatencyResults, c int, v func(*LatencyRun) float64, verb string) string {
	relay, raw := findLatency(l, routeTCPRelay, c), findLatency(l, routeRawQUIC, c)
	if relay == nil || raw == nil {
		return ""
	}
	what := "raw quic-go"
	if verb == "costs" {
		what = "raw quic-go's server end"
	}
	return fmt.Sprintf("floor: a TCP byte relay %s %.0f µs, %s %.0f µs", verb, v(relay), what, v(raw))
}

// headline picks the figures the project's targets are stated in, next to their references.
func headline(r *Results) []HeadlineRow {
	var rows []HeadlineRow
	if l := r.Latency; l != nil {
		for _, c := range r.Sizes.LatencyConcurrency {
			d := findLatency(l, "direct", c)
			if d == nil {
				continue
			}
			each := func(f func(route string, q *LatencyRun)) {
				for _, route := range headlineRoutes {
					if q := findLatency(l, route, c); q != nil {
						f(route, q)
					}
				}
			}
			each(func(route string, q *LatencyRun) {
				row := HeadlineRow{Scenario: "latency", Metric: metricNote(fmt.Sprintf("p50, 1 KiB GET, c=%d, %s", c, routeLabel[route]), route, ""),
					Qkas: us(q.P50us), Baseline: us(d.P50us) + " direct", Ratio: ratio(q.P50us, d.P50us)}
				if c == 1 {
					note := "added " + us(q.AddedP50us)
					if isQkas(route) {
						if f := floorNote(l, c, func(q *LatencyRun) float64 { return q.AddedP50us }, "adds"); f != "" {
							note += "; " + f
						}
					}
					row.Metric = metricNote(fmt.Sprintf("p50, 1 KiB GET, c=%d, %s", c, routeLabel[route]), route, note)
					row.Target = targetAddedP50[route]
				}
				if c == 1 || isQkas(route) {
					rows = append(rows, row)
				}
			})
			each(func(route string, q *LatencyRun) {
				if c == 1 || isQkas(route) {
					rows = append(rows, HeadlineRow{Scenario: "latency", Metric: metricNote(fmt.Sprintf("p99, c=%d, %s", c, routeLabel[route]), route, ""),
						Qkas: us(q.P99us), Baseline: us(d.P99us) + " direct", Ratio: ratio(q.P99us, d.P99us)})
				}
			})
			if c < 64 {
				continue
			}
			each(func(route string, q *LatencyRun) {
				rows = append(rows, HeadlineRow{Scenario: "latency", Metric: metricNote(fmt.Sprintf("req/s, c=%d, %s", c, routeLabel[route]), route, ""),
					Qkas: fmt.Sprintf("%.0f", q.RPS), Baseline: fmt.Sprintf("%.0f direct", d.RPS), Ratio: ratio(q.RPS, d.RPS)})
			})
			rp := findLatency(l, routeReverseProxy, c)
			each(func(route string, q *LatencyRun) {
				row := HeadlineRow{Scenario: "latency", Metric: fmt.Sprintf("tunnel CPU per request, c=%d, %s", c, routeLabel[route]),
					Qkas: fmt.Sprintf("%.1f µs", q.TunnelCPUus), Baseline: "–", Ratio: "–"}
				switch {
				case route == routeRawQUIC:
					row.Metric = fmt.Sprintf("CPU per request, c=%d, raw quic-go server process (reference; client end not counted)", c)
				case route == routeReverseProxy:
					row.Metric = fmt.Sprintf("CPU per request, c=%d, one httputil.ReverseProxy process (reference)", c)
				case route == routeTCPRelay:
					row.Metric = fmt.Sprintf("CPU per request, c=%d, one TCP byte relay process, no parsing (reference: the least a proxy process costs here)", c)
				case rp != nil:
					row.Baseline = fmt.Sprintf("%.1f µs one ReverseProxy hop", rp.TunnelCPUus)
					row.Ratio = ratio(q.TunnelCPUus, rp.TunnelCPUus)
					if f := floorNote(l, c, func(q *LatencyRun) float64 { return q.TunnelCPUus }, "costs"); f != "" {
						row.Metric += " (" + f + ")"
					}
				}
				if isQkas(route) {
					row.Target = targetCPU
				}
				rows = append(rows, row)
			})
		}
		var raw *DatagramRun
		for i := range l.Datagrams {
			if l.Datagrams[i].Route == routeRawQUIC {
				raw = &l.Datagrams[i]
			}
		}
		for _, route := range []string{routeRawQUIC, "local", "forwarded"} {
			for _, dg := range l.Datagrams {
				if dg.Route != route {
					continue
				}
				row := HeadlineRow{Scenario: "latency", Metric: metricNote("UDP datagrams per 1 KiB GET, c=1, "+routeLabel[route], route, ""),
					Qkas: fmt.Sprintf("%.2f", dg.PerRequest), Baseline: "–", Ratio: "–", Target: targetDatagrams[route]}
				if raw != nil && route != routeRawQUIC {
					row.Baseline = fmt.Sprintf("%.2f raw quic-go", raw.PerRequest)
					row.Ratio = ratio(dg.PerRequest, raw.PerRequest)
				}
				rows = append(rows, row)
			}
		}
	}
	if t := r.Throughput; t != nil {
		for _, dir := range []string{"download", "upload"} {
			raw := t.find("raw-quic", dir)
			direct := t.find("direct", dir)
			for _, route := range []string{"local", "forwarded"} {
				q := t.find(route, dir)
				if q == nil || raw == nil {
					continue
				}
				row := HeadlineRow{Scenario: "throughput", Metric: fmt.Sprintf("%s MB/s, %d MiB, %s route", dir, t.Bytes>>20, route),
					Qkas: fmt.Sprintf("%.0f", q.MBps), Baseline: fmt.Sprintf("%.0f raw quic-go", raw.MBps), Ratio: ratio(q.MBps, raw.MBps), Target: targetThroughput[route]}
				if direct != nil {
					row.Baseline += fmt.Sprintf(" (direct %.0f)", direct.MBps)
				}
				rows = append(rows, row)
			}
		}
	}
	if h := r.HOL; h != nil {
		for _, loss := range r.Sizes.HOLLossPercent {
			for _, bg := range []string{holNone, holBulk} {
				q, b := h.find("qkas", loss, bg), h.find("h2-tcp", loss, bg)
				if q == nil || b == nil {
					continue
				}
				rows = append(rows, HeadlineRow{Scenario: "head-of-line",
					Metric: fmt.Sprintf("small-request p50 / p99 / p99.9 at %g%% loss, %s", loss, map[string]string{holNone: "no bulk", holBulk: "with bulk"}[bg]),
					Qkas:   quantiles(q.P50us, q.P99us, q.P999us), Baseline: quantiles(b.P50us, b.P99us, b.P999us) + " HTTP/2 over 1 TCP",
					Ratio: ratios([]float64{q.P50us, q.P99us, q.P999us}, []float64{b.P50us, b.P99us, b.P999us})})
			}
		}
		if q, alone := h.find("qkas", 0, holSlow), h.find("qkas", 0, holNone); q != nil && alone != nil {
			row := HeadlineRow{Scenario: "head-of-line",
				Metric: fmt.Sprintf("small-request p50 / p99 at 0%% loss, %d slow readers (%.0f MB/s each) on the agent connection", q.Readers, float64(q.ReadRate)/1e6),
				Qkas:   quantiles(q.P50us, q.P99us), Baseline: quantiles(alone.P50us, alone.P99us) + " without slow readers",
				Ratio: ratios([]float64{q.P50us, q.P99us}, []float64{alone.P50us, alone.P99us})}
			if b := h.find("h2-tcp", 0, holSlow); b != nil {
				row.Baseline += " (HTTP/2 over 1 TCP with them: " + quantiles(b.P50us, b.P99us) + ")"
			}
			rows = append(rows, row)
		}
	}
	if s := r.Scale; s != nil {
		for _, p := range s {
			if p.Err != "" {
				rows = append(rows, HeadlineRow{Scenario: "scale", Metric: fmt.Sprintf("%d agents", p.Agents), Qkas: "failed: " + p.Err, Baseline: "–", Ratio: "–"})
				continue
			}
			rows = append(rows, HeadlineRow{Scenario: "scale", Metric: fmt.Sprintf("kasd RSS per idle agent, %d agents", p.Agents),
				Qkas: fmt.Sprintf("%.1f KiB", p.KasdRSSKiBPerAgent), Baseline: "–", Ratio: "–", Target: "≤ 40 KiB"})
			rows = append(rows, HeadlineRow{Scenario: "scale", Metric: fmt.Sprintf("kasd idle CPU, %d agents", p.Agents),
				Qkas: fmt.Sprintf("%.1f%% of a core", p.KasdCPUPct), Baseline: "–", Ratio: "–"})
			rows = append(rows, HeadlineRow{Scenario: "scale", Metric: fmt.Sprintf("kasd restart (kill -9) settled, %d agents", p.Agents),
				Qkas: fmt.Sprintf("%.1f s, %.2f attempts/agent", p.RestartSettleS, p.AttemptsPerAgent), Baseline: "–", Ratio: "–", Target: "≤ 60 s, ≤ 2"})
			rows = append(rows, HeadlineRow{Scenario: "scale", Metric: fmt.Sprintf("p50 to one agent, %d others connected", p.Agents),
				Qkas: us(p.RouteP50us), Baseline: us(p.RouteP50OneAgent) + " alone", Ratio: ratio(p.RouteP50us, p.RouteP50OneAgent)})
			if p.RouteP50FleetStopped > 0 {
				rows = append(rows, HeadlineRow{Scenario: "scale", Metric: fmt.Sprintf("p50 to one agent, %d others connected, their simulator processes stopped", p.Agents),
					Qkas: us(p.RouteP50FleetStopped), Baseline: us(p.RouteP50OneAgent) + " alone", Ratio: ratio(p.RouteP50FleetStopped, p.RouteP50OneAgent), Target: "±10 %"})
			}
		}
	}
	rows = append(rows, kubernetesHeadline(r)...) // kubernetes.go
	rows = append(rows, tcpHeadline(r)...)        // tcp.go: the agent over TCP next to QUIC
	if f := r.Failover; f != nil {
		rows = append(rows, HeadlineRow{Scenario: "failover", Metric: "time to first success after kill -9 of the holding kasd",
			Qkas: recovery(f, r.Sizes), Baseline: "–", Ratio: "–", Target: "≤ 2 s"})
	}
	return rows
}

// The files WriteReports writes into a results directory, next to results.json.
const (
	ReportFile  = "REPORT.md"  // one page: the headline ratios first, then the plots
	DetailsFile = "DETAILS.md" // every table, the CPU profile, the caveats
)

// WriteReports (re)writes REPORT.md, DETAILS.md and the plots drawn from figures alone (latency
// quantiles per route) in dir, from dir/results.json. It runs after each run, and on its own
// (qkasbench --report DIR) to redraw a past run with today's report code: the headline rows
// are made again from the run's figures, so the two pages may word them otherwise than the
// headline stored in results.json, which is left as the run wrote it.
func WriteReports(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, "results.json"), err)
	}
	r.Headline = headline(&r) // today's rows, from the run's figures
	summary, err := summaryPlots(dir, &r)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ReportFile), []byte(onePage(&r, summary)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, DetailsFile), []byte(details(&r)), 0o644)
}

// report is REPORT.md as the runner writes it at the end of a run; qkasbench then calls
// WriteReports, which adds DETAILS.md and the summary plots.
func report(r *Results) string { return onePage(r, nil) }

// keyRows are the headline rows a reader needs first: qkas against its baseline, one row per
// question (added latency, tail latency and rate under load, CPU, datagrams, throughput, the worst
// head-of-line case, the largest scale point, failover). The reference systems' own rows and the
// milder head-of-line cases stay in DETAILS.md.
func keyRows(r *Results) []HeadlineRow {
	var maxLoss float64
	if r.HOL != nil {
		for _, l := range r.Sizes.HOLLossPercent {
			maxLoss = max(maxLoss, l)
		}
	}
	maxAgents := 0
	if r.Scale != nil {
		for _, p := range r.Scale {
			if p.Err == "" {
				maxAgents = max(maxAgents, p.Agents)
			}
		}
	}
	var rows []HeadlineRow
	for _, h := range r.Headline {
		m := h.Metric
		keep := false
		switch h.Scenario {
		case "latency":
			keep = !strings.Contains(m, "reference") && !strings.HasPrefix(m, "CPU per request") &&
				(strings.HasPrefix(m, "p50, 1 KiB GET, c=1,") || strings.HasPrefix(m, "p99, c=64,") || strings.HasPrefix(m, "req/s, c=64,") ||
					strings.HasPrefix(m, "tunnel CPU") || strings.HasPrefix(m, "UDP datagrams"))
		case "throughput", "failover", "kubernetes", "transport": // transport: tcp.go
			keep = true
		case "head-of-line":
			keep = strings.Contains(m, fmt.Sprintf(" at %g%% loss, with bulk", maxLoss)) || strings.Contains(m, "slow readers")
		case "scale":
			keep = strings.HasSuffix(m, fmt.Sprintf(" %d agents", maxAgents)) && strings.Contains(m, "RSS") ||
				strings.Contains(m, fmt.Sprintf("%d others connected", maxAgents)) || strings.HasPrefix(m, "reconnect storm") && strings.HasSuffix(m, fmt.Sprintf(" %d agents", maxAgents))
			if strings.Contains(h.Qkas, "failed") {
				keep = true
			}
		}
		if keep {
			rows = append(rows, h)
		}
	}
	return rows
}

// onePage is REPORT.md: what was run where, the key ratios, the plots, and where the rest is.
func onePage(r *Results, summary []string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	w("# qkas benchmark report\n\n")
	w("%s preset, %s, %.0f s, commit `%.12s` · %d cores (%s), %s, load average at start %s\n\n",
		r.Preset, r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Seconds, r.Commit, m.Cores, m.CPUModel, m.GoVersion, firstFields(m.LoadAvg, 3))
	w("Each qkas figure is measured in the same run as its baseline; compare the **ratios** across machines, not the absolute figures. Every table, the CPU profile and the caveats: [%s](%s).\n\n", DetailsFile, DetailsFile)
	w("## Headline\n\n| scenario | metric | qkas | baseline | ratio | target |\n|---|---|---|---|---|---|\n")
	for _, h := range keyRows(r) {
		w("| %s | %s | %s | %s | **%s** | %s |\n", h.Scenario, h.Metric, h.Qkas, h.Baseline, h.Ratio, h.Target)
	}
	if len(r.Skipped) > 0 {
		w("\nNot measured:")
		for _, k := range sortedStrings(r.Skipped) {
			w(" **%s** (%s);", k, r.Skipped[k])
		}
		w("\n")
	}
	var plots []string
	plots = append(plots, summary...)
	if r.Latency != nil {
		plots = append(plots, r.Latency.Plots...)
	}
	if r.Throughput != nil {
		plots = append(plots, r.Throughput.Plots...)
	}
	if r.HOL != nil {
		plots = append(plots, r.HOL.Plots...)
	}
	if len(r.Scale) > 0 {
		plots = append(plots, scalePlot)
	}
	if r.Failover != nil {
		plots = append(plots, r.Failover.Plots...)
	}
	if len(plots) > 0 {
		w("\n## Plots\n\n")
		for _, p := range plots {
			w("- [%s](%s)\n", strings.TrimSuffix(p, ".png"), p)
		}
	}
	return b.String()
}

func firstFields(s string, n int) string {
	f := strings.Fields(s)
	return strings.Join(f[:min(n, len(f))], " ")
}

func sortedStrings(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// details is DETAILS.md: every headline row, then each scenario's tables.
func details(r *Results) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# qkas benchmark details\n\n")
	w("Run %s (%s preset, %.0f s) · commit `%s` · the one-page summary: [%s](%s)\n\n", r.Started.UTC().Format("2006-01-02 15:04:05 UTC"), r.Preset, r.Seconds, r.Commit, ReportFile, ReportFile)
	m := r.Machine
	w("Machine: %d cores, %s, kernel %s, %s, memory %s, load average at start %s\n\n", m.Cores, m.CPUModel, m.Kernel, m.GoVersion, m.MemTotal, m.LoadAvg)
	w("Every qkas figure was measured in the same run as its baseline, alternating rounds where it helps; ratios are what to compare across machines.\n\n")
	w("## Every headline figure\n\n| scenario | metric | qkas | baseline | ratio | target |\n|---|---|---|---|---|---|\n")
	for _, h := range r.Headline {
		w("| %s | %s | %s | %s | %s | %s |\n", h.Scenario, h.Metric, h.Qkas, h.Baseline, h.Ratio, h.Target)
	}
	if len(r.Skipped) > 0 {
		w("\nNot measured:\n\n")
		for _, k := range sortedStrings(r.Skipped) {
			w("- **%s**: %s\n", k, r.Skipped[k])
		}
	}
	if l := r.Latency; l != nil {
		for _, miss := range l.Missing {
			w("- %s\n", miss)
		}
	}
	if l := r.Latency; l != nil {
		w("\n## 1. Latency (1 KiB GET)\n\n%d alternating rounds per concurrency. Routes: direct (client → service), raw-quic (one quic-go stream per request to a server process that answers %d bytes: the transport's floor), reverseproxy (one plain httputil.ReverseProxy hop in its own process, in front of the same service), tcp-relay (a process relaying each connection's bytes to the service, io.Copy both ways, no parsing: what any proxy process costs on this machine), local (client → kasd → agentd → service) and forwarded (client → kasd B → kasd A → agentd → service). Added = route − direct. CPU/req = utime+stime of the route's own processes during its rounds / requests: kasd and agentd (and kasd B) for qkas, the proxy for reverseproxy and tcp-relay, the server process for raw-quic (its client end runs in the load generator and is not counted); for direct, every one of those processes (their idle cost). Network namespace: %s.\n\n", l.Rounds, l.BodyBytes, l.Namespace)
		w("| c | route | requests | failed | p50 | p90 | p99 | p99.9 | req/s | added p50 | added p99 | CPU/req |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range l.Runs {
			w("| %d | %s | %d | %d | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | %.1f µs |\n", x.Concurrency, x.Route, x.Requests, x.Failed, x.P50us, x.P90us, x.P99us, x.P999us, x.RPS,
				optUs(x.Route != "direct", x.AddedP50us), optUs(x.Route != "direct", x.AddedP99us), x.TunnelCPUus)
		}
		w("\nLatencies in µs.\n")
		if len(l.Datagrams) > 0 {
			w("\n### UDP datagrams per request\n\nSequential (c=1) 1 KiB GETs per route, then as long with no request; `Udp: InDatagrams` of /proc/<kasd pid>/net/snmp (every UDP socket of the scenario's network namespace, both directions; each datagram of a GSO batch counted) over each interval. Per request = (during requests − idle) / requests, the median of the rounds (each round's in brackets). The TCP-only routes (direct, reverseproxy, tcp-relay) show the background traffic: ≈ 0 in a namespace of its own.\n\n")
			w("| route | requests | datagrams | idle datagrams | seconds | per request |\n|---|---|---|---|---|---|\n")
			for _, d := range l.Datagrams {
				rounds := make([]string, len(d.RoundsPerRequest))
				for i, v := range d.RoundsPerRequest {
					rounds[i] = fmt.Sprintf("%.2f", v)
				}
				w("| %s | %d | %d | %d | %.2f | %.2f (%s) |\n", d.Route, d.Requests, d.Datagrams, d.IdleDatagrams, d.Seconds, d.PerRequest, strings.Join(rounds, ", "))
			}
		}
		w("\n")
		for _, p := range l.Plots {
			w("![%s](%s)\n", p, p)
		}
		if p := l.Profile; p != nil {
			w("\n### kasd CPU profile, local route, c=64 (%d s)\n\n", p.Seconds)
			if p.Err != "" {
				w("Profile failed: %s\n", p.Err)
			}
			if p.Top != "" {
				w("[%s](%s) — `go tool pprof -top`: flat, cumulative, and the callers of system calls:\n\n```\n%s```\n", p.File, p.File, p.Top)
			}
		}
	}
	if t := r.Throughput; t != nil {
		w("\n## 2. Throughput\n\n%d MiB per transfer, %d alternating rounds; MB = 10⁶ bytes. raw-quic is one quic-go stream between two endpoints of the runner process, with qkas's QUIC configuration.\n\n", t.Bytes>>20, t.Rounds)
		w("| direction | route | MB/s | vs raw quic-go | vs direct | tunnel CPU per MiB |\n|---|---|---|---|---|---|\n")
		for _, x := range t.Runs {
			w("| %s | %s | %.0f | %s | %s | %s |\n", x.Direction, x.Route, x.MBps, ratioOpt(x.RatioToRaw), ratioOpt(x.RatioToDirect), cpuOpt(x.TunnelCPUmsPerMiB))
		}
		for _, miss := range t.Missing {
			w("\n- %s\n", miss)
		}
		w("\n")
		for _, p := range t.Plots {
			w("![%s](%s)\n", p, p)
		}
	}
	if h := r.HOL; h != nil {
		w("\n## 3. Head-of-line isolation\n\nkasd and agentd in two network namespaces joined by a veth pair; nftables drops the given share of packets arriving on each side. %d concurrent 1 KiB GETs for %.0f s per system, loss level and background. Backgrounds, sharing the one agent connection (each download over its own client connection): none; bulk, one download read at %.0f MiB/s; slow-readers (0%% loss only), %d downloads each read at %.0f MB/s by the client. Baseline: the same path with one HTTP/2 (h2c) connection over TCP between a front proxy and an agent-side proxy.\n\n",
			h.Concurrency, h.DurationS, float64(h.BulkRate)/(1<<20), h.SlowReaders, float64(h.SlowRate)/1e6)
		w("The HTTP/2 baseline dialled %d TCP connection(s) in all.\n\n", h.H2TCPConnections)
		w("| loss | background | system | requests | failed | p50 | p90 | p99 | p99.9 | background MB/s |\n|---|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range h.Points {
			w("| %g%% | %s | %s | %d | %d | %.0f | %.0f | %.0f | %.0f | %.1f |\n", x.LossPercent, x.Background, x.System, x.Requests, x.Failed, x.P50us, x.P90us, x.P99us, x.P999us, x.BulkMBps)
		}
		w("\n")
		for _, p := range h.Plots {
			w("![%s](%s)\n", p, p)
		}
	}
	if s := r.Scale; s != nil {
		w("\n## 4. Scale\n\nA fleet of real agentd agents (benchmarks/fleetsim: agentd.Agent each with its own UDP socket, many per process) in a network namespace of its own, so kasd sees one source address and port per agent; one real agentd process for routing latency. Idle CPU, datagrams and drops over %v, %v after kasd's RSS is read; kasd RSS 5 s after the start (the start's high-water mark) and, in brackets, at the idle window's end (datagrams to kasd per agent and keep-alive period: 1.00 is one PING each; more while quic-go's path MTU discovery probes on the connections' first keep-alives, see docs/scale.md); restart: kill -9 of kasd and a restart on the same data dir.\n\n", r.Sizes.ScaleIdle, r.Sizes.ScaleSettle)
		if len(s) > 0 && s[0].KasdCPUs != "" {
			w("kasd ran alone on CPU %s; the fleet, the routing agentd, its service and the runner on CPU %s (`--scale-kasd-cpus`): kasd's CPU is a share of one core it had to itself.\n\n", s[0].KasdCPUs, s[0].OtherCPUs)
		}
		w("| agents | held by kasd | connect | kasd RSS before → after | RSS per agent | kasd idle CPU | datagrams to kasd per agent and period | fleetsim CPU | drops idle / start / restart | p50 (1 agent; fleet stopped) | p99 (1 agent; fleet stopped) | restart settled | held after | attempts per agent | CPU during the restart, kasd / fleetsim | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range s {
			if p.Err != "" {
				w("| %d | failed: %s |||||||||||||||\n", p.Agents, p.Err)
				continue
			}
			w("| %d | %d | %.1f s | %.0f → %.0f MiB | %.1f (%.1f) KiB | %.2f%% core | %.2f | %.1f%% | %d / %d / %d | %.0f (%.0f; %.0f) µs | %.0f (%.0f; %.0f) µs | %.1f s | %s | %.2f | %.0f%% / %.0f%% | %s |\n", p.Agents, p.Connected, p.ConnectS,
				p.KasdRSSBeforeMiB, p.KasdRSSMiB, p.KasdRSSKiBPerAgent, p.KasdRSSEndKiBPerAgent, p.KasdCPUPct, p.IdleDatagramsPerAgentPeriod, p.FleetCPUPct, p.UDPDrops, p.ConnectDrops, p.RestartDrops,
				p.RouteP50us, p.RouteP50OneAgent, p.RouteP50FleetStopped, p.RouteP99us, p.RouteP99OneAgent, p.RouteP99FleetStopped, p.RestartSettleS, settled(p), p.AttemptsPerAgent, p.RestartKasdCPUPct, p.RestartFleetCPUPct, p.LoadAvg)
		}
		w("\n![%s](%s)\n", scalePlot, scalePlot)
	}
	if f := r.Failover; f != nil {
		w("\n## 5. Failover\n\n%s\n\n", f.Setup)
		w("- time from kill -9 to the first success: **%s**; last failure ended %.2f s after the kill\n", recovery(f, r.Sizes), f.SteadySeconds)
		w("- requests: %d, failed: %d\n", f.Requests, f.Failed)
		for _, k := range sortedKeys(f.Errors) {
			w("  - %s: %d\n", k, f.Errors[k])
		}
		for _, p := range f.Plots {
			w("\n![%s](%s)\n", p, p)
		}
	}
	b.WriteString(kubernetesDetails(r)) // kubernetes.go
	w("\n## Caveats\n\nThe load generator, the target service, the raw quic-go client (and, for throughput, its server) and the HTTP/2 baseline run inside the runner process, on the same cores as kasd and agentd; on a small or shared machine absolute figures are noisy, ratios less so. CPU times come from /proc in 10 ms ticks.\n")
	return b.String()
}

func recovery(f *FailoverResults, s Sizes) string {
	if f.RecoverySeconds < 0 {
		return fmt.Sprintf("no success within %v", s.FailoverAfter)
	}
	return fmt.Sprintf("%.2f s", f.RecoverySeconds)
}

func optUs(ok bool, v float64) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}

func ratioOpt(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", v)
}

func cpuOpt(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f ms", v)
}

func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// summaryPlots draws the figures that need only results.json, so that --report redraws a past
// run with today's plot code: per concurrency, each latency route's p50, p90, p99 and p99.9
// (new files, whose names it returns), and the throughput and head-of-line figures again (over
// the files the scenarios drew, from the same figures). The latency CDFs and the failover
// timeline need every sample, which results.json does not keep: the run draws those.
func summaryPlots(dir string, r *Results) ([]string, error) {
	if t := r.Throughput; t != nil && len(t.Plots) > 0 {
		if err := throughputPlot(filepath.Join(dir, t.Plots[0]), t); err != nil {
			return nil, err
		}
	}
	if h := r.HOL; h != nil && len(h.Plots) > 0 {
		if err := holPlot(filepath.Join(dir, h.Plots[0]), h, r.Sizes.HOLLossPercent); err != nil {
			return nil, err
		}
	}
	l := r.Latency
	if l == nil {
		return nil, nil
	}
	var names []string
	for _, c := range r.Sizes.LatencyConcurrency {
		var series []plot.Series
		for _, route := range append([]string{"direct"}, headlineRoutes...) {
			if q := findLatency(l, route, c); q != nil {
				series = append(series, plot.Series{Name: route, Y: []float64{q.P50us, q.P90us, q.P99us, q.P999us}})
			}
		}
		if len(series) == 0 {
			continue
		}
		name := fmt.Sprintf("latency-quantiles-c%d.png", c)
		if err := plot.Quantiles(filepath.Join(dir, name), fmt.Sprintf("1 KiB GET latency by route, concurrency %d", c),
			"latency (µs, log scale)", []string{"p50", "p90", "p99", "p99.9"}, series); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// throughputPlot: MB/s per direction, one bar per route in the route's colour.
func throughputPlot(path string, t *ThroughputResult) error {
	var labels []string
	series := []plot.Series{{Name: "download"}, {Name: "upload"}}
	for _, run := range t.Runs {
		if run.Direction == "download" {
			labels = append(labels, run.Route)
		}
	}
	for _, route := range labels {
		for i, dir := range []string{"download", "upload"} {
			v := 0.0
			if x := t.find(route, dir); x != nil {
				v = x.MBps
			}
			series[i].Y = append(series[i].Y, v)
		}
	}
	return plot.Bars(path, fmt.Sprintf("Throughput, %d MiB transfers (1 MB = 1,000,000 bytes)", t.Bytes>>20), "MB/s", labels, series)
}

// holPlot: small-request quantiles against loss, with a bulk download sharing the connection,
// and p99 without it, for qkas and HTTP/2 over one TCP connection.
func holPlot(path string, h *HOLResults, losses []float64) error {
	var series []plot.Series
	for _, sys := range []string{"qkas", "h2-tcp", holQkasTCP} {
		p999, p99, p50 := plot.Series{Name: sys + " p99.9"}, plot.Series{Name: sys + " p99"}, plot.Series{Name: sys + " p50"}
		alone := plot.Series{Name: sys + " p99 without bulk"}
		for _, loss := range losses {
			if p := h.find(sys, loss, holBulk); p != nil {
				p999.X, p999.Y = append(p999.X, loss), append(p999.Y, p.P999us)
				p99.X, p99.Y = append(p99.X, loss), append(p99.Y, p.P99us)
				p50.X, p50.Y = append(p50.X, loss), append(p50.Y, p.P50us)
			}
			if p := h.find(sys, loss, holNone); p != nil {
				alone.X, alone.Y = append(alone.X, loss), append(alone.Y, p.P99us)
			}
		}
		series = append(series, p999, p99, p50, alone)
	}
	return plot.Lines(path, "Small requests while a bulk download shares the connection",
		"packet loss on the veth, each direction (%)", "latency (µs, log scale)", series, true)
}
