package runner

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qkas/qkas/benchmarks/fleetsim"
	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/benchmarks/plot"
	"github.com/qkas/qkas/quic"
)

// ScaleStep is one agent count of the scale scenario, measured on a fresh kasd against a fleet
// of real agentd agents (benchmarks/fleetsim), each with its own UDP socket, in a network
// namespace of their own joined to kasd's by a veth pair.
type ScaleStep struct {
	Agents int `json:"agents"`
	// Connected is how many of the fleet's agents kasd held after the start; ConnectS how long
	// the fleet took to reach that (its agents start at ScaleStartRate per second).
	Connected int     `json:"connected"`
	ConnectS  float64 `json:"connect_s"`
	// Kasd's RSS (/proc/<pid>/status VmRSS) with only the routing agent, and with the fleet idle
	// (5 s after the start: the start's high-water mark, comparable with every earlier run);
	// KasdRSSEndKiBPerAgent again at the end of the idle window (since 2026-12-02: with
	// --gogc=auto it can fall just after kasd returned memory, before the stacks of the
	// connections' loops grew again at their next keep-alive, so it is not a steady state).
	KasdRSSBeforeMiB      float64 `json:"kasd_rss_before_mib"`
	KasdRSSMiB            float64 `json:"kasd_rss_mib"`
	KasdRSSKiBPerAgent    float64 `json:"kasd_rss_kib_per_agent"` // (after − before) / connected
	KasdRSSEndKiBPerAgent float64 `json:"kasd_rss_end_kib_per_agent"`
	KasdCPUPct            float64 `json:"kasd_cpu_pct"` // idle fleet, % of one core over ScaleIdle
	KasdCPUusPerAgentPS   float64 `json:"kasd_cpu_us_per_agent_per_s"`
	// The fleet's simulator processes (as many as keep each under its open-files limit, see
	// scaleOpts), summed over them: CPU over the same window, RSS at its end.
	FleetCPUPct float64 `json:"fleetsim_cpu_pct"`
	FleetRSSMiB float64 `json:"fleetsim_rss_mib"`
	// FleetProcs is how many simulator processes ran the fleet; FleetAgents each one's share of
	// the agents, FleetConnected how many of its share each one had connected at the end of the
	// idle window (its own count: fleetsim.Status), in the same order.
	FleetProcs int `json:"fleetsim_procs"`
	// KasdCPUs and OtherCPUs: the CPU lists kasd and everything else ran on
	// (Sizes.ScaleKasdCPUs); empty when all shared every CPU.
	KasdCPUs       string `json:"kasd_cpus,omitempty"`
	OtherCPUs      string `json:"other_cpus,omitempty"`
	FleetAgents    []int  `json:"fleetsim_agents,omitempty"`
	FleetConnected []int  `json:"fleetsim_connected,omitempty"`
	// FleetStatusAgeS: how old the oldest of those counts was when read, when a process short
	// of CPU had not written a fresh one within 10 s (0: all fresh).
	FleetStatusAgeS float64 `json:"fleetsim_status_age_s,omitempty"`
	// UDPDrops: datagrams the kernel dropped at kasd's agent socket during the idle window
	// (kasd_udp_receive_drops_total); ConnectDrops during the fleet's start, RestartDrops in
	// the restarted kasd until its reconnects settled.
	UDPDrops int64 `json:"udp_drops"`
	// IdleDatagramsPerAgentPeriod: datagrams delivered to kasd's namespace during the idle
	// window (Udp InDatagrams of /proc/<kasd pid>/net/snmp), per agent and keep-alive period.
	// 1.0 is one keep-alive PING per period; more while quic-go's path MTU discovery is still
	// probing on the first keep-alives of the connections (about 4 probes each way per
	// connection: 2.5 in the first periods), or with probe timeouts on a starved host.
	IdleDatagramsPerAgentPeriod float64 `json:"idle_datagrams_per_agent_period"`
	ConnectDrops                int64   `json:"udp_drops_connect"`
	RestartDrops                int64   `json:"udp_drops_restart"`
	// Routing through kasd to the one real agentd (c=1, small GET): with the fleet connected
	// and idle, and before it started.
	RouteP50us       float64 `json:"route_p50_us"`
	RouteP99us       float64 `json:"route_p99_us"`
	RouteP50OneAgent float64 `json:"route_p50_1agent_us"`
	RouteP99OneAgent float64 `json:"route_p99_1agent_us"`
	// The same with the fleet connected and its simulator processes stopped (SIGSTOP) for the
	// measurement: kasd still holds every connection, but the fleet's processes no longer
	// take the CPU the client, the routing agentd and its service share with them (agents of
	// a real fleet run elsewhere). The gap between this and RouteP50us is the harness's.
	RouteP50FleetStopped float64 `json:"route_p50_fleet_stopped_us"`
	RouteP99FleetStopped float64 `json:"route_p99_fleet_stopped_us"`
	// After kill -9 of kasd and its restart on the same data dir (same stateless-reset key):
	// seconds from the kill until kasd held the whole fleet again (or, if it never did, until
	// the last change), how many it held then, and the agent connection attempts the new kasd
	// saw per agent (kasd_agent_connections_total, every result but the verdicts on held
	// connections: replaced, restarted_elsewhere, suspect_alive, silent_closed) by
	// result. Attempts lost before reaching kasd (dropped handshakes) are not counted.
	RestartSettleS   float64            `json:"restart_settle_s"`
	RestartConnected int                `json:"restart_connected"`
	RestartSettled   bool               `json:"restart_settled"` // the whole fleet came back in time
	AttemptsPerAgent float64            `json:"attempts_per_agent"`
	AttemptResults   map[string]float64 `json:"attempt_results,omitempty"`
	// RestartReadyS: seconds from the kill until the new kasd was ready. RestartTimeline is
	// its agent count at each poll, one a second from then: the shape of the reconnects (when
	// they started, their pace, the tail).
	RestartReadyS   float64 `json:"restart_ready_s"`
	RestartTimeline []int   `json:"restart_timeline,omitempty"`
	// CPU used from the kill until the reconnects settled (or the wait ended), in % of one
	// core: the restarted kasd's, and the fleet simulators' summed. The one near the CPUs it
	// may use (100 % per CPU of its list) set the settle time's pace.
	RestartKasdCPUPct  float64 `json:"restart_kasd_cpu_pct"`
	RestartFleetCPUPct float64 `json:"restart_fleetsim_cpu_pct"`
	LoadAvg            string  `json:"loadavg"` // /proc/loadavg when the step ended
	Err                string  `json:"error,omitempty"`
}

