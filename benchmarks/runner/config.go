package runner

import (
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/qkas/qkas/quic"
)

// Scenario names, in the order they run.
const (
	ScenarioLatency    = "latency"
	ScenarioThroughput = "throughput"
	ScenarioHOL        = "hol"
	ScenarioScale      = "scale"
	ScenarioFailover   = "failover"
	ScenarioKubernetes = "kubernetes" // kubernetes.go
)

// AllScenarios lists every scenario in run order.
var AllScenarios = []string{ScenarioLatency, ScenarioThroughput, ScenarioHOL, ScenarioScale, ScenarioFailover, ScenarioKubernetes}

// Sizes says how much each scenario does. Presets: "quick" (make bench-quick, under 4 minutes
// on 2 cores), "full" (make bench), "tiny" (the runner's own test) and "scale" (make
// bench-scale).
type Sizes struct {
	// LatencyConcurrency and LatencyRequests (same length): requests per route at each
	// concurrency, split over LatencyRounds alternating rounds.
	LatencyConcurrency []int `json:"latency_concurrency"`
	LatencyRequests    []int `json:"latency_requests"`
	LatencyRounds      int   `json:"latency_rounds"`
	// BodyBytes is the response size of the small GET (1 KiB).
	BodyBytes int `json:"body_bytes"`
	// DatagramRequests: sequential (c=1) small requests per route and round over which UDP
	// datagrams are counted, against as long an idle interval. 0 disables the count.
	DatagramRequests int `json:"datagram_requests"`
	// ProfileSeconds: length of the kasd CPU profile taken under c=64 load on the local route
	// (after the measured rounds, so profiling does not disturb them). 0 disables it.
	ProfileSeconds int `json:"profile_seconds"`

	// ThroughputBytes is the size of each download and upload; ThroughputRounds alternate routes.
	ThroughputBytes  int64 `json:"throughput_bytes"`
	ThroughputRounds int   `json:"throughput_rounds"`

	// HOLLossPercent: loss levels (each direction of the veth pair). HOLDuration: how long the
	// small requests run per system and level, HOLConcurrency of them, while one bulk download
	// read at HOLBulkRate bytes/s shares the connection.
	HOLLossPercent []float64     `json:"hol_loss_percent"`
	HOLDuration    time.Duration `json:"hol_duration"`
	HOLConcurrency int           `json:"hol_concurrency"`
	HOLBulkRate    int64         `json:"hol_bulk_rate"`
	// HOLSlowReaders downloads, each read at HOLSlowRate bytes/s, share the agent connection
	// with the small requests in the slow-reader case (0% loss only). 0 readers skip the case.
	HOLSlowReaders int   `json:"hol_slow_readers"`
	HOLSlowRate    int64 `json:"hol_slow_rate"`

	// ScaleAgents: fleet sizes (agentd agents of benchmarks/fleetsim, one UDP socket each),
	// each measured on a fresh kasd. ScaleIdle: how long idle CPU and drops are measured (at
	// least agentd's 25s keep-alive period for a true figure). ScaleLatencyRequests: c=1
	// requests to the one real agentd, with and without the fleet. ScaleStartRate: fleet agents
	// started per second.
	ScaleAgents          []int         `json:"scale_agents"`
	ScaleIdle            time.Duration `json:"scale_idle"`
	ScaleLatencyRequests int           `json:"scale_latency_requests"`
	ScaleStartRate       int           `json:"scale_start_rate"`
	// ScaleKeepAlive, when set, is the fleet's keep-alive period (idle timeout three times
	// it) instead of agentd's defaults (25s, 60s): the tiny preset's restart settles in seconds.
	ScaleKeepAlive time.Duration `json:"scale_keep_alive,omitempty"`
	// ScaleKasdCPUs, when set, is a taskset(1) CPU list that kasd alone runs on in the scale
	// scenario; the fleet, the routing agentd and its service and the runner run on the other
	// CPUs, as if the fleet were on machines of its own (make bench-scale: CPU 0 where there
	// are two or more). Empty: everything shares every CPU.
	ScaleKasdCPUs string `json:"scale_kasd_cpus,omitempty"`
	// ScaleSettle is how long the fleet idles after kasd's RSS is read (5 s after the last agent
	// joined) before the idle window: quic-go's path MTU discovery rides a connection's first
	// ~4 keep-alives, so a window that starts right after a long start measures the search,
	// not steady state (make bench-scale: 4 keep-alive periods). 0: at once.
	ScaleSettle time.Duration `json:"scale_settle,omitempty"`

	// FailoverInterval paces the steady request stream; FailoverAfter is how long the stream
	// runs after the kill.
	FailoverInterval time.Duration `json:"failover_interval"`
	FailoverAfter    time.Duration `json:"failover_after"`
}

