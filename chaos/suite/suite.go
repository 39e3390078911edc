package suite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config says how big the fleet is and how long each fault lasts. The zero value of every field
// means its default (see defaults).
type Config struct {
	ModuleDir   string        // where `go build` runs; default "."
	BinDir      string        // kasd, agentd, kasctl already built; default: built into the work directory
	WorkDir     string        // logs, data, secrets; default a new temporary directory
	Agents      int           // agentd processes; default 30
	Concurrency int           // load workers, each with one request in flight; default 300
	Pause       time.Duration // each worker sleeps a random [0, 2*Pause) between requests; default 0
	Duration    time.Duration // load per scenario (longer when its fault needs it); default 30s
	Warmup      time.Duration // load before the fault; default 2s
	Tail        time.Duration // load after a fault is healed, at least; default 5s
	StopHold    time.Duration // kasd-stop: SIGSTOP to SIGCONT; default 15s (> agentd's 6s idle timeout)
	EtcdHold    time.Duration // etcd-down: member down for; default 15s
	CutHold     time.Duration // partition: kasd-1 ↔ kasd-3 cut for; default 10s
	KillHold    time.Duration // kasd-kill: dead for, before its restart; default 5s
	AgentDown   time.Duration // agent-kill: dead for, before its restart; default 2s
	LossPercent float64       // loss: percent of packets dropped; default 3
	Scenarios   []string      // default: all, in the order of AllScenarios
	Keep        bool          // keep the fleet running at the end until interrupted, and the work directory
	Out         io.Writer     // progress and the report; default os.Stdout
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.ModuleDir == "" {
		c.ModuleDir = "."
	}
	if c.Agents == 0 {
		c.Agents = 30
	}
	if c.Concurrency == 0 {
		c.Concurrency = 300
	}
	def(&c.Duration, 30*time.Second)
	def(&c.Warmup, 2*time.Second)
	def(&c.Tail, 5*time.Second)
	def(&c.StopHold, 15*time.Second)
	def(&c.EtcdHold, 15*time.Second)
	def(&c.CutHold, 10*time.Second)
	def(&c.KillHold, 5*time.Second)
	def(&c.AgentDown, 2*time.Second)
	if c.LossPercent == 0 {
		c.LossPercent = 3
	}
	if len(c.Scenarios) == 0 {
		c.Scenarios = AllScenarios()
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
}

// Validate reports a configuration that cannot run.
func (c *Config) Validate() error {
	c.defaults()
	var errs []error
	if c.Agents < 2 || c.Agents > 2000 {
		errs = append(errs, fmt.Errorf("agents: %d not in [2, 2000]", c.Agents))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency: %d", c.Concurrency))
	}
	for _, s := range c.Scenarios {
		if !slices.Contains(AllScenarios(), s) {
			errs = append(errs, fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(AllScenarios(), ",")))
		}
	}
	return errors.Join(errs...)
}

// suite is one run: the fleet, the load balancer and the HTTP client of the load.
type suite struct {
	cfg    Config
	f      *fleet
	lb     *balancer
	client *http.Client
}

// ErrBoundBroken is returned by Run when a scenario broke its bound or the fleet did not
// recover between scenarios.
var ErrBoundBroken = errors.New("a fault broke its bound")

// ErrHostStalled is returned by Run when the only broken bounds were broken while the host
// stalled (peer links between kasd that the fault did not touch timed out): the run is
// inconclusive rather than failed.
var ErrHostStalled = errors.New("a bound broke while the host stalled")

// Run starts the fleet, runs the scenarios, prints the report and stops everything. Everything
// it created is gone when it returns (unless Keep, which waits for ctx to end first).
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	work := cfg.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "qkch-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	f := &fleet{cfg: cfg, work: work, logs: filepath.Join(work, "logs")}
	if err := os.MkdirAll(f.logs, 0o755); err != nil {
		return err
	}
	f.logf("work directory %s (process logs in logs/)", work)
	defer func() {
		f.close()
		if err == nil && !cfg.Keep && cfg.WorkDir == "" {
			os.RemoveAll(work)
		} else {
			f.logf("logs kept in %s", f.logs)
		}
	}()
	if err := f.build(ctx); err != nil {
		return err
	}
	if err := f.start(ctx); err != nil {
		return err
	}
	s := &suite{cfg: cfg, f: f, lb: newBalancer(f)}
	s.client = &http.Client{Transport: &http.Transport{
		DialContext: f.client.Dial, MaxIdleConns: 2 * cfg.Concurrency, MaxIdleConnsPerHost: cfg.Concurrency,
		DisableCompression: true,
	}}
	defer s.client.CloseIdleConnections()
	lbCtx, stopLB := context.WithCancel(context.Background())
	var lbWG sync.WaitGroup
	lbWG.Go(func() { s.lb.run(lbCtx) })
	defer func() { stopLB(); lbWG.Wait() }()

	var results []*result
	unsettled := "" // why the fleet was not whole when the previous scenario ended
	for _, name := range cfg.Scenarios {
		if ctx.Err() != nil {
			break
		}
		sc := scenarioByName(name)
		f.logf("== %s: %s", sc.name, sc.about)
		marks := f.logMarks()
		cpu0 := readCPU()
		res := sc.run(s, ctx)
		res.name = sc.name
		res.collateral = f.collateralLinkLosses(marks, res.faulted)
		res.cpuBusy = cpu0.busySince()
		res.loadavg = loadAvg()
		if unsettled != "" {
			res.notes = append(res.notes, "started on a fleet that was not whole: "+unsettled)
			unsettled = ""
		}
		if res.err == nil && sc.name != "placement" {
			t := time.Now()
			last, werr := f.waitWhole(ctx, 45*time.Second)
			if werr != nil {
				res.settle = werr.Error()
				unsettled = res.settle
			} else {
				res.settleTime = time.Since(t)
				res.settleWhy = last
			}
		}
		if !res.pass() {
			res.excerpts = f.excerpts(marks)
		}
		res.print(f.cfg.Out)
		results = append(results, res)
	}
	printTable(f.cfg.Out, results, f)
	if err = ctx.Err(); err == nil {
		for _, r := range results {
			switch {
			case r.stalled():
				if err == nil {
					err = ErrHostStalled
				}
			case !r.pass():
				err = ErrBoundBroken
			}
		}
	}
	if cfg.Keep && ctx.Err() == nil {
		s.printKeep()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		select {
		case <-ctx.Done():
		case <-sig:
		}
	}
	return err
}

