package runner

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunTiny runs the whole runner on the tiny preset (a few hundred requests per scenario,
// real kasd/agentd processes built from this tree) and checks that it writes a complete report.
// It asserts that the runner works, never how fast anything is.
func TestRunTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var log strings.Builder
	scenarios := []string{ScenarioLatency, ScenarioThroughput, ScenarioKubernetes}
	scale := os.Geteuid() == 0 // the scale scenario's fleet needs a network namespace
	if scale {
		scenarios = append(scenarios, ScenarioScale)
	}
	out, err := Run(ctx, Config{
		Preset:     "tiny",
		Scenarios:  scenarios,
		ResultsDir: t.TempDir(),
		Log:        &log,
	})
	if err != nil {
		t.Fatalf("Run: %v\nlog:\n%s", err, log.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) > 0 {
		t.Fatalf("scenarios did not run: %v\nlog:\n%s", res.Skipped, log.String())
	}
	if res.Machine.Cores == 0 || res.Machine.Kernel == "" || res.Commit == "" {
		t.Errorf("machine or commit not recorded: %+v %q", res.Machine, res.Commit)
	}
	if res.Latency == nil || res.Throughput == nil || scale && res.Scale == nil {
		t.Fatalf("missing scenario results: %s", b)
	}
	if len(res.Latency.Missing) > 0 && res.Fleet {
		t.Errorf("latency routes missing: %v", res.Latency.Missing)
	}
	routes := map[string]bool{}
	for _, run := range res.Latency.Runs {
		routes[run.Route] = true
		if run.Requests == 0 || run.Failed > 0 || run.P50us <= 0 {
			t.Errorf("latency %s c=%d: %+v", run.Route, run.Concurrency, run.Summary)
		}
	}
	// The references run as re-executed children of the runner (here: of this test binary).
	for _, want := range []string{"direct", routeRawQUIC, routeReverseProxy, routeTCPRelay, "local"} {
		if !routes[want] {
			t.Errorf("latency: no %s route (have %v; missing %v)", want, routes, res.Latency.Missing)
		}
	}
	if len(res.Latency.Datagrams) != len(routes) {
		t.Errorf("datagrams counted on %d routes, want %d: %+v", len(res.Latency.Datagrams), len(routes), res.Latency.Datagrams)
	}
	for _, d := range res.Latency.Datagrams {
		if d.Requests == 0 || (d.Route == routeRawQUIC || d.Route == "local") && d.Datagrams == 0 {
			t.Errorf("datagrams %s: %+v (a QUIC route sends datagrams)", d.Route, d)
		}
	}
	for _, run := range res.Throughput.Runs {
		if run.MBps <= 0 {
			t.Errorf("throughput %s %s: %+v", run.Route, run.Direction, run)
		}
	}
	if scale {
		if p := res.Scale; len(p) != 1 || p[0].Err != "" || p[0].Agents != 20 || p[0].Connected != 20 || p[0].RestartConnected != 20 ||
			p[0].AttemptsPerAgent < 1 || p[0].KasdRSSMiB <= 0 || p[0].RouteP50us <= 0 {
			t.Errorf("scale: %+v", p)
		}
	}
	if len(res.Headline) == 0 {
		t.Error("no headline rows")
	}
	checkKubernetes(t, &res) // kubernetes_test.go
	report, err := os.ReadFile(filepath.Join(out, "REPORT.md"))
	if err != nil {
		t.Fatal(err)
	}
	wantPlots := []string{"latency-cdf-c1.png", "throughput.png"}
	if scale {
		wantPlots = append(wantPlots, scalePlot)
	}
	for _, want := range append([]string{"## Headline"}, wantPlots...) {
		if !strings.Contains(string(report), want) {
			t.Errorf("REPORT.md lacks %q", want)
		}
	}
	for _, f := range append(append(res.Latency.Plots, res.Throughput.Plots...), wantPlots[2:]...) {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
			t.Errorf("plot %s: %v", f, err)
		}
	}
}
