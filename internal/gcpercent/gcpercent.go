package gcpercent

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/internal/autoflag"
)

// Defaults of the "auto" setting.
const (
	DefaultMin      = 10
	DefaultMax      = 100
	DefaultBudget   = 0.02 // cores
	DefaultInterval = time.Second
	DefaultHold     = 20 * time.Second
	downRatio       = 0.8 // the need must stay below this share of the current GOGC to lower it
	releaseEvery    = 5 * time.Minute
)

// Usage is the --gogc flag's help text.
const Usage = `GOGC: "auto" keeps the heap close to the live heap while the process allocates little (an idle kasd holding many agents) and returns to Go's default 100 under load, spending at most 2 % of a core on the collector for it; "runtime" leaves it to Go; a number fixes it; a GOGC environment variable wins`

// Setting is a parsed --gogc value: "auto", "runtime" or a positive number.
type Setting = autoflag.Setting

// Auto is the default setting.
var Auto = autoflag.Auto

// Parse reads "auto", "runtime" or a positive number.
func Parse(s string) (Setting, error) {
	v, err := autoflag.Parse(s)
	if err != nil {
		return v, fmt.Errorf("--gogc: %w", err)
	}
	return v, nil
}

// Sample is what the policy reads from the runtime at one instant.
type Sample struct {
	Allocs  uint64  // bytes allocated on the heap so far
	GCCPU   float64 // the collector's CPU so far, seconds
	Cycles  uint64  // completed collections so far
	Scanned uint64  // what a cycle scans now: live heap, stacks and globals, bytes
}

// Config configures a Controller. Zero fields take the defaults above.
type Config struct {
	Setting    Setting
	Namespace  string                // metric prefix: kasd
	Registerer prometheus.Registerer // nil: no metrics
	Log        *zerolog.Logger       // nil: no logs

	Min      int           // lowest GOGC "auto" sets
	Max      int           // highest GOGC "auto" sets
	Budget   float64       // the collector CPU, in cores, "auto" may spend to keep the heap small
	Interval time.Duration // sampling period
	Hold     time.Duration // how long the need must stay lower before GOGC is lowered

	// Tests replace these: the runtime's counters, debug.SetGCPercent and the environment.
	read    func() Sample
	set     func(int) int
	env     func(string) (string, bool)
	release func() // a collection, then free memory back to the OS
}

// Controller applies a Setting; with "auto" its Run follows the allocation rate.
type Controller struct {
	cfg      Config
	log      zerolog.Logger
	changes  *prometheus.CounterVec
	releases prometheus.Counter
	adjust   bool // Run follows the allocation rate

	// Run's goroutine only:
	initial  int     // GOGC when Run started
	gogc     int     // current
	k        float64 // collector CPU seconds per byte scanned; 0: not measured yet
	low      int     // consecutive samples whose need was below downRatio × gogc
	lowNeed  int     // the highest need during those samples
	last     Sample
	lastTime time.Time
	released time.Time // the last memory release
}

// active is the process-wide claim of the Controller that adjusts GOGC.
var active atomic.Bool

// New applies a fixed setting at once and prepares "auto". It fails only if the metrics cannot
// be registered.
func New(cfg Config) (*Controller, error) {
	if cfg.read == nil {
		cfg.read = readRuntime
	}
	if cfg.set == nil {
		cfg.set = debug.SetGCPercent
	}
	if cfg.env == nil {
		cfg.env = os.LookupEnv
	}
	if cfg.release == nil {
		cfg.release = debug.FreeOSMemory // a collection, then every free page back to the OS
	}
	if cfg.Min <= 0 {
		cfg.Min = DefaultMin
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	cfg.Min = min(cfg.Min, cfg.Max)
	if cfg.Budget <= 0 {
		cfg.Budget = DefaultBudget
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	c := &Controller{cfg: cfg, log: zerolog.Nop()}
	if cfg.Log != nil {
		c.log = *cfg.Log
	}
	c.changes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: cfg.Namespace + "_gogc_changes_total",
		Help: "Times --gogc=auto changed GOGC, by direction (up: the allocation rate rose; down: it stayed lower for 20 s). The value is go_gc_gogc_percent.",
	}, []string{"direction"})
	c.releases = prometheus.NewCounter(prometheus.CounterOpts{
		Name: cfg.Namespace + "_gc_memory_releases_total",
		Help: "Times --gogc=auto, having lowered GOGC, ran a collection and returned free heap memory to the operating system (at most once per 5 minutes).",
	})
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.changes, c.releases} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("gcpercent: %w", err)
			}
		}
	}
	if v, ok := cfg.env("GOGC"); ok && v != "" {
		c.log.Info().Str("gogc", v).Str("setting", cfg.Setting.String()).Msg("GOGC set in the environment: --gogc ignored")
		return c, nil
	}
	switch {
	case cfg.Setting.Fixed > 0:
		cfg.set(cfg.Setting.Fixed)
		c.log.Info().Int("gogc", cfg.Setting.Fixed).Msg("GOGC fixed by --gogc")
	case cfg.Setting.Auto:
		c.adjust = true
	}
	return c, nil
}

