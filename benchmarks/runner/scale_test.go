package runner

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestScaleFleet200 runs the scale scenario with a fleet of 200 real agentd agents (one UDP
// socket each, in their own network namespace) against a real kasd, restart included, and
// checks what it measured: every agent held before and after kasd's kill -9, each in about one
// attempt, kasd's RSS and routing latency read. It asserts that the harness measures, not how
// fast anything is. Needs root; skipped with -short.
func TestScaleFleet200(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sizes, err := Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	sizes.ScaleAgents = []int{200}
	var log strings.Builder
	e := &env{cfg: Config{ModuleDir: "../..", Log: &log}, sizes: sizes, work: t.TempDir(), out: t.TempDir()}
	if err := e.prepare(ctx); err != nil {
		t.Fatal(err)
	}
	steps, err := e.runScale(ctx)
	if err != nil {
		t.Fatalf("runScale: %v\n%s", err, log.String())
	}
	if len(steps) != 1 {
		t.Fatalf("steps: %+v", steps)
	}
	p := steps[0]
	if p.Err != "" || p.Connected != 200 || p.RestartConnected != 200 {
		t.Fatalf("fleet not held: %+v\n%s", p, log.String())
	}
	// A fleet sharing one socket, or agents kasd never saw again, fail these.
	if p.AttemptsPerAgent < 1 || p.AttemptsPerAgent > 3 || p.AttemptResults["accepted"] < 201 {
		t.Errorf("attempts after the restart: %.2f per agent, %v", p.AttemptsPerAgent, p.AttemptResults)
	}
	if p.KasdRSSMiB <= p.KasdRSSBeforeMiB || p.RouteP50us <= 0 || p.RouteP50OneAgent <= 0 || p.RestartSettleS <= 0 {
		t.Errorf("figures missing: %+v", p)
	}
}