// Fixed ports inside the fresh kas namespace.
const (
	scaleAgentPort = 8150
	scaleAPIPort   = 8151
	scaleObsPort   = 8152
)

// scalePlot is the scenario's plot file.
const scalePlot = "scale.png"

// scaleOpts tunes how the scale scenario runs its fleet.
type scaleOpts struct {
	// agentsPerProc caps the agents of one simulator process. 0: fleetsim.MaxAgents of the
	// runner's own RLIMIT_NOFILE hard limit, which the processes inherit and raise their soft
	// limit to (15,000 at this machine's 20,000). The test forces a small cap to run a
	// split fleet at a small size.
	agentsPerProc int
}

// perProc is the cap on one simulator process's agents.
func (o scaleOpts) perProc() (int, error) {
	if o.agentsPerProc > 0 {
		return o.agentsPerProc, nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	n := fleetsim.MaxAgents(lim.Max)
	if n == 0 {
		return 0, fmt.Errorf("open-files hard limit %d leaves no room for a fleet", lim.Max)
	}
	return n, nil
}

func (e *env) runScale(ctx context.Context) (ScaleSteps, error) {
	return e.runScaleOpts(ctx, scaleOpts{})
}

func (e *env) runScaleOpts(ctx context.Context, o scaleOpts) (ScaleSteps, error) {
	if err := checkNetnsTools(); err != nil {
		return nil, skipError{"scale: " + err.Error()}
	}
	bin, err := e.fleetsimBin(ctx)
	if err != nil {
		return nil, err
	}
	perProc, err := o.perProc()
	if err != nil {
		return nil, err
	}
	var cpus cpuSplit
	if e.sizes.ScaleKasdCPUs != "" {
		if cpus, err = splitCPUs(e.sizes.ScaleKasdCPUs); err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
		if _, err := exec.LookPath("taskset"); err != nil {
			return nil, fmt.Errorf("scale: kasd's CPUs %q need taskset (util-linux): %w", cpus.kasd, err)
		}
		// The runner measures routing latency and serves the routed service: it is on the
		// fleet's side, as a client and a cluster would be.
		restore, err := pinSelf(cpus.restSet)
		if err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
		defer restore()
		e.logf("scale: kasd on CPU %s; the fleet, the routing agentd and the runner on CPU %s", cpus.kasd, cpus.rest)
	}
	var steps ScaleSteps
	for _, n := range e.sizes.ScaleAgents {
		p, err := e.scaleStep(ctx, bin, n, perProc, cpus)
		p.LoadAvg = loadAvg()
		if err != nil {
			if ctx.Err() != nil {
				return steps, err
			}
			e.logf("scale %d agents: %v", n, err)
			p.Err = err.Error()
		} else {
			e.logf("scale %d agents (%d fleetsim processes, connected %v): held %d, RSS %.1f KiB/agent (%.1f at the idle window's end), idle CPU %.2f%% core (%.2f datagrams/agent/period), drops %d, p50 %.0f (1 agent %.0f, fleet stopped %.0f) µs, restart settled %.1f s (%d held), %.2f attempts/agent, CPU during it kasd %.0f%% fleet %.0f%% (load %s)",
				n, p.FleetProcs, p.FleetConnected, p.Connected, p.KasdRSSKiBPerAgent, p.KasdRSSEndKiBPerAgent, p.KasdCPUPct, p.IdleDatagramsPerAgentPeriod, p.UDPDrops, p.RouteP50us, p.RouteP50OneAgent, p.RouteP50FleetStopped,
				p.RestartSettleS, p.RestartConnected, p.AttemptsPerAgent, p.RestartKasdCPUPct, p.RestartFleetCPUPct, p.LoadAvg)
		}
		steps = append(steps, p)
	}
	var x, rss, cpu, p50, p50one, settle, attempts []float64
	for _, p := range steps {
		if p.Err != "" {
			continue
		}
		x = append(x, float64(p.Agents))
		rss, cpu = append(rss, p.KasdRSSKiBPerAgent), append(cpu, p.KasdCPUPct)
		p50, p50one = append(p50, p.RouteP50us/10), append(p50one, p.RouteP50OneAgent/10)
		settle, attempts = append(settle, p.RestartSettleS), append(attempts, p.AttemptsPerAgent*10)
	}
	if len(x) > 0 {
		err := plot.Lines(filepath.Join(e.out, scalePlot), "kasd with idle agentd agents (one UDP socket each)", "agents",
			"see legend", []plot.Series{
				{Name: "kasd RSS per agent, KiB", X: x, Y: rss},
				{Name: "kasd idle CPU, % core", X: x, Y: cpu},
				{Name: "route p50, 10 µs", X: x, Y: p50},
				{Name: "route p50 with 1 agent, 10 µs", X: x, Y: p50one},
				{Name: "restart settled, s", X: x, Y: settle},
				{Name: "attempts per agent ×10", X: x, Y: attempts},
			}, false)
		if err != nil {
			return steps, err
		}
	}
	return steps, nil
}

// fleetsimBin builds benchmarks/cmd/fleetsim (or takes it from the --bin directory).
func (e *env) fleetsimBin(ctx context.Context) (string, error) {
	if e.cfg.BinDir != "" {
		if p := filepath.Join(e.cfg.BinDir, "fleetsim"); fileExists(p) {
			return p, nil
		}
	}
	out := filepath.Join(e.work, "fleetsim-bin", "fleetsim")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./benchmarks/cmd/fleetsim")
	cmd.Dir = e.cfg.ModuleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build fleetsim: %w\n%s", err, b)
	}
	return out, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// scaleStep measures n agents: kasd, its service and one real agentd process (for routing) in
// one namespace, the fleet in another, run by as many simulator processes of at most perProc
// agents as it takes.
func (e *env) scaleStep(ctx context.Context, fleetBin string, n, perProc int, cpus cpuSplit) (p ScaleStep, err error) {
	p.Agents = n
	p.KasdCPUs, p.OtherCPUs = cpus.kasd, cpus.rest
	if n > fleetPorts {
		return p, fmt.Errorf("scale: %d agents: the fleet's namespace has one address, so at most %d source ports", n, fleetPorts)
	}
	v, err := newVeth(ctx)
	if err != nil {
		return p, err
	}
	defer v.close()
	if err := widenPortRange(v.agent); err != nil {
		return p, err
	}
	dir := e.subdir(fmt.Sprintf("scale-%d", n))

	ln, err := v.kas.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return p, err
	}
	svc := serveHTTP(ln, serviceHandler(e.sizes.BodyBytes))
	defer svc.close()

	ids := make([]string, n+1)
	ids[0] = benchAgent
	for i := 1; i <= n; i++ {
		ids[i] = fmt.Sprintf("sim-%d", i-1)
	}
	tokensFile := filepath.Join(dir, "agent-tokens.yaml") // kasctl agent-token's layout
	tokens, err := writeTokens(tokensFile, ids)
	if err != nil {
		return p, err
	}
	fleetAgents := make([]fleetsim.Agent, 0, n)
	for _, id := range ids[1:] {
		fleetAgents = append(fleetAgents, fleetsim.Agent{ID: id, Token: tokens[id]})
	}
	benchToken, err := writeToken(dir, benchAgent, tokens[benchAgent])
	if err != nil {
		return p, err
	}

	k, err := e.startKasd(ctx, kasdOpts{id: "kasd-scale", ns: v.kas, tokensFile: tokensFile,
		agentListen: fmt.Sprintf("0.0.0.0:%d", scaleAgentPort),
		apiListen:   fmt.Sprintf("127.0.0.1:%d", scaleAPIPort),
		obsListen:   fmt.Sprintf("127.0.0.1:%d", scaleObsPort), cpus: cpus.kasd})
	if err != nil {
		return p, err
	}
	defer func() { k.stop(5 * time.Second) }() // k is replaced by the restart
	agent, err := e.startAgent(agentOpts{id: benchAgent, ns: v.kas, kas: []string{fmt.Sprintf("127.0.0.1:%d", scaleAgentPort)},
		tokenFile: benchToken, services: []string{"svc=http://" + svc.addr()}, cpus: cpus.rest})
	if err != nil {
		return p, err
	}
	defer agent.stop(3 * time.Second)
	if err := e.waitAgent(ctx, k, benchAgent, 1, agent); err != nil {
		return p, err
	}
	r := route{name: "local", base: k.apiURL("/api/v1/agents/" + benchAgent + "/proxy/svc"),
		header: http.Header{"Authorization": {"Bearer " + e.jwt}}, ns: v.kas}
	client := r.client(1)
	defer client.CloseIdleConnections()
	if err := waitRoute(ctx, r, client); err != nil {
		return p, err
	}
	get := r.smallFunc(client)
	measure := func() (load.Summary, error) {
		if _, err := load.Run(ctx, load.Options{Requests: 100}, get); err != nil {
			return load.Summary{}, err
		}
		res, err := load.Run(ctx, load.Options{Requests: e.sizes.ScaleLatencyRequests}, get)
		if err != nil {
			return load.Summary{}, err
		}
		return res.Summarize(), nil
	}
	one, err := measure()
	if err != nil {
		return p, err
	}
	p.RouteP50OneAgent, p.RouteP99OneAgent = one.P50us, one.P99us
	time.Sleep(time.Second)
	before, err := rssBytes(k.pid())
	if err != nil {
		return p, err
	}
	drops0, _ := metricSum(k, "kasd_udp_receive_drops_total", nil)

	// The fleet, in its own namespace: kasd sees 10.250.0.2:<port> per agent.
	argv := []string{fleetBin,
		"--kas-address", fmt.Sprintf("%s:%d", vethKasAddr, scaleAgentPort), "--ca-file", e.caFile,
		"--status-every", "1s"}
	if ka := e.sizes.ScaleKeepAlive; ka > 0 {
		argv = append(argv, "--keep-alive-period", ka.String(), "--idle-timeout", (3 * ka).String())
	}
	fleet, err := startFleet(dir, v.agent.name, argv, fleetAgents, perProc, float64(e.sizes.ScaleStartRate), cpus.rest)
	if err != nil {
		return p, err
	}
	defer fleet.stop(30 * time.Second)
	p.FleetProcs = len(fleet.procs)
	p.FleetAgents = fleet.shares
	t0 := time.Now()
	timeout := time.Minute + time.Duration(n)*time.Second/time.Duration(max(1, e.sizes.ScaleStartRate/2))
	got, err := waitConnections(ctx, k, n+1, 15*time.Second, timeout, fleet.failed)
	if ferr := fleet.failed(); ferr != nil {
		return p, ferr
	}
	if err != nil && got <= 1 {
		return p, fmt.Errorf("%w; fleetsim log:\n%s", err, fleet.procs[0].logTail())
	}
	p.Connected = got - 1
	p.ConnectS = time.Since(t0).Seconds()
	drops1, _ := metricSum(k, "kasd_udp_receive_drops_total", nil)
	p.ConnectDrops = int64(drops1 - drops0)

	// Idle: let the handshakes' garbage go, then RSS, CPU and drops over ScaleIdle (at least one
	// keep-alive period of the agents, so that every keep-alive is in it).
	if err := sleepCtx(ctx, 5*time.Second); err != nil {
		return p, err
	}
	if v, err := metricValue(k, "kasd_agent_connections"); err == nil {
		p.Connected = int(v) - 1 // agents still joining when the wait for them ended
	}
	after, err := rssBytes(k.pid())
	if err != nil {
		return p, err
	}
	p.KasdRSSBeforeMiB, p.KasdRSSMiB = float64(before)/(1<<20), float64(after)/(1<<20)
	p.KasdRSSKiBPerAgent = float64(after-before) / 1024 / float64(max(1, p.Connected))
	if err := sleepCtx(ctx, e.sizes.ScaleSettle); err != nil {
		return p, err
	}
	c0, _ := cpuTime(k.pid())
	f0 := cpuOf(fleet.procs...)
	d0, _ := metricSum(k, "kasd_udp_receive_drops_total", nil)
	snmp := fmt.Sprintf("/proc/%d/net/snmp", k.pid())
	in0, inErr := udpDatagrams(snmp)
	if err := sleepCtx(ctx, e.sizes.ScaleIdle); err != nil {
		return p, err
	}
	if in1, err := udpDatagrams(snmp); err == nil && inErr == nil {
		period := cmp.Or(e.sizes.ScaleKeepAlive, quic.DefaultAgentKeepAlivePeriod)
		p.IdleDatagramsPerAgentPeriod = float64(in1-in0) / float64(max(1, p.Connected)) / (e.sizes.ScaleIdle.Seconds() / period.Seconds())
	}
	c1, _ := cpuTime(k.pid())
	f1 := cpuOf(fleet.procs...)
	d1, _ := metricSum(k, "kasd_udp_receive_drops_total", nil)
	idle := (c1 - c0).Seconds() / e.sizes.ScaleIdle.Seconds()
	p.KasdCPUPct = idle * 100
	p.KasdCPUusPerAgentPS = idle * 1e6 / float64(max(1, p.Connected))
	p.FleetCPUPct = (f1 - f0).Seconds() / e.sizes.ScaleIdle.Seconds() * 100
	p.FleetRSSMiB = float64(fleet.rss()) / (1 << 20)
	p.UDPDrops = int64(d1 - d0)
	if end, err := rssBytes(k.pid()); err == nil {
		p.KasdRSSEndKiBPerAgent = float64(end-before) / 1024 / float64(max(1, p.Connected))
	}
	if p.FleetConnected, p.FleetStatusAgeS, err = fleet.connected(ctx); err != nil {
		return p, err
	}

	loaded, err := measure()
	if err != nil {
		return p, err
	}
	p.RouteP50us, p.RouteP99us = loaded.P50us, loaded.P99us
	if err := fleet.signal(syscall.SIGSTOP); err != nil {
		fleet.signal(syscall.SIGCONT)
		return p, err
	}
	stopped, err := measure()
	if cerr := fleet.signal(syscall.SIGCONT); err == nil {
		err = cerr
	}
	if err != nil {
		return p, err
	}
	p.RouteP50FleetStopped, p.RouteP99FleetStopped = stopped.P50us, stopped.P99us

	// Crash and restart on the same data dir: agents notice through silence and a stateless
	// reset (docs/scale.md), then reconnect through admission.
	if k, err = e.restartKasd(ctx, k, &p, fleet.procs); err != nil {
		return p, err
	}
	// A simulator process that died during the restart would show as agents not coming back.
	return p, fleet.failed()
}

