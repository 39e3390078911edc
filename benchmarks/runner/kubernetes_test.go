package runner

import (
	"strings"
	"testing"
)

// checkKubernetes checks the kubernetes scenario's results of TestRunTiny: the four routes at
// every concurrency, without failures, each qkas route with its added p50 against its own
// backend and its tunnel CPU, the extra cost computed, and the rows in the headline and in
// DETAILS.md.
func checkKubernetes(t *testing.T, res *Results) {
	t.Helper()
	k := res.Kubernetes
	if k == nil {
		t.Fatal("no kubernetes results")
	}
	for _, c := range res.Sizes.LatencyConcurrency {
		for _, route := range []string{routeAPIServerDirect, routeKubernetes, routePlainDirect, routePlain} {
			run := k.find(route, c)
			if run == nil || run.Requests == 0 || run.Failed > 0 || run.P50us <= 0 {
				t.Errorf("kubernetes %s c=%d: %+v", route, c, run)
				continue
			}
			qkas := route == routeKubernetes || route == routePlain
			if qkas && (run.AddedP50us == 0 || run.TunnelCPUus <= 0) || !qkas && run.TunnelCPUus != 0 {
				t.Errorf("kubernetes %s c=%d: added %v CPU %v", route, c, run.AddedP50us, run.TunnelCPUus)
			}
		}
		kube, plain := k.find(routeKubernetes, c), k.find(routePlain, c)
		if kube != nil && plain != nil && k.ExtraP50us[c] != kube.AddedP50us-plain.AddedP50us {
			t.Errorf("c=%d: extra %v, want %v", c, k.ExtraP50us[c], kube.AddedP50us-plain.AddedP50us)
		}
	}
	rows := 0
	for _, h := range res.Headline {
		if h.Scenario == "kubernetes" {
			rows++
		}
	}
	if rows != 2 {
		t.Errorf("%d kubernetes headline rows, want 2 (added p50 at c=1, CPU at the highest c)", rows)
	}
	if d := details(res); !strings.Contains(d, "## Kubernetes service next to a plain service") || !strings.Contains(d, "| 1 | kubernetes |") {
		t.Errorf("DETAILS.md lacks the kubernetes table:\n%s", d)
	}
}
