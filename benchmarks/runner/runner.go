package runner

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Machine describes where the run happened.
type Machine struct {
	Hostname  string `json:"hostname"`
	Cores     int    `json:"cores"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	MemTotal  string `json:"mem_total"`
	LoadAvg   string `json:"loadavg_at_start"`
}

// Results is results.json.
type Results struct {
	Started    time.Time         `json:"started"`
	Seconds    float64           `json:"seconds"`
	Preset     string            `json:"preset"`
	Sizes      Sizes             `json:"sizes"`
	Machine    Machine           `json:"machine"`
	Commit     string            `json:"commit"`
	Fleet      bool              `json:"fleet"`
	Headline   []HeadlineRow     `json:"headline"`
	Latency    *LatencyResults   `json:"latency,omitempty"`
	Throughput *ThroughputResult `json:"throughput,omitempty"`
	HOL        *HOLResults       `json:"hol,omitempty"`
	Scale      ScaleSteps        `json:"scale,omitempty"` // one object per fleet size (scale.go)
	Failover   *FailoverResults  `json:"failover,omitempty"`

	Kubernetes *KubernetesResults `json:"kubernetes,omitempty"` // kubernetes.go
	// Skipped maps a scenario to why it did not run (or failed).
	Skipped map[string]string `json:"skipped,omitempty"`
}

// HeadlineRow is one line of REPORT.md's first table.
type HeadlineRow struct {
	Scenario string `json:"scenario"`
	Metric   string `json:"metric"`
	Qkas     string `json:"qkas"`
	Baseline string `json:"baseline"`
	Ratio    string `json:"ratio"`
	Target   string `json:"target,omitempty"`
}

// Run runs the configured scenarios and writes the results directory, whose path it returns.
// A scenario that fails or cannot run is recorded in Results.Skipped; Run fails only when
// nothing useful can be written.
func Run(ctx context.Context, cfg Config) (string, error) {
	cfg, sizes, err := cfg.withDefaults()
	if err != nil {
		return "", err
	}
	if cfg.ModuleDir == "" {
		out, err := runCmd(ctx, "go", "env", "GOMOD")
		if err != nil || out == "" || out == os.DevNull {
			return "", fmt.Errorf("cannot find the qkas module (go env GOMOD): %v", err)
		}
		cfg.ModuleDir = filepath.Dir(out)
	}
	if cfg.ResultsDir == "" {
		cfg.ResultsDir = filepath.Join(cfg.ModuleDir, "benchmarks", "results")
	}
	started := time.Now()
	out := filepath.Join(cfg.ResultsDir, started.UTC().Format("20060102T150405Z"))
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp("", "qkasbench-")
	if err != nil {
		return "", err
	}
	e := &env{cfg: cfg, sizes: sizes, work: work, out: out}
	if cfg.KeepWork {
		e.logf("work directory (logs): %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	res := &Results{Started: started, Preset: cfg.Preset, Sizes: sizes, Machine: machine(ctx), Commit: gitCommit(ctx, cfg.ModuleDir), Skipped: map[string]string{}}
	e.logf("results: %s (%d cores, %s)", out, res.Machine.Cores, res.Machine.CPUModel)
	if err := e.prepare(ctx); err != nil {
		return "", err
	}
	res.Fleet = e.fleet

	step := func(name string, f func() error) {
		if !cfg.wants(name) || ctx.Err() != nil {
			return
		}
		e.logf("== %s", name)
		if err := f(); err != nil {
			var sk skipError
			if errors.As(err, &sk) {
				res.Skipped[name] = "skipped: " + sk.reason
			} else {
				res.Skipped[name] = "failed: " + err.Error()
			}
			e.logf("%s: %s", name, res.Skipped[name])
		}
	}
	step(ScenarioLatency, func() (err error) { res.Latency, err = e.runLatency(ctx); return })
	step(ScenarioThroughput, func() (err error) { res.Throughput, err = e.runThroughput(ctx); return })
	step(ScenarioHOL, func() (err error) { res.HOL, err = e.runHOL(ctx); return })
	step(ScenarioScale, func() (err error) { res.Scale, err = e.runScale(ctx); return })
	step(ScenarioFailover, func() (err error) { res.Failover, err = e.runFailover(ctx); return })
	step(ScenarioKubernetes, func() (err error) { res.Kubernetes, err = e.runKubernetes(ctx); return })

	res.Seconds = time.Since(started).Seconds()
	res.Headline = headline(res)
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return out, err
	}
	if err := os.WriteFile(filepath.Join(out, "results.json"), b, 0o644); err != nil {
		return out, err
	}
	if err := os.WriteFile(filepath.Join(out, "REPORT.md"), []byte(report(res)), 0o644); err != nil {
		return out, err
	}
	e.logf("wrote %s", filepath.Join(out, "REPORT.md"))
	return out, ctx.Err()
}

// skipError marks a scenario that cannot run here (no root, no fleet), as opposed to a failure.
type skipError struct{ reason string }

func (s skipError) Error() string { return s.reason }

func machine(ctx context.Context) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if v, err := runCmd(ctx, "go", "env", "GOVERSION"); err == nil && v != "" {
		m.GoVersion = v
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.TrimSpace(string(b))
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	m.MemTotal = procField("/proc/meminfo", "MemTotal")
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// gitCommit is the full commit hash, with "-dirty" when the tree has changes.
func gitCommit(ctx context.Context, dir string) string {
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "HEAD")
	out, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "-dirty"
	}
	return c
}