// fleetPortRange is the fleet namespace's ephemeral port range: every agent's socket binds a
// port of its own from it, and the default (32768–60999, 28,232 ports) would cap the fleet at
// 28,232 agents (the next bind fails with EADDRINUSE). fleetPorts is what it holds, less a
// margin for sockets of agents redialling.
const (
	fleetPortRange = "1024 65535"
	fleetPorts     = 65535 - 1024 + 1 - 1024
)

// widenPortRange sets n's net.ipv4.ip_local_port_range to fleetPortRange (a per-namespace
// sysctl: the write goes to the namespace of the thread that opens the file).
func widenPortRange(n *netns) error {
	return n.do(func() error {
		const path = "/proc/sys/net/ipv4/ip_local_port_range"
		if err := os.WriteFile(path, []byte(fleetPortRange+"\n"), 0o644); err != nil {
			return fmt.Errorf("scale: widen the fleet's port range: %w", err)
		}
		b, err := os.ReadFile(path)
		if err != nil || strings.Join(strings.Fields(string(b)), " ") != fleetPortRange {
			return fmt.Errorf("scale: the fleet's port range is %q after setting %q (%v)", b, fleetPortRange, err)
		}
		return nil
	})
}

// simFleet is the fleet's simulator processes (benchmarks/cmd/fleetsim), each running its own
// share of the agents from a tokens file of its own and reporting its counts in a status file.
type simFleet struct {
	procs  []*proc
	shares []int    // agents of each process
	status []string // each process's --status-file
}