// Preset returns the sizes of a named preset.
func Preset(name string) (Sizes, error) {
	switch name {
	case "quick":
		return Sizes{
			LatencyConcurrency: []int{1, 64}, LatencyRequests: []int{3000, 20000}, LatencyRounds: 3,
			BodyBytes: 1024, DatagramRequests: 1000, ProfileSeconds: 5,
			ThroughputBytes: 64 << 20, ThroughputRounds: 2,
			HOLLossPercent: []float64{0, 1, 3}, HOLDuration: 4 * time.Second, HOLConcurrency: 4, HOLBulkRate: 20 << 20,
			HOLSlowReaders: 2, HOLSlowRate: 10e6,
			ScaleAgents: []int{1000}, ScaleIdle: 5 * time.Second, ScaleLatencyRequests: 1000, ScaleStartRate: 1000,
			FailoverInterval: 10 * time.Millisecond, FailoverAfter: 10 * time.Second,
		}, nil
	case "full":
		return Sizes{
			LatencyConcurrency: []int{1, 64}, LatencyRequests: []int{20000, 100000}, LatencyRounds: 5,
			BodyBytes: 1024, DatagramRequests: 5000, ProfileSeconds: 15,
			ThroughputBytes: 256 << 20, ThroughputRounds: 3,
			HOLLossPercent: []float64{0, 1, 3}, HOLDuration: 15 * time.Second, HOLConcurrency: 4, HOLBulkRate: 20 << 20,
			HOLSlowReaders: 2, HOLSlowRate: 10e6,
			ScaleAgents: []int{1000, 10000, 20000}, ScaleIdle: 30 * time.Second, ScaleLatencyRequests: 3000, ScaleStartRate: 1000,
			FailoverInterval: 5 * time.Millisecond, FailoverAfter: 15 * time.Second,
		}, nil
	case "tiny":
		return Sizes{
			LatencyConcurrency: []int{1, 4}, LatencyRequests: []int{150, 300}, LatencyRounds: 2,
			BodyBytes: 1024, DatagramRequests: 100, ProfileSeconds: 1,
			ThroughputBytes: 1 << 20, ThroughputRounds: 1,
			HOLLossPercent: []float64{0, 3}, HOLDuration: time.Second, HOLConcurrency: 2, HOLBulkRate: 4 << 20,
			HOLSlowReaders: 2, HOLSlowRate: 2e6,
			ScaleAgents: []int{20}, ScaleIdle: time.Second, ScaleLatencyRequests: 100, ScaleStartRate: 200, ScaleKeepAlive: time.Second,
			FailoverInterval: 20 * time.Millisecond, FailoverAfter: 5 * time.Second,
		}, nil
	case "scale": // make bench-scale: the scale scenario only, its steps from --scale-agents
		s, _ := Preset("quick")
		s.ScaleAgents = []int{1000, 5000, 10000, 20000, 50000}
		s.ScaleIdle, s.ScaleLatencyRequests, s.ScaleStartRate = 30*time.Second, 2000, 1000
		s.ScaleSettle = 4 * quic.DefaultAgentKeepAlivePeriod
		return s, nil
	}
	return Sizes{}, fmt.Errorf("unknown preset %q (quick, full, tiny, scale)", name)
}

// Config configures a run. Zero fields take the documented defaults.
type Config struct {
	// Preset names the Sizes ("quick", "full", "tiny"); recorded in the results. Default "quick".
	Preset string
	// Sizes overrides the preset when non-nil.
	Sizes *Sizes
	// Scenarios to run, in AllScenarios order. Default: all.
	Scenarios []string
	// ResultsDir receives <timestamp>/ with the results. Default "benchmarks/results" under
	// ModuleDir.
	ResultsDir string
	// BinDir holds kasd, agentd and kasctl. Default: build them into the work directory.
	BinDir string
	// ModuleDir is the qkas module root (for go build and git). Default: from `go env GOMOD`.
	ModuleDir string
	// KeepWork keeps the work directory (process logs, secrets) instead of removing it.
	KeepWork bool
	// Log receives progress lines. Default: io.Discard.
	Log io.Writer
	// Self is the command that re-executes this program; the runner appends ChildArg, a role
	// and its flags to start the raw quic-go server and the ReverseProxy hop as their own
	// processes. The program's main must hand those arguments to ChildMain (see ChildArg).
	// Default: os.Executable().
	Self []string
}

func (c Config) withDefaults() (Config, Sizes, error) {
	if c.Preset == "" {
		c.Preset = "quick"
	}
	var s Sizes
	if c.Sizes != nil {
		s = *c.Sizes
	} else {
		var err error
		if s, err = Preset(c.Preset); err != nil {
			return c, s, err
		}
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = AllScenarios
	}
	for _, sc := range c.Scenarios {
		if !slices.Contains(AllScenarios, sc) {
			return c, s, fmt.Errorf("unknown scenario %q (have %v)", sc, AllScenarios)
		}
	}
	if len(s.LatencyConcurrency) != len(s.LatencyRequests) {
		return c, s, fmt.Errorf("LatencyConcurrency and LatencyRequests differ in length")
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return c, s, nil
}

func (c Config) wants(scenario string) bool { return slices.Contains(c.Scenarios, scenario) }
