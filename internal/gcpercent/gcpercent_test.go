package gcpercent

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestParse: the values are autoflag's; an error names the flag.
func TestParse(t *testing.T) {
	if s, err := Parse("25"); err != nil || s != (Setting{Fixed: 25}) {
		t.Fatalf("Parse(25) = %v, %v", s, err)
	}
	if _, err := Parse("off"); err == nil || !strings.Contains(err.Error(), "--gogc") {
		t.Fatalf("Parse(off): %v, want an error naming --gogc", err)
	}
}

// fakeGC stands in for the runtime: set records GOGC, the counters are advanced by the test.
type fakeGC struct {
	mu       sync.Mutex
	gogc     int
	sets     []int
	releases int
}

func (f *fakeGC) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases++
}

func (f *fakeGC) set(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.gogc
	f.gogc = n
	f.sets = append(f.sets, n)
	return old
}

func newTestController(t *testing.T, f *fakeGC, reg prometheus.Registerer) *Controller {
	t.Helper()
	c, err := New(Config{Setting: Auto, Namespace: "test", Registerer: reg, Hold: 30 * time.Second,
		set: f.set, release: f.release, read: func() Sample { return Sample{} }, env: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	if !c.adjust {
		t.Fatal("auto does not adjust")
	}
	c.gogc = c.cfg.Max
	return c
}

// step feeds one interval of one second: alloc bytes allocated, cycles collections of
// gcSeconds CPU each, over a scanned heap of scanned bytes.
type feeder struct {
	c   *Controller
	s   Sample
	now time.Time
}

func (fd *feeder) step(alloc uint64, cycles uint64, gcSeconds float64, scanned uint64) {
	fd.s.Allocs += alloc
	fd.s.Cycles += cycles
	fd.s.GCCPU += float64(cycles) * gcSeconds
	fd.s.Scanned = scanned
	fd.now = fd.now.Add(time.Second)
	fd.c.observe(fd.s, time.Second, fd.now)
}

func TestPolicy(t *testing.T) {
	f := &fakeGC{gogc: 100}
	reg := prometheus.NewRegistry()
	c := newTestController(t, f, reg)
	fd := &feeder{c: c, now: time.Now()}
	const scanned = 100 << 20 // 100 MiB scanned per cycle
	// A cycle costs 0.1 s over 100 MiB: k = 0.1 / 100 MiB. At 1 MiB/s allocated the collector
	// at GOGC=100 costs 1 MiB/s × k = 1 ms per second; the budget (20 ms/s) allows GOGC=5,
	// clamped to Min = 10.

	// Before a cycle has been measured: GOGC stays at Max whatever the rate.
	for range 40 {
		fd.step(1<<20, 0, 0, scanned)
	}
	if c.gogc != 100 {
		t.Fatalf("GOGC %d before any cycle was measured, want 100", c.gogc)
	}
	// One cycle measured, the rate stays low: lowered only after Hold (30 samples).
	fd.step(1<<20, 1, 0.1, scanned)
	for i := range 28 {
		fd.step(1<<20, 0, 0, scanned)
		if c.gogc != 100 {
			t.Fatalf("GOGC %d after %d low samples, want 100 until the hold is over", c.gogc, i+2)
		}
	}
	fd.step(1<<20, 0, 0, scanned)
	if c.gogc != DefaultMin {
		t.Fatalf("GOGC %d after the hold at 1 MiB/s, want %d", c.gogc, DefaultMin)
	}
	if f.releases != 1 {
		t.Fatalf("%d memory releases after lowering GOGC, want 1", f.releases)
	}
	// A burst: 100 MiB/s needs GOGC 500 (> Max): up at once.
	fd.step(100<<20, 0, 0, scanned)
	if c.gogc != 100 {
		t.Fatalf("GOGC %d in a burst, want 100 at once", c.gogc)
	}
	// A moderate rate: 10 MiB/s needs 50; one sample of 30 MiB/s in the hold keeps it above.
	for i := range 30 {
		rate := uint64(10 << 20)
		if i == 10 {
			rate = 30 << 20 // needs 150 → Max: the hold restarts
		}
		fd.step(rate, 0, 0, scanned)
	}
	if c.gogc != 100 {
		t.Fatalf("GOGC %d: a burst inside the hold must restart it", c.gogc)
	}
	for range 30 {
		fd.step(10<<20, 0, 0, scanned)
	}
	if c.gogc != 50 {
		t.Fatalf("GOGC %d after a hold at 10 MiB/s, want 50", c.gogc)
	}
	// A need within 80 % of the current setting does not move it (no flapping).
	for range 60 {
		fd.step(9<<20, 0, 0, scanned) // needs 45
	}
	if c.gogc != 50 {
		t.Fatalf("GOGC %d: a need of 45 moved it from 50", c.gogc)
	}
	// Up to an intermediate need: at once.
	fd.step(14<<20, 0, 0, scanned) // needs 70
	if c.gogc != 70 {
		t.Fatalf("GOGC %d, want 70 at once", c.gogc)
	}
	if got, want := f.sets, []int{10, 100, 50, 70}; !equal(got, want) {
		t.Fatalf("GOGC set to %v, want %v", got, want)
	}
	if up, down := counter(t, reg, "test_gogc_changes_total", "up"), counter(t, reg, "test_gogc_changes_total", "down"); up != 2 || down != 2 {
		t.Fatalf("changes up %v down %v, want 2 and 2", up, down)
	}
	// The second step down came 62 s after the first: no second release within 5 minutes.
	if f.releases != 1 {
		t.Fatalf("%d memory releases, want 1: at most one per %v", f.releases, releaseEvery)
	}
	// The measured cost moves with later cycles: twice as expensive → twice the need.
	fd.step(14<<20, 1, 0.3, scanned) // k averaged to 0.2 s per 100 MiB: 14 MiB/s needs 140
	if c.gogc != 100 {
		t.Fatalf("GOGC %d after costlier cycles, want 100", c.gogc)
	}
	// Five minutes later, the next step down releases memory again.
	for range 300 {
		fd.step(100<<20, 0, 0, scanned)
	}
	for range 30 {
		fd.step(1<<20, 0, 0, scanned)
	}
	if c.gogc != DefaultMin || f.releases != 2 {
		t.Fatalf("GOGC %d, %d releases after five busy minutes and a quiet hold: want %d and 2", c.gogc, f.releases, DefaultMin)
	}
	if got := counter(t, reg, "test_gc_memory_releases_total", ""); got != 2 {
		t.Fatalf("test_gc_memory_releases_total %v, want 2", got)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// counter reads a counter, with direction dir when dir is not empty.
func counter(t *testing.T, g prometheus.Gatherer, name, dir string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if dir == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "direction" && l.GetValue() == dir {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	var none dto.Metric
	return none.GetCounter().GetValue()
}

func TestSettings(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	// A fixed number is applied by New; Run leaves it.
	f := &fakeGC{gogc: 100}
	c, err := New(Config{Setting: Setting{Fixed: 40}, set: f.set, env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if c.adjust || f.gogc != 40 {
		t.Fatalf("fixed 40: adjust %v, GOGC %d", c.adjust, f.gogc)
	}
	// "runtime": nothing is set.
	f = &fakeGC{gogc: 100}
	if c, err = New(Config{Setting: Setting{}, set: f.set, env: noEnv}); err != nil || c.adjust || len(f.sets) != 0 {
		t.Fatalf("runtime: adjust %v, sets %v, %v", c.adjust, f.sets, err)
	}
	// The environment wins over auto and a number.
	for _, s := range []Setting{Auto, {Fixed: 30}} {
		f = &fakeGC{gogc: 100}
		c, err = New(Config{Setting: s, set: f.set, env: func(k string) (string, bool) { return "200", k == "GOGC" }})
		if err != nil || c.adjust || len(f.sets) != 0 {
			t.Fatalf("GOGC=200 in the environment, --gogc=%v: adjust %v, sets %v, %v", s, c.adjust, f.sets, err)
		}
	}
}

// Run on the real runtime: an idle process is lowered below 100 once a cycle has been
// measured, a process allocating fast goes back to 100, and GOGC is restored at the end.
func TestRunFollowsTheRuntime(t *testing.T) {
	before := gogcNow()
	var events []int
	var mu sync.Mutex
	c, err := New(Config{Setting: Auto, Interval: 20 * time.Millisecond, Hold: 100 * time.Millisecond,
		env: func(string) (string, bool) { return "", false },
		set: func(n int) int {
			mu.Lock()
			events = append(events, n)
			mu.Unlock()
			return debug.SetGCPercent(n)
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	// A live heap, and a measured cycle.
	keep := make([][]byte, 0, 256)
	for range 256 {
		keep = append(keep, make([]byte, 64<<10))
	}
	runtime.GC()
	waitFor(t, "GOGC below 100 while idle", func() bool { return gogcNow() < 100 })
	// Allocate hard: back to 100 within an interval or two.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var sink []byte
		for {
			select {
			case <-stop:
				_ = sink
				return
			default:
				sink = make([]byte, 256<<10)
			}
		}
	}()
	waitFor(t, "GOGC back to 100 under allocation", func() bool { return gogcNow() == 100 })
	close(stop)
	wg.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(keep)
	if got := gogcNow(); got != before {
		t.Fatalf("GOGC %d after Run, want %d restored", got, before)
	}
	mu.Lock()
	t.Logf("GOGC set to %v", events)
	mu.Unlock()
}

func TestOneControllerPerProcess(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	f1, f2 := &fakeGC{gogc: 100}, &fakeGC{gogc: 100}
	c1, _ := New(Config{Setting: Auto, set: f1.set, env: noEnv, read: func() Sample { return Sample{} }, Interval: time.Millisecond})
	c2, _ := New(Config{Setting: Auto, set: f2.set, env: noEnv, read: func() Sample { return Sample{} }, Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- c1.Run(ctx) }()
	waitFor(t, "the first controller to start", func() bool { return active.Load() })
	go func() { done <- c2.Run(ctx) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	<-done
	<-done
	f1.mu.Lock()
	defer f1.mu.Unlock()
	f2.mu.Lock()
	defer f2.mu.Unlock()
	if len(f1.sets) == 0 || len(f2.sets) != 0 {
		t.Fatalf("first controller set %v, second %v: want only the first", f1.sets, f2.sets)
	}
}

func TestReadRuntime(t *testing.T) {
	a := readRuntime()
	sink := make([][]byte, 0, 64)
	for range 64 {
		sink = append(sink, make([]byte, 16<<10))
	}
	runtime.GC()
	b := readRuntime()
	runtime.KeepAlive(sink)
	if b.Allocs < a.Allocs+64*16<<10 {
		t.Errorf("allocs %d → %d after 1 MiB allocated", a.Allocs, b.Allocs)
	}
	if b.Cycles <= a.Cycles || b.GCCPU <= a.GCCPU {
		t.Errorf("after runtime.GC: cycles %d → %d, collector CPU %v → %v s", a.Cycles, b.Cycles, a.GCCPU, b.GCCPU)
	}
	if b.Scanned < 1<<20 {
		t.Errorf("scanned %d bytes with 1 MiB live", b.Scanned)
	}
}

func gogcNow() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