// restartPoll is how often restartKasd reads the restarted kasd's agent count: the settle
// time's resolution.
const restartPoll = time.Second

// fleetGOGC is the simulator processes' GOGC. Each holds thousands of agents in one heap
// that every handshake's garbage makes the collector mark again: at Go's default 100 the
// collector was ~22 % of the fleet's CPU in a 50,000-agent restart, with the fleet's core the
// restart's limit (real agents collect on CPUs of their own; at 400 the settle time moved
// within the runs' spread, docs/scale.md). fleetMemoryShare of the
// machine's memory, divided among the processes, is their GOMEMLIMIT, so the higher GOGC
// cannot take the machine's memory from kasd.
const (
	fleetGOGC        = 400
	fleetMemoryShare = 0.5
)

// fleetGCEnv is the env(1) prefix that gives one of procs simulator processes fleetGOGC and
// its share of the memory limit (no limit when /proc/meminfo cannot be read).
func fleetGCEnv(procs int) []string {
	env := []string{"GOGC=" + strconv.Itoa(fleetGOGC)}
	if total := memTotalBytes(); total > 0 && procs > 0 {
		env = append(env, "GOMEMLIMIT="+strconv.FormatInt(int64(float64(total)*fleetMemoryShare)/int64(procs), 10))
	}
	return env
}

