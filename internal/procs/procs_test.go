package procs

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Setting
		err  bool
	}{
		{"auto", Auto, false},
		{"", Auto, false},
		{"runtime", Setting{}, false},
		{"1", Setting{Fixed: 1}, false},
		{"16", Setting{Fixed: 16}, false},
		{"0", Setting{}, true},
		{"-2", Setting{}, true},
		{"two", Setting{}, true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && tc.in != "" {
			if again, _ := Parse(got.String()); again != got {
				t.Errorf("Parse(%q).String() = %q does not parse back", tc.in, got.String())
			}
		}
	}
}

// fakeRuntime stands in for runtime.GOMAXPROCS and the process's CPU clock: the CPU time grows
// at load cores per second of wall time.
type fakeRuntime struct {
	mu    sync.Mutex
	procs int
	log   []int // every value set
	cpu   time.Duration
	at    time.Time
	load  float64
}

func newFakeRuntime(procs int) *fakeRuntime { return &fakeRuntime{procs: procs, at: time.Now()} }

func (f *fakeRuntime) set(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.procs
	if n > 0 {
		f.procs = n
		f.log = append(f.log, n)
	}
	return old
}

func (f *fakeRuntime) cpuTime() (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.cpu += time.Duration(f.load * float64(now.Sub(f.at)))
	f.at = now
	return f.cpu, true
}

func (f *fakeRuntime) setLoad(cores float64) {
	f.cpuTime() // account the time so far at the old load
	f.mu.Lock()
	f.load = cores
	f.mu.Unlock()
}

func (f *fakeRuntime) current() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.procs
}

func noEnv(string) (string, bool) { return "", false }

