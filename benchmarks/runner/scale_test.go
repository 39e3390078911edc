package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qkas/qkas/benchmarks/fleetsim"
)

// TestScaleFleetSplit runs the scale scenario with a fleet of 200 real agentd agents (one UDP
// socket each, in their own network namespace) against a real kasd, restart included, with
// the simulator's per-process cap forced down to 70 agents, so the fleet runs as 3 processes
// of 66, 67 and 67 agents as the 50,000 step runs as 4 of 12,500. It checks what the step
// measured and summed: every agent held by kasd before and after its kill -9, each in about
// one attempt; each process connected exactly its share and the shares add up to what kasd
// holds (a fleet counted from one process, or an agent in two processes, fails this); kasd's
// RSS, routing latency and the fleet's CPU read; no simulator process left behind. It asserts
// that the harness measures, not how fast anything is. Needs root and network namespaces;
// skipped with -short.
func TestScaleFleetSplit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	if err := checkNetnsTools(); err != nil {
		t.Skipf("scale harness cannot run here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	v, err := newVeth(ctx)
	if err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	v.close()
	sizes, err := Preset("tiny")
	if err != nil {
		t.Fatal(err)
	}
	const agents, perProc = 200, 70
	sizes.ScaleAgents = []int{agents}
	var log strings.Builder
	e := &env{cfg: Config{ModuleDir: "../..", Log: &log}, sizes: sizes, work: t.TempDir(), out: t.TempDir()}
	if err := e.prepare(ctx); err != nil {
		t.Fatal(err)
	}
	steps, err := e.runScaleOpts(ctx, scaleOpts{agentsPerProc: perProc})
	if err != nil {
		var skip skipError
		if errors.As(err, &skip) {
			t.Skip(err)
		}
		t.Fatalf("runScale: %v\n%s", err, log.String())
	}
	if left := procsMentioning(e.work); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
	if len(steps) != 1 {
		t.Fatalf("steps: %+v", steps)
	}
	p := steps[0]
	if p.Err != "" || p.Connected != agents || p.RestartConnected != agents {
		t.Fatalf("fleet not held: %+v\n%s", p, log.String())
	}
	if p.FleetProcs != 3 || !slices.Equal(p.FleetAgents, []int{66, 67, 67}) {
		t.Fatalf("fleet split over %d processes with shares %v, want 3 with [66 67 67]", p.FleetProcs, p.FleetAgents)
	}
	sum := 0
	for i, c := range p.FleetConnected {
		if c != p.FleetAgents[i] {
			t.Errorf("fleetsim-%d connected %d of its %d agents", i, c, p.FleetAgents[i])
		}
		sum += c
	}
	if len(p.FleetConnected) != 3 || sum != p.Connected {
		t.Errorf("processes connected %v (sum %d), kasd held %d", p.FleetConnected, sum, p.Connected)
	}
	// A fleet sharing one socket, or agents kasd never saw again, fail these.
	if p.AttemptsPerAgent < 1 || p.AttemptsPerAgent > 3 || p.AttemptResults["accepted"] < agents+1 {
		t.Errorf("attempts after the restart: %.2f per agent, %v", p.AttemptsPerAgent, p.AttemptResults)
	}
	if p.KasdRSSMiB <= p.KasdRSSBeforeMiB || p.RouteP50us <= 0 || p.RouteP50OneAgent <= 0 || p.RestartSettleS <= 0 ||
		p.FleetRSSMiB <= 0 || p.FleetCPUPct <= 0 || p.RouteP50FleetStopped <= 0 || p.RestartKasdCPUPct <= 0 || p.RestartFleetCPUPct <= 0 ||
		p.RestartReadyS <= 0 || len(p.RestartTimeline) == 0 || p.RestartTimeline[len(p.RestartTimeline)-1] != agents+1 {
		t.Errorf("figures missing: %+v", p)
	}
	// Every idle agent pings once per keep-alive period (quic-go's path MTU probes add up to a
	// few more in the first periods): the window, one period long, holds about one per agent.
	t.Logf("datagrams to kasd per agent and period: %.2f", p.IdleDatagramsPerAgentPeriod)
	if d := p.IdleDatagramsPerAgentPeriod; d < 0.5 || d > 10 {
		t.Errorf("datagrams to kasd per agent and period in the idle window: %.2f, want about 1 (1–3)", d)
	}
}

// procsMentioning lists the processes whose command line contains s ("pid: cmdline").
func procsMentioning(s string) []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, fmt.Sprintf("%d: %s", pid, bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// TestStartFleetSplit checks startFleet's split without root or kasd: stand-in processes (a
// shell recording its arguments) get one tokens file each, the files partition the fleet in
// order with at most the cap each, the start rates add up to the fleet's, each runs on the
// CPUs given (where taskset and two CPUs exist), the death of one process is reported as the
// step's failure, and stop leaves none running.
func TestStartFleetSplit(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "fake-fleetsim")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$GOGC $GOMEMLIMIT\" > \"$0.$$.env\"\necho \"$@\" > \"$0.$$.args\"\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var agents []fleetsim.Agent
	for i := range 25 {
		agents = append(agents, fleetsim.Agent{ID: fmt.Sprintf("sim-%d", i), Token: fmt.Sprintf("tok-%d", i)})
	}
	var allowed, want unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatal(err)
	}
	cpus := ""
	if _, err := exec.LookPath("taskset"); err == nil && allowed.Count() >= 2 {
		last := 0
		for c := range maxCPU + 1 {
			if allowed.IsSet(c) {
				last = c
			}
		}
		want.Set(last)
		cpus = strconv.Itoa(last)
	}
	f, err := startFleet(dir, "", []string{script, "--kas-address", "x"}, agents, 10, 90, cpus)
	if err != nil {
		t.Fatal(err)
	}
	defer f.stop(time.Second)
	if len(f.procs) != 3 || !slices.Equal(f.shares, []int{8, 8, 9}) {
		t.Fatalf("%d processes with shares %v, want 3 with [8 8 9]", len(f.procs), f.shares)
	}
	var all []fleetsim.Agent
	var rate float64
	for i, pr := range f.procs {
		var b []byte
		for deadline := time.Now().Add(10 * time.Second); ; {
			b, err = os.ReadFile(fmt.Sprintf("%s.%d.args", script, pr.pid()))
			if err == nil && bytes.HasSuffix(b, []byte("\n")) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("%s: no arguments recorded: %v", pr.name, err)
		}
		args := strings.Fields(string(b))
		if _, err := exec.LookPath("env"); err == nil {
			// Each process collects less often, within its share of half the memory.
			e, _ := os.ReadFile(fmt.Sprintf("%s.%d.env", script, pr.pid()))
			want := fmt.Sprintf("%d %d\n", fleetGOGC, int64(float64(memTotalBytes())*fleetMemoryShare)/3)
			if memTotalBytes() <= 0 || string(e) != want {
				t.Errorf("%s: GOGC and GOMEMLIMIT %q, want %q", pr.name, e, want)
			}
		}
		if _, err := exec.LookPath("nice"); err == nil {
			// nice is relative to the caller's (a test run under nice itself).
			if n, want := niceOf(t, pr.pid()), min(niceOf(t, os.Getpid())+fleetNice, 19); n != want {
				t.Errorf("%s runs at nice %d, want %d (below kasd)", pr.name, n, want)
			}
		}
		if cpus != "" {
			var got unix.CPUSet
			if err := unix.SchedGetaffinity(pr.pid(), &got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s runs on CPUs %s, want %s", pr.name, formatCPUs(got), cpus)
			}
		}
		flag := func(name string) string {
			i := slices.Index(args, name)
			if i < 0 || i+1 >= len(args) {
				t.Fatalf("%s: no %s in %v", pr.name, name, args)
			}
			return args[i+1]
		}
		if flag("--kas-address") != "x" || flag("--status-file") != f.status[i] {
			t.Errorf("%s: arguments %v", pr.name, args)
		}
		share, err := fleetsim.LoadTokensFile(flag("--tokens-file"))
		if err != nil || len(share) != f.shares[i] || len(share) > 10 {
			t.Errorf("%s: tokens file has %d agents (%v), share %d, cap 10", pr.name, len(share), err, f.shares[i])
		}
		all = append(all, share...)
		r, err := strconv.ParseFloat(flag("--start-rate"), 64)
		if err != nil {
			t.Fatal(err)
		}
		rate += r
	}
	if !slices.Equal(all, agents) {
		t.Errorf("the processes' tokens files are not the fleet, each agent once in order: %v", all)
	}
	if rate < 89.999 || rate > 90.001 {
		t.Errorf("start rates add up to %v a second, want 90", rate)
	}
	if err := f.failed(); err != nil {
		t.Fatalf("failed() = %v with every process running", err)
	}
	_ = f.procs[1].cmd.Process.Signal(syscall.SIGKILL)
	<-f.procs[1].done
	if err := f.failed(); err == nil || !strings.Contains(err.Error(), "fleetsim-1") {
		t.Errorf("failed() = %v after fleetsim-1 died", err)
	}
	f.stop(time.Second)
	for _, pr := range f.procs {
		if !pr.exited() {
			t.Errorf("%s still running after stop", pr.name)
		}
	}
	if left := procsMentioning(script); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
}

// TestWidenPortRange: the fleet's namespace gets the wide ephemeral port range (the default
// one holds 28,232 sockets, fewer than the 50,000 step's agents), as a process in it sees it,
// and the runner's own namespace keeps its range. Needs root and network namespaces.
func TestWidenPortRange(t *testing.T) {
	if err := checkNetnsTools(); err != nil {
		t.Skipf("cannot make network namespaces here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const path = "/proc/sys/net/ipv4/ip_local_port_range"
	host, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no %s: %v", path, err)
	}
	n, err := newLoopbackNetns(ctx, "ports")
	if err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	defer n.remove()
	if err := widenPortRange(n); err != nil {
		t.Fatal(err)
	}
	got, err := runCmd(ctx, "ip", "netns", "exec", n.name, "cat", path)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Join(strings.Fields(got), " "); f != fleetPortRange {
		t.Errorf("port range in the fleet's namespace: %q, want %q", f, fleetPortRange)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, host) {
		t.Errorf("the runner's own port range changed: %q → %q", host, after)
	}
}

// niceOf is process pid's niceness (/proc/pid/stat, field 19).
func niceOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	n, err := strconv.Atoi(f[16])
	if err != nil {
		t.Fatalf("stat %q: %v", b, err)
	}
	return n
}