// memTotalBytes is MemTotal of /proc/meminfo (0 if unreadable).
func memTotalBytes() int64 {
	kb, unit, _ := strings.Cut(procField("/proc/meminfo", "MemTotal"), " ")
	n, err := strconv.ParseInt(kb, 10, 64)
	if err != nil || unit != "kB" {
		return 0
	}
	return n << 10
}

// fleetNice is the scheduling niceness of the fleet processes (kasd runs at 0): 10 gives kasd
// about ten times their share of a contended core.
const fleetNice = 10

// startFleet starts the fleetsim processes for agents, at most perProc each (fleetsim.Split),
// in namespace netns: argv is the command without --tokens-file, --status-file and
// --start-rate, which startFleet adds per process, giving each a share of rate proportional to
// its agents so that the fleet as a whole starts rate agents a second, on CPUs cpus (a taskset
// list; empty: any). On error every process already started is stopped.
func startFleet(dir, netns string, argv []string, agents []fleetsim.Agent, perProc int, rate float64, cpus string) (f *simFleet, err error) {
	f = &simFleet{}
	defer func() {
		if err != nil {
			f.stop(5 * time.Second)
		}
	}()
	shares := fleetsim.Split(agents, perProc)
	gcEnv := fleetGCEnv(len(shares))
	for i, share := range shares {
		name := fmt.Sprintf("fleetsim-%d", i)
		var b bytes.Buffer
		if err := fleetsim.WriteTokens(&b, share); err != nil {
			return f, err
		}
		tokens := filepath.Join(dir, name+".tokens")
		if err := os.WriteFile(tokens, b.Bytes(), 0o600); err != nil {
			return f, err
		}
		status := filepath.Join(dir, name+".status.json")
		args := append(slices.Clip(argv), "--tokens-file", tokens, "--status-file", status,
			"--start-rate", strconv.FormatFloat(rate*float64(len(share))/float64(len(agents)), 'f', -1, 64))
		args = pinned(cpus, args)
		if nice, err := exec.LookPath("nice"); err == nil {
			// In production the agents run on other machines; here they share kasd's cores,
			// and a fleet busy with its own handshakes must not starve kasd's socket reader.
			args = append([]string{nice, "-n", strconv.Itoa(fleetNice)}, args...)
		}
		if env, err := exec.LookPath("env"); err == nil {
			args = append(append([]string{env}, gcEnv...), args...)
		}
		pr, err := startProc(dir, name, netns, args...)
		if err != nil {
			return f, err
		}
		f.procs, f.shares, f.status = append(f.procs, pr), append(f.shares, len(share)), append(f.status, status)
	}
	if len(f.procs) == 0 {
		return f, errors.New("scale: a fleet of no agents")
	}
	return f, nil
}

