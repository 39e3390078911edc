package runner

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestWriteReports redraws the committed reference run: REPORT.md is one page that starts with
// the headline ratios, DETAILS.md has every table, the summary plots are drawn.
func TestWriteReports(t *testing.T) {
	ref, err := filepath.Glob(filepath.Join("..", "results", "reference-*", "results.json"))
	if err != nil || len(ref) == 0 {
		t.Fatalf("no committed reference run: %v", err)
	}
	dir := t.TempDir()
	b, err := os.ReadFile(ref[len(ref)-1])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteReports(dir); err != nil {
		t.Fatal(err)
	}
	report, err := os.ReadFile(filepath.Join(dir, ReportFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(report), "\n")
	if len(lines) > 60 {
		t.Errorf("REPORT.md has %d lines, want one page (≤ 60)", len(lines))
	}
	head := strings.Index(string(report), "## Headline")
	if head < 0 || head > 800 || !strings.Contains(string(report), "| **") {
		t.Errorf("REPORT.md does not open with the headline ratios:\n%s", report)
	}
	for _, want := range []string{"local route", "forwarded route", "raw quic-go", "HTTP/2 over 1 TCP", DetailsFile, "latency-quantiles-c1.png", "throughput.png"} {
		if !strings.Contains(string(report), want) {
			t.Errorf("REPORT.md lacks %q", want)
		}
	}
	if strings.Contains(string(report), "(reference") {
		t.Errorf("REPORT.md repeats the reference systems' own rows; they belong in DETAILS.md")
	}
	details, err := os.ReadFile(filepath.Join(dir, DetailsFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Every headline figure", "## 1. Latency", "## 2. Throughput", "## 3. Head-of-line", "## 4. Scale", "## 5. Failover", "## Caveats", "(reference"} {
		if !strings.Contains(string(details), want) {
			t.Errorf("DETAILS.md lacks %q", want)
		}
	}
	for _, f := range []string{"latency-quantiles-c1.png", "latency-quantiles-c64.png"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("summary plot %s: %v", f, err)
		}
	}
}

// The qkas rows of the headline carry the floor measured in the same run (the TCP relay and raw
// quic-go) when both references ran, and nothing about it when one did not.
func TestHeadlineFloor(t *testing.T) {
	run := func(route string, c int, added, cpu float64) LatencyRun {
		r := LatencyRun{Route: route, Concurrency: c, AddedP50us: added, TunnelCPUus: cpu}
		r.P50us = 40 + added
		return r
	}
	res := &Results{Sizes: Sizes{LatencyConcurrency: []int{1, 64}}, Latency: &LatencyResults{Runs: []LatencyRun{
		run("direct", 1, 0, 0), run(routeRawQUIC, 1, 88, 110), run(routeReverseProxy, 1, 215, 223), run(routeTCPRelay, 1, 126, 77), run("local", 1, 336, 280),
		run("direct", 64, 0, 0), run(routeRawQUIC, 64, 0, 26), run(routeReverseProxy, 64, 0, 152), run(routeTCPRelay, 64, 0, 47.5), run("local", 64, 0, 175.5),
	}}}
	find := func(rows []HeadlineRow, prefix string) string {
		for _, r := range rows {
			if strings.HasPrefix(r.Metric, prefix) {
				return r.Metric
			}
		}
		t.Fatalf("no headline row %q in %+v", prefix, rows)
		return ""
	}
	rows := headline(res)
	if got, want := find(rows, "p50, 1 KiB GET, c=1, local route"), "p50, 1 KiB GET, c=1, local route (added 336 µs; floor: a TCP byte relay adds 126 µs, raw quic-go 88 µs)"; got != want {
		t.Errorf("latency row %q, want %q", got, want)
	}
	if got, want := find(rows, "tunnel CPU per request, c=64, local route"), "tunnel CPU per request, c=64, local route (floor: a TCP byte relay costs 48 µs, raw quic-go's server end 26 µs)"; got != want {
		t.Errorf("CPU row %q, want %q", got, want)
	}
	// Without the relay (it could not start), no floor is claimed.
	res.Latency.Runs = slices.DeleteFunc(res.Latency.Runs, func(r LatencyRun) bool { return r.Route == routeTCPRelay })
	rows = headline(res)
	if got := find(rows, "p50, 1 KiB GET, c=1, local route"); strings.Contains(got, "floor") {
		t.Errorf("latency row without the relay claims a floor: %q", got)
	}
}