// Run follows the allocation rate until ctx ends, then restores the GOGC it found. With
// another setting, or when another Controller of this process runs, it only waits for ctx.
func (c *Controller) Run(ctx context.Context) error {
	if !c.adjust || !active.CompareAndSwap(false, true) {
		if c.adjust {
			c.log.Info().Msg("--gogc=auto: another daemon in this process adjusts GOGC")
		}
		<-ctx.Done()
		return nil
	}
	defer active.Store(false)
	c.initial = c.cfg.set(c.cfg.Max)
	defer func() { c.cfg.set(c.initial) }()
	c.gogc = c.cfg.Max
	c.log.Info().Int("min", c.cfg.Min).Int("max", c.cfg.Max).Float64("budget_cores", c.cfg.Budget).
		Msg("--gogc=auto: GOGC follows the allocation rate")
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	c.last, c.lastTime = c.cfg.read(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// The wall time is read with the counters, not taken from the tick (a tick
			// received late would pair one interval's time with another's allocations).
			s := c.cfg.read()
			now := time.Now()
			c.observe(s, now.Sub(c.lastTime), now)
			c.lastTime = now
		}
	}
}

// observe takes the runtime's counters after wall time dt and applies the next GOGC.
func (c *Controller) observe(s Sample, dt time.Duration, now time.Time) {
	prev := c.last
	c.last = s
	if dt <= 0 || s.Allocs < prev.Allocs {
		return
	}
	if cycles := s.Cycles - prev.Cycles; s.Cycles > prev.Cycles && s.GCCPU > prev.GCCPU && s.Scanned > 0 {
		k := (s.GCCPU - prev.GCCPU) / float64(cycles) / float64(s.Scanned)
		if c.k == 0 {
			c.k = k
		} else {
			c.k = (c.k + k) / 2
		}
	}
	rate := float64(s.Allocs-prev.Allocs) / dt.Seconds()
	next := c.next(rate, dt)
	if next == c.gogc {
		return
	}
	dir := "up"
	if next < c.gogc {
		dir = "down"
	}
	c.changes.WithLabelValues(dir).Inc()
	c.log.Debug().Int("from", c.gogc).Int("to", next).Float64("alloc_bytes_per_second", rate).
		Float64("gc_cpu_seconds_per_byte_scanned", c.k).Msg("GOGC changed")
	c.gogc = next
	c.cfg.set(next)
	if dir == "down" && (c.released.IsZero() || now.Sub(c.released) >= releaseEvery) {
		// The heap's high-water mark (a reconnect storm's, at GOGC=100) is not given back by the
		// runtime's scavenger, which keeps what the last collection had in use plus 10 %.
		c.released = now
		c.releases.Inc()
		c.cfg.release()
	}
}

// need is the lowest GOGC whose collector CPU fits the budget at this allocation rate.
func (c *Controller) need(rate float64) int {
	if c.k == 0 {
		return c.cfg.Max
	}
	n := 100 * rate * c.k / c.cfg.Budget
	if math.IsNaN(n) || n >= float64(c.cfg.Max) {
		return c.cfg.Max
	}
	return max(c.cfg.Min, int(math.Ceil(n)))
}

// next is the policy: up at once, down after Hold below downRatio of the current GOGC.
func (c *Controller) next(rate float64, dt time.Duration) int {
	need := c.need(rate)
	if need >= c.gogc {
		c.low, c.lowNeed = 0, 0
		return need
	}
	if float64(need) >= downRatio*float64(c.gogc) {
		c.low, c.lowNeed = 0, 0
		return c.gogc
	}
	c.low++
	c.lowNeed = max(c.lowNeed, need)
	if time.Duration(c.low)*dt < c.cfg.Hold {
		return c.gogc
	}
	next := c.lowNeed
	c.low, c.lowNeed = 0, 0
	return next
}

var runtimeMetrics = []string{
	"/gc/heap/allocs:bytes",
	"/cpu/classes/gc/total:cpu-seconds",
	"/gc/cycles/total:gc-cycles",
	"/gc/heap/live:bytes",
	"/gc/scan/stack:bytes",
	"/gc/scan/globals:bytes",
}

func readRuntime() Sample {
	ms := make([]metrics.Sample, len(runtimeMetrics))
	for i, name := range runtimeMetrics {
		ms[i].Name = name
	}
	metrics.Read(ms)
	u := func(i int) uint64 {
		if ms[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return ms[i].Value.Uint64()
	}
	var gcCPU float64
	if ms[1].Value.Kind() == metrics.KindFloat64 {
		gcCPU = ms[1].Value.Float64()
	}
	return Sample{Allocs: u(0), GCCPU: gcCPU, Cycles: u(2), Scanned: u(3) + u(4) + u(5)}
}