// stop stops every process (SIGTERM, SIGKILL after grace), all at once, and returns when all
// are gone. Idempotent.
func (f *simFleet) stop(grace time.Duration) {
	var wg sync.WaitGroup
	for _, pr := range f.procs {
		wg.Go(func() { pr.stop(grace) })
	}
	wg.Wait()
}

// failed is an error naming the first process that has exited, with its log's tail; nil while
// all run. A fleet process only exits when stopped: any exit before is a failure of the step.
// signal sends sig to every simulator process (the first error is returned, every process is
// signalled).
func (f *simFleet) signal(sig syscall.Signal) error {
	var first error
	for _, pr := range f.procs {
		if err := pr.cmd.Process.Signal(sig); err != nil && first == nil {
			first = fmt.Errorf("scale: %v to %s: %w", sig, pr.name, err)
		}
	}
	return first
}

func (f *simFleet) failed() error {
	for _, pr := range f.procs {
		if pr.exited() {
			return fmt.Errorf("scale: %s exited (%v); its log:\n%s", pr.name, pr.waitErr, pr.logTail())
		}
	}
	return nil
}

// rss is the processes' VmRSS summed (a process that is gone counts as zero).
func (f *simFleet) rss() int64 {
	var sum int64
	for _, pr := range f.procs {
		if r, err := rssBytes(pr.pid()); err == nil {
			sum += r
		}
	}
	return sum
}

