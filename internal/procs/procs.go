package procs

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/internal/autoflag"
)

// Defaults of the "auto" setting.
const (
	DefaultInterval = 200 * time.Millisecond
	DefaultUp       = 0.75
	DefaultTarget   = 0.60
	DefaultHold     = 2 * time.Second
)

// Usage is the --gomaxprocs flag's help text.
const Usage = `GOMAXPROCS: "auto" follows the CPU use (one P at low load, where thread wake-ups cost more than they give; up to the runtime's default as the load grows), "runtime" leaves it to Go (CPUs or the container's CPU limit), or a number; a GOMAXPROCS environment variable wins`

// Setting is a parsed --gomaxprocs value: "auto", "runtime" or a positive number.
type Setting = autoflag.Setting

// Auto is the default setting.
var Auto = autoflag.Auto

// Parse reads "auto", "runtime" or a positive number.
func Parse(s string) (Setting, error) {
	v, err := autoflag.Parse(s)
	if err != nil {
		return v, fmt.Errorf("--gomaxprocs: %w", err)
	}
	return v, nil
}

// Config configures a Controller. Zero fields take the defaults above.
type Config struct {
	Setting    Setting
	Namespace  string                // metric prefix: kasd, agentd
	Registerer prometheus.Registerer // nil: no metrics
	Log        *zerolog.Logger       // nil: no logs

	Max      int           // upper bound of "auto"; default runtime.GOMAXPROCS(0) when New runs
	Interval time.Duration // sampling period of "auto"
	Up       float64       // "auto" doubles the Ps when the CPU use passes Up × Ps
	Target   float64       // "auto" lowers the Ps to what the use needs at Target per P ...
	Hold     time.Duration // ... once that has held this long

	// Tests replace these: the process's CPU time so far, and the runtime's GOMAXPROCS.
	cpuTime func() (time.Duration, bool)
	set     func(int) int
	env     func(string) (string, bool)
}

// Controller applies a Setting; with "auto" its Run follows the load.
type Controller struct {
	cfg     Config
	log     zerolog.Logger
	changes *prometheus.CounterVec
	initial int  // GOMAXPROCS before New
	adjust  bool // Run follows the load

	procs int // current, set by Run's goroutine only
	low   int // consecutive samples that needed fewer Ps
}

// active is the process-wide claim of the Controller that adjusts GOMAXPROCS.
var active atomic.Bool

// New applies a fixed setting at once and prepares "auto", which starts at one P when Run
// starts. It fails only if the metrics cannot be registered.
func New(cfg Config) (*Controller, error) {
	if cfg.set == nil {
		cfg.set = runtime.GOMAXPROCS
	}
	if cfg.cpuTime == nil {
		cfg.cpuTime = processCPUTime
	}
	if cfg.env == nil {
		cfg.env = os.LookupEnv
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Up <= 0 {
		cfg.Up = DefaultUp
	}
	if cfg.Target <= 0 {
		cfg.Target = DefaultTarget
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	c := &Controller{cfg: cfg, log: zerolog.Nop(), initial: cfg.set(0)}
	if cfg.Log != nil {
		c.log = *cfg.Log
	}
	if c.cfg.Max <= 0 {
		c.cfg.Max = c.initial
	}
	c.changes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: cfg.Namespace + "_gomaxprocs_changes_total",
		Help: "Times --gomaxprocs=auto changed GOMAXPROCS, by direction (up: the CPU use passed 75 % of the Ps; down: it needed fewer for 2 s). The value is go_sched_gomaxprocs_threads.",
	}, []string{"direction"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.changes); err != nil {
			return nil, fmt.Errorf("procs: %w", err)
		}
	}
	if v, ok := cfg.env("GOMAXPROCS"); ok && v != "" {
		c.log.Info().Str("gomaxprocs", v).Str("setting", cfg.Setting.String()).Msg("GOMAXPROCS set in the environment: --gomaxprocs ignored")
		return c, nil
	}
	switch {
	case cfg.Setting.Fixed > 0:
		cfg.set(cfg.Setting.Fixed)
		c.log.Info().Int("gomaxprocs", cfg.Setting.Fixed).Msg("GOMAXPROCS fixed by --gomaxprocs")
	case !cfg.Setting.Auto:
	case c.cfg.Max <= 1:
		// Nothing to choose: one CPU.
	case !sampled(cfg.cpuTime):
		c.log.Warn().Msg("--gomaxprocs=auto: this platform does not report the process's CPU time; GOMAXPROCS left to the runtime")
	default:
		c.adjust = true
	}
	return c, nil
}

func sampled(cpuTime func() (time.Duration, bool)) bool {
	_, ok := cpuTime()
	return ok
}

// Run follows the load until ctx ends, then restores the GOMAXPROCS New found. With a fixed
// setting, or when another Controller of this process runs, it only waits for ctx.
func (c *Controller) Run(ctx context.Context) error {
	if !c.adjust || !active.CompareAndSwap(false, true) {
		if c.adjust {
			c.log.Info().Msg("--gomaxprocs=auto: another daemon in this process adjusts GOMAXPROCS")
		}
		<-ctx.Done()
		return nil
	}
	defer active.Store(false)
	defer c.cfg.set(c.initial)
	c.procs = 1
	c.cfg.set(c.procs)
	c.log.Info().Int("gomaxprocs", c.procs).Int("max", c.cfg.Max).Msg("--gomaxprocs=auto: GOMAXPROCS follows the CPU use")
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	last, _ := c.cfg.cpuTime()
	lastAt := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// The wall time is read with the CPU time, not taken from the tick: a tick
			// received late (a loaded host) would pair one interval's wall time with
			// another's CPU time and misjudge the use both ways.
			cpu, _ := c.cfg.cpuTime()
			now := time.Now()
			wall := now.Sub(lastAt)
			if wall <= 0 {
				continue
			}
			c.observe(float64(cpu-last) / float64(wall))
			last, lastAt = cpu, now
		}
	}
}

// observe takes the CPU use of the last interval, in cores, and applies the next GOMAXPROCS.
func (c *Controller) observe(used float64) {
	next := c.next(used)
	if next == c.procs {
		return
	}
	dir := "up"
	if next < c.procs {
		dir = "down"
	}
	c.changes.WithLabelValues(dir).Inc()
	c.log.Debug().Int("from", c.procs).Int("to", next).Float64("cpu_cores", used).Msg("GOMAXPROCS changed")
	c.procs = next
	c.cfg.set(next)
}

// next is the policy: up at once past Up, down after Hold below what Target needs.
func (c *Controller) next(used float64) int {
	p := c.procs
	if used > c.cfg.Up*float64(p) && p < c.cfg.Max {
		c.low = 0
		return min(c.cfg.Max, 2*p)
	}
	need := max(1, int(math.Ceil(used/c.cfg.Target)))
	if need >= p {
		c.low = 0
		return p
	}
	c.low++
	if time.Duration(c.low)*c.cfg.Interval < c.cfg.Hold {
		return p
	}
	c.low = 0
	return max(need, p/2)
}