func newTestController(t *testing.T, f *fakeRuntime, s Setting, reg prometheus.Registerer) *Controller {
	t.Helper()
	c, err := New(Config{Setting: s, Namespace: "test", Registerer: reg, Max: 8,
		Interval: 5 * time.Millisecond, Hold: 50 * time.Millisecond,
		cpuTime: f.cpuTime, set: f.set, env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func counterValue(t *testing.T, c *prometheus.CounterVec, label string) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.WithLabelValues(label).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestAutoFollowsTheLoad: one P when idle, more as soon as the process is busy, back down only
// after the load has stayed low, and the runtime's value restored when Run ends.
func TestAutoFollowsTheLoad(t *testing.T) {
	f := newFakeRuntime(8)
	c := newTestController(t, f, Auto, prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	waitFor(t, "one P at start", func() bool { return f.current() == 1 })
	f.setLoad(0.95) // a busy core: more than 75 % of one P
	waitFor(t, "two Ps under load", func() bool { return f.current() == 2 })
	f.setLoad(3.9) // still busy on 2, 4: up to 8
	waitFor(t, "eight Ps under heavy load", func() bool { return f.current() == 8 })
	f.setLoad(2.0) // needs 4 at 60 % each: halve once, not further
	waitFor(t, "four Ps once the load eased", func() bool { return f.current() == 4 })
	f.setLoad(0.1)
	waitFor(t, "two Ps (halved)", func() bool { return f.current() == 2 })
	waitFor(t, "one P when idle", func() bool { return f.current() == 1 })
	if up, down := counterValue(t, c.changes, "up"), counterValue(t, c.changes, "down"); up != 3 || down != 3 {
		t.Errorf("changes counted up %v, down %v; want 3 and 3", up, down)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := f.current(); got != 8 {
		t.Errorf("GOMAXPROCS after Run = %d; want the 8 it found", got)
	}
}

// TestAutoDoesNotFlap: a load between the two thresholds keeps the count where it is, up or
// down, and a load dip shorter than Hold does not lower it.
func TestAutoDoesNotFlap(t *testing.T) {
	c := &Controller{cfg: Config{Max: 4, Up: DefaultUp, Target: DefaultTarget, Interval: 200 * time.Millisecond, Hold: DefaultHold}}
	c.procs = 1
	for range 100 {
		if got := c.next(0.7); got != 1 { // under 75 % of one P
			t.Fatalf("next(0.7) at 1 P = %d; want 1", got)
		}
	}
	c.procs = 2
	for range 100 {
		if got := c.next(0.7); got != 2 { // needs 2 at 60 %
			t.Fatalf("next(0.7) at 2 Ps = %d; want 2", got)
		}
	}
	// A dip of 9 samples (1.8 s) and a busy sample: still 2, and the dip count starts over.
	for range 9 {
		if got := c.next(0.1); got != 2 {
			t.Fatalf("dip shorter than Hold lowered to %d", got)
		}
	}
	c.next(0.7)
	for i := range 9 {
		if got := c.next(0.1); got != 2 {
			t.Fatalf("sample %d after a busy one lowered to %d", i, got)
		}
	}
	if got := c.next(0.1); got != 1 {
		t.Fatalf("after Hold at low load: %d Ps; want 1", got)
	}
	// Never above Max.
	c.procs = 4
	if got := c.next(math.Inf(1)); got != 4 {
		t.Fatalf("next(+Inf) at Max = %d", got)
	}
}

func TestFixedAndRuntimeSettings(t *testing.T) {
	f := newFakeRuntime(8)
	newTestController(t, f, Setting{Fixed: 3}, nil)
	if got := f.current(); got != 3 {
		t.Fatalf("--gomaxprocs=3 set %d", got)
	}
	f = newFakeRuntime(8)
	c := newTestController(t, f, Setting{}, nil)
	runBriefly(t, c)
	if len(f.log) != 0 {
		t.Fatalf("--gomaxprocs=runtime changed GOMAXPROCS: %v", f.log)
	}
}

func TestEnvironmentWins(t *testing.T) {
	f := newFakeRuntime(8)
	c, err := New(Config{Setting: Auto, Namespace: "test", Interval: time.Millisecond,
		cpuTime: f.cpuTime, set: f.set, env: func(k string) (string, bool) { return "6", k == "GOMAXPROCS" }})
	if err != nil {
		t.Fatal(err)
	}
	runBriefly(t, c)
	if len(f.log) != 0 {
		t.Fatalf("auto changed GOMAXPROCS although the environment set it: %v", f.log)
	}
}

// TestOneControllerPerProcess: two daemons in one process (tests) must not both adjust.
func TestOneControllerPerProcess(t *testing.T) {
	f1, f2 := newFakeRuntime(8), newFakeRuntime(8)
	c1 := newTestController(t, f1, Auto, nil)
	c2 := newTestController(t, f2, Auto, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = c1.Run(ctx) })
	waitFor(t, "the first controller to start", func() bool { return f1.current() == 1 })
	var second atomic.Bool
	wg.Go(func() { _ = c2.Run(ctx); second.Store(true) })
	time.Sleep(50 * time.Millisecond)
	cancel()
	wg.Wait()
	if len(f2.log) != 0 {
		t.Fatalf("the second controller adjusted GOMAXPROCS: %v", f2.log)
	}
	// The claim is released: a later controller adjusts again.
	f3 := newFakeRuntime(8)
	runBriefly(t, newTestController(t, f3, Auto, nil))
	if len(f3.log) == 0 {
		t.Fatal("a controller started after the first ended did not adjust")
	}
}

func TestDuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	newTestController(t, newFakeRuntime(2), Auto, reg)
	if _, err := New(Config{Setting: Auto, Namespace: "test", Registerer: reg, set: newFakeRuntime(2).set, env: noEnv}); err == nil {
		t.Fatal("registering the metrics twice did not fail")
	}
}

func runBriefly(t *testing.T, c *Controller) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestProcessCPUTime: the real clock advances with work.
func TestProcessCPUTime(t *testing.T) {
	before, ok := processCPUTime()
	if !ok {
		t.Skip("no process CPU time on this platform")
	}
	x := 0
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
		x++
	}
	after, _ := processCPUTime()
	if after <= before {
		t.Fatalf("CPU time did not advance over 50 ms of work (%v → %v, %d loops)", before, after, x)
	}
}