// connected is each process's connected count from a status it wrote from now on (so that
// every count is at least as recent as the call), in process order, and how old the oldest
// count is. A process short of CPU may write late: after 10 s of waiting its last status is
// taken as it is (its age tells). It checks that each process runs exactly its share.
func (f *simFleet) connected(ctx context.Context) (out []int, staleS float64, err error) {
	since := time.Now()
	out = make([]int, len(f.procs))
	for i, path := range f.status {
		deadline := time.Now().Add(10 * time.Second)
		for {
			s, err := fleetsim.ReadStatusFile(path)
			fresh := err == nil && s.Time.After(since)
			if fresh || (err == nil && time.Now().After(deadline)) {
				if s.Agents != f.shares[i] {
					return nil, 0, fmt.Errorf("scale: %s runs %d agents, its share is %d", f.procs[i].name, s.Agents, f.shares[i])
				}
				out[i] = s.Connected
				if !fresh {
					staleS = max(staleS, since.Sub(s.Time).Seconds())
				}
				break
			}
			if ferr := f.failed(); ferr != nil {
				return nil, 0, ferr
			}
			if time.Now().After(deadline) {
				return nil, 0, fmt.Errorf("scale: no status from %s: %v", f.procs[i].name, err)
			}
			if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
				return nil, 0, err
			}
		}
	}
	return out, staleS, nil
}