// printKeep says how to reach the fleet kept running.
func (s *suite) printKeep() {
	f := s.f
	k := f.kasd[0]
	fmt.Fprintf(f.cfg.Out, "\nThe fleet keeps running until interrupted (Ctrl-C). From its client namespace:\n")
	fmt.Fprintf(f.cfg.Out, "  ip netns exec %s curl -H 'Authorization: Bearer %s' %s\n", f.client.name, f.jwt, k.apiURL("/api/v1/agents"))
	fmt.Fprintf(f.cfg.Out, "  ip netns exec %s curl -H 'Authorization: Bearer %s' '%s'\n", f.client.name, f.jwt,
		k.apiURL("/api/v1/agents/"+f.agents[0].id+"/proxy/echo/data?n=16&seed=1"))
	fmt.Fprintf(f.cfg.Out, "  ip netns exec %s curl -s %s | grep ^kasd_agent_connections\n", f.client.name, k.obsURL("/metrics"))
	fmt.Fprintf(f.cfg.Out, "Logs: %s\n", f.logs)
}

// logMarks records where every kasd and agent log ends now.
func (f *fleet) logMarks() map[string]int64 {
	m := map[string]int64{}
	for _, k := range f.kasd {
		m[k.proc.logPath] = logSize(k.proc.logPath)
	}
	for _, a := range f.agents {
		m[a.proc.logPath] = logSize(a.proc.logPath)
	}
	return m
}

// collateralLinkLosses counts the "peer link lost" lines logged since marks between two kasd
// that are both outside faulted, and the idle timeouts of links that a faulted kasd's new
// process (restarted by the scenario) made after it started: the fault touched the old
// process's links, not those.
func (f *fleet) collateralLinkLosses(marks map[string]int64, faulted []string) int {
	n := 0
	for _, k := range f.kasd {
		restarted := false
		lines, _ := logLines(k.proc.logPath, marks[k.proc.logPath], 1000, "peer link lost", `"message":"kasd started"`)
		for _, l := range lines {
			var e struct {
				Message string `json:"message"`
				Peer    string `json:"peer"`
				Cause   string `json:"cause"`
			}
			if json.Unmarshal([]byte(l), &e) != nil {
				continue
			}
			switch {
			case e.Message == "kasd started":
				restarted = true
			case slices.Contains(faulted, e.Peer):
			case !slices.Contains(faulted, k.id):
				n++
			case restarted && strings.Contains(e.Cause, "no recent network activity"):
				n++
			}
		}
	}
	return n
}

// excerpts returns the warn and error lines logged since marks, a few per file, the kasd first.
func (f *fleet) excerpts(marks map[string]int64) []string {
	var out []string
	var paths []string
	for _, k := range f.kasd {
		paths = append(paths, k.proc.logPath)
	}
	for _, a := range f.agents {
		paths = append(paths, a.proc.logPath)
	}
	agentFiles := 0
	for _, p := range paths {
		lines, n := logLines(p, marks[p], 4, `"level":"warn"`, `"level":"error"`, "panic")
		if n == 0 {
			continue
		}
		if strings.Contains(filepath.Base(p), "agent-") {
			if agentFiles++; agentFiles > 4 {
				continue
			}
		}
		out = append(out, fmt.Sprintf("%s: %d warn/error lines, first %d:", filepath.Base(p), n, len(lines)))
		for _, l := range lines {
			out = append(out, "  "+l)
		}
	}
	return out
}

// cpuSample is the host's CPU time counters (/proc/stat, first line).
type cpuSample struct{ total, idle uint64 }

func readCPU() cpuSample {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var c cpuSample
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		c.total += v
		if i == 3 || i == 4 { // idle, iowait
			c.idle += v
		}
	}
	return c
}

// busySince is the percentage of the host's CPU time that was busy since c.
func (c cpuSample) busySince() float64 {
	now := readCPU()
	if now.total <= c.total {
		return 0
	}
	return 100 * (1 - float64(now.idle-c.idle)/float64(now.total-c.total))
}

// loadAvg is the first field of /proc/loadavg.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
