package runner

import "testing"

// TestProcessCPU: the per-process split in the latency log names every process, sorted, and is
// empty for a route with one process.
func TestProcessCPU(t *testing.T) {
	for _, c := range []struct {
		in   map[string]float64
		want string
	}{
		{nil, ""},
		{map[string]float64{"kasd-a": 37.04, "agentd-bench": 40.1}, " (agentd-bench 40.1, kasd-a 37.0)"},
	} {
		if got := processCPU(c.in); got != c.want {
			t.Errorf("processCPU(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}