// restartKasd kills k (SIGKILL), starts it again with the same arguments and data dir, and
// waits for the fleet to come back (p.Agents of it, plus the routing agent). It returns the
// new kasd.
func (e *env) restartKasd(ctx context.Context, k *kasdProc, p *ScaleStep, fleet []*proc) (*kasdProc, error) {
	argv := k.cmd.Args
	f0 := cpuOf(fleet...)
	k.kill()
	killed := time.Now()
	np, err := startProc(filepath.Dir(k.logPath), k.name+"-restarted", "", argv...)
	if err != nil {
		return k, err
	}
	nk := &kasdProc{proc: np, opts: k.opts, client: k.client}
	if err := nk.waitReady(ctx, 30*time.Second); err != nil {
		return nk, err
	}
	p.RestartReadyS = time.Since(killed).Seconds()
	want := p.Agents + 1
	timeout := 2*time.Minute + time.Duration(p.Agents)*time.Second/100
	last, changed := -1, time.Now()
	deadline := time.Now().Add(timeout)
	for {
		v, err := metricSum(nk, "kasd_agent_connections", nil)
		if err != nil {
			return nk, err
		}
		if c := int(v); c != last {
			last, changed = c, time.Now()
		}
		p.RestartTimeline = append(p.RestartTimeline, last)
		if last >= want || time.Now().After(deadline) {
			break
		}
		// Once a second: each poll is a whole /metrics scrape, whose socket collector reads
		// /proc/net/udp (a walk over every UDP socket of the host, the fleet's 50,000
		// included); polled 5 times a second it was 12.7 % of the restarted kasd's CPU.
		if err := sleepCtx(ctx, restartPoll); err != nil {
			return nk, err
		}
	}
	p.RestartSettleS = changed.Sub(killed).Seconds()
	p.RestartConnected = last - 1
	if waited := time.Since(killed).Seconds(); waited > 0 {
		p.RestartKasdCPUPct = cpuOf(np).Seconds() / waited * 100
		p.RestartFleetCPUPct = (cpuOf(fleet...) - f0).Seconds() / waited * 100
	}
	results, err := metricByLabel(nk, "kasd_agent_connections_total", "result")
	if err != nil {
		return nk, err
	}
	var attempts float64
	for r, v := range results {
		switch r {
		case "replaced", "restarted_elsewhere", "suspect_alive", "silent_closed":
			continue
		}
		attempts += v
	}
	p.AttemptResults = results
	p.AttemptsPerAgent = attempts / float64(want)
	d, _ := metricSum(nk, "kasd_udp_receive_drops_total", nil)
	p.RestartDrops = int64(d)
	p.RestartSettled = last >= want // not settling is a result, not a failure of the harness
	return nk, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// metricSamples calls f with each sample of metric name on kasd's /metrics: its labels (raw,
// without braces) and value.
func metricSamples(k *kasdProc, name string, f func(labels string, v float64)) (found bool, err error) {
	resp, err := k.client.Get(k.obsURL("/metrics"))
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		labels := ""
		if rest[0] == '{' {
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		found = true
		f(labels, v)
	}
	return found, sc.Err()
}

// metricSum is the sum of metric name's samples (0 and an error when it has none).
func metricSum(k *kasdProc, name string, _ map[string]string) (float64, error) {
	var sum float64
	found, err := metricSamples(k, name, func(_ string, v float64) { sum += v })
	if err == nil && !found {
		err = fmt.Errorf("metric %s not found", name)
	}
	return sum, err
}

// metricByLabel sums metric name's samples by the value of one label.
func metricByLabel(k *kasdProc, name, label string) (map[string]float64, error) {
	out := map[string]float64{}
	_, err := metricSamples(k, name, func(labels string, v float64) {
		for _, kv := range strings.Split(labels, ",") {
			if l, val, ok := strings.Cut(kv, "="); ok && l == label {
				out[strings.Trim(val, `"`)] += v
			}
		}
	})
	return out, err
}

// metricValue reads one gauge (summed over its labels) from kasd's /metrics.
func metricValue(k *kasdProc, name string) (float64, error) { return metricSum(k, name, nil) }

// waitConnections waits until kasd reports want agent connections, or until the count has not
// changed for settle after it first moved (under load a few connections may die or be refused:
// the caller records the count it got), or until failed returns an error (a fleet process
// died). It returns the last count seen.
func waitConnections(ctx context.Context, k *kasdProc, want int, settle, timeout time.Duration, failed func() error) (int, error) {
	deadline := time.Now().Add(timeout)
	last, since := -1, time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if err := failed(); err != nil {
			return last, err
		}
		v, err := metricValue(k, "kasd_agent_connections")
		if err != nil {
			return 0, err
		}
		n := int(v)
		if n >= want {
			return n, nil
		}
		if n != last {
			last, since = n, time.Now()
		} else if n > 1 && time.Since(since) >= settle {
			return n, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return last, ctx.Err()
	}
	return last, errors.New("kasd has " + strconv.Itoa(last) + " agent connections after " + timeout.String() + ", want " + strconv.Itoa(want))
}

// ScaleSteps is results.json's "scale" list. Runs before the agentd fleet wrote an object
// ({"points": [...], "plots": [...]}, agents simulated on one socket); it is read into the same
// fields where they mean the same, so that --report and the README's reference still work.
type ScaleSteps []ScaleStep

// UnmarshalJSON reads the list, or the older object.
func (s *ScaleSteps) UnmarshalJSON(b []byte) error {
	if t := strings.TrimSpace(string(b)); !strings.HasPrefix(t, "{") {
		return json.Unmarshal(b, (*[]ScaleStep)(s))
	}
	var old ScaleResults
	if err := json.Unmarshal(b, &old); err != nil {
		return err
	}
	*s = nil
	for _, p := range old.Points {
		*s = append(*s, ScaleStep{Agents: p.Agents, Connected: p.KasdConnections, ConnectS: p.ConnectSeconds,
			KasdRSSBeforeMiB: p.RSSBeforeMiB, KasdRSSMiB: p.RSSAfterMiB, KasdRSSKiBPerAgent: p.RSSPerAgentKiB,
			KasdCPUPct: p.IdleCPUPercent, KasdCPUusPerAgentPS: p.IdleCPUusPerAgentPerSec,
			RouteP50us: p.LatencyLoaded.P50us, RouteP99us: p.LatencyLoaded.P99us,
			RouteP50OneAgent: p.LatencyAlone.P50us, RouteP99OneAgent: p.LatencyAlone.P99us, Err: p.Err})
	}
	return nil
}

// settled is the report's "held after" cell: the count, marked when the fleet never came back whole.
func settled(p ScaleStep) string {
	if p.RestartSettled || p.RestartConnected >= p.Agents {
		return strconv.Itoa(p.RestartConnected)
	}
	return fmt.Sprintf("%d (not settled: the time is the last change)", p.RestartConnected)
}
