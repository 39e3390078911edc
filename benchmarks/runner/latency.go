package runner

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/benchmarks/plot"
)

// LatencyRun is one route at one concurrency, merged over the alternating rounds.
type LatencyRun struct {
	Route       string `json:"route"`
	Concurrency int    `json:"concurrency"`
	load.Summary
	// AddedP50us and AddedP99us: this route's quantile minus direct's (same concurrency).
	AddedP50us float64 `json:"added_p50_us,omitempty"`
	AddedP99us float64 `json:"added_p99_us,omitempty"`
	// TunnelCPUus: CPU of the route's own processes per request, µs: kasd and agentd (and kasd
	// B, forwarded); the proxy process (reverseproxy, tcp-relay); the server end's process (raw-quic: its
	// client end runs in the load generator and is not counted).
	TunnelCPUus float64 `json:"tunnel_cpu_us_per_request"`
	// ProcessCPUus splits TunnelCPUus by process name (kasd-a, kasd-b, agentd-bench, …): which
	// end to profile first.
	ProcessCPUus map[string]float64 `json:"cpu_us_per_request_by_process,omitempty"`
}

// Route names besides direct, local and forwarded (env.routes).
const (
	routeRawQUIC      = "raw-quic"     // one quic-go stream per request: the transport's floor
	routeReverseProxy = "reverseproxy" // one plain httputil.ReverseProxy hop
	routeTCPRelay     = "tcp-relay"    // a byte relay process: any proxy process's floor here
)

// LatencyResults is scenario 1.
type LatencyResults struct {
	BodyBytes int          `json:"body_bytes"`
	Rounds    int          `json:"rounds"`
	Runs      []LatencyRun `json:"runs"`
	// Datagrams: UDP datagrams per small request at c=1, per route.
	Datagrams []DatagramRun `json:"datagrams,omitempty"`
	Plots     []string      `json:"plots"`
	// Namespace says where the scenario ran (and so what the datagram counts include).
	Namespace string `json:"namespace"`
	// Missing lists routes not measured, with the reason.
	Missing []string `json:"missing,omitempty"`
	Profile *Profile `json:"profile,omitempty"`
}

// Profile is kasd's CPU profile under c=64 load on the local route.
type Profile struct {
	File    string `json:"file"`
	Seconds int    `json:"seconds"`
	Top     string `json:"top"` // go tool pprof -top, first lines
	Err     string `json:"error,omitempty"`
}

// latencyRoutes is direct, the references (raw-quic, reverseproxy, tcp-relay; each in its own process)
// and qkas's routes. A reference that cannot start is left out and named in missing; stop
// stops the references.
func (e *env) latencyRoutes(ctx context.Context, st *localStack) (rs []route, missing []string, stop func()) {
	all := e.routes(st)
	rs = append(rs, all[0]) // direct
	var stops []func()
	stop = func() {
		for _, f := range stops {
			f()
		}
	}
	raw, err := e.startRawQUICChild(ctx, st.ns)
	if err != nil {
		missing = append(missing, routeRawQUIC+": not measured ("+err.Error()+")")
	} else {
		stops = append(stops, raw.close)
		rs = append(rs, route{name: routeRawQUIC, procs: []*proc{raw.proc}, small: raw.get(int64(e.sizes.BodyBytes)), ns: st.ns})
	}
	for _, ref := range []struct {
		name  string
		start func(*netns, string) (*proc, string, error)
	}{{routeReverseProxy, e.startReverseProxyChild}, {routeTCPRelay, e.startTCPRelayChild}} {
		p, addr, err := ref.start(st.ns, st.svc.addr())
		if err == nil {
			stops = append(stops, func() { p.stop(3 * time.Second) })
			r := route{name: ref.name, base: "http://" + addr, procs: []*proc{p}, ns: st.ns}
			c := r.client(1)
			err = waitRoute(ctx, r, c)
			c.CloseIdleConnections()
			if err == nil {
				rs = append(rs, r)
			} else {
				err = fmt.Errorf("%w; log:\n%s", err, p.logTail())
			}
		}
		if err != nil {
			missing = append(missing, ref.name+": not measured ("+err.Error()+")")
		}
	}
	rs = append(rs, all[1:]...)
	// direct's CPU is the idle cost of every other route's processes during its rounds.
	for _, r := range rs[1:] {
		for _, p := range r.procs {
			if !slices.Contains(rs[0].procs, p) {
				rs[0].procs = append(rs[0].procs, p)
			}
		}
	}
	return rs, missing, stop
}

func (e *env) runLatency(ctx context.Context) (*LatencyResults, error) {
	res := &LatencyResults{BodyBytes: e.sizes.BodyBytes, Rounds: max(1, e.sizes.LatencyRounds)}
	// In a namespace of its own (root), the run's UDP counters count nothing but its traffic.
	ns, err := newLoopbackNetns(ctx, "lat")
	if err != nil {
		ns = nil
		res.Namespace = "the runner's (" + err.Error() + "): datagram counts include any other UDP traffic on the machine"
	} else {
		defer ns.remove() // after everything in it has stopped (deferred later, run earlier)
		res.Namespace = "a network namespace of its own, loopback only: datagram counts are the run's alone"
	}
	st, err := e.startLocalStackIn(ctx, ns, e.fleet, tcpAgent)
	if err != nil {
		return nil, err
	}
	defer st.close()
	routes, missing, stopRefs := e.latencyRoutes(ctx, st)
	defer stopRefs()
	if r, stop, err := e.addTCPRoute(ctx, st); err == nil { // tcp.go: the agent over TCP
		defer stop()
		routes = append(routes, r)
	} else {
		missing = append(missing, routeLocalTCP+": not measured ("+err.Error()+")")
	}
	res.Missing = missing
	if !e.fleet {
		res.Missing = append(res.Missing, "forwarded: not measured ("+e.fleetWhy+")")
	}
	for ci, c := range e.sizes.LatencyConcurrency {
		total := e.sizes.LatencyRequests[ci]
		clients := make([]*http.Client, len(routes))
		fns := make([]load.Func, len(routes))
		for i, r := range routes {
			clients[i] = r.client(c)
			fns[i] = r.smallFunc(clients[i])
			// Warm up: connections, pools, the Go scheduler.
			if _, err := load.Run(ctx, load.Options{Concurrency: c, Requests: max(100, 5*c)}, fns[i]); err != nil {
				return nil, err
			}
		}
		merged := make([][]*load.Result, len(routes))
		cpu := make([]time.Duration, len(routes))
		procCPU := make([][]time.Duration, len(routes)) // per route, per process (routes[i].procs)
		for i, r := range routes {
			procCPU[i] = make([]time.Duration, len(r.procs))
		}
		for round := range res.Rounds {
			order := make([]int, len(routes))
			for i := range order {
				order[i] = i
				if round%2 == 1 {
					order[i] = len(routes) - 1 - i
				}
			}
			for _, i := range order {
				before := make([]time.Duration, len(routes[i].procs))
				for j, p := range routes[i].procs {
					before[j] = cpuOf(p)
				}
				r, err := load.Run(ctx, load.Options{Concurrency: c, Requests: max(1, total/res.Rounds)}, fns[i])
				if err != nil {
					return nil, err
				}
				for j, p := range routes[i].procs {
					d := cpuOf(p) - before[j]
					procCPU[i][j] += d
					cpu[i] += d
				}
				merged[i] = append(merged[i], r)
			}
		}
		var curves []plot.Latencies
		var direct load.Summary
		for i, r := range routes {
			m := load.Merge(merged[i]...)
			run := LatencyRun{Route: r.name, Concurrency: c, Summary: m.Summarize()}
			if ok := m.OK(); ok > 0 {
				run.TunnelCPUus = float64(cpu[i].Microseconds()) / float64(ok)
				if len(r.procs) > 1 && r.name != "direct" {
					run.ProcessCPUus = map[string]float64{}
					for j, p := range r.procs {
						if p != nil {
							run.ProcessCPUus[p.name] += float64(procCPU[i][j].Microseconds()) / float64(ok)
						}
					}
				}
			}
			if r.name == "direct" {
				direct = run.Summary
			} else {
				run.AddedP50us = run.P50us - direct.P50us
				run.AddedP99us = run.P99us - direct.P99us
			}
			e.logf("latency c=%d %-12s %s CPU %.1fµs/req%s", c, r.name, run.Summary, run.TunnelCPUus, processCPU(run.ProcessCPUus))
			res.Runs = append(res.Runs, run)
			curves = append(curves, plot.Latencies{Name: r.name, Sorted: m.Latencies()})
		}
		name := fmt.Sprintf("latency-cdf-c%d.png", c)
		if err := plot.CDF(filepath.Join(e.out, name), fmt.Sprintf("1 KiB GET latency CDF, concurrency %d", c), curves); err != nil {
			return nil, err
		}
		res.Plots = append(res.Plots, name)
		for _, cl := range clients {
			cl.CloseIdleConnections()
		}
	}
	if e.sizes.DatagramRequests > 0 {
		snmp := "/proc/self/net/snmp"
		if ns != nil {
			snmp = fmt.Sprintf("/proc/%d/net/snmp", st.kasd[0].pid()) // kasd runs in ns
		}
		if res.Datagrams, err = e.measureDatagrams(ctx, routes, res.Rounds, snmp); err != nil {
			return nil, err
		}
	}
	if e.sizes.ProfileSeconds > 0 {
		for _, r := range routes {
			if r.name == "local" {
				res.Profile = e.profileLocal(ctx, st, r)
			}
		}
	}
	return res, nil
}

// profileLocal takes kasd's CPU profile from /debug/pprof/profile while c=64 requests run on the
// local route, saves kasd.pprof and keeps the top of `go tool pprof -top`.
func (e *env) profileLocal(ctx context.Context, st *localStack, local route) *Profile {
	p := &Profile{File: "kasd.pprof", Seconds: e.sizes.ProfileSeconds}
	client := local.client(64)
	defer client.CloseIdleConnections()
	lctx, cancel := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { // owned here: waited for below
		defer close(loadDone)
		_, _ = load.Run(lctx, load.Options{Concurrency: 64, Duration: time.Duration(p.Seconds+2) * time.Second}, load.Get(client, local.base+"/small", local.header))
	}()
	defer func() { cancel(); <-loadDone }()
	time.Sleep(500 * time.Millisecond) // let the load reach steady state
	url := st.kasd[0].pprofURL(fmt.Sprintf("/debug/pprof/profile?seconds=%d", p.Seconds))
	pc := nsClient(st.ns, 1)
	pc.Timeout = time.Duration(p.Seconds+30) * time.Second
	defer pc.CloseIdleConnections()
	resp, err := pc.Get(url)
	if err != nil {
		p.Err = err.Error()
		return p
	}
	defer resp.Body.Close()
	path := filepath.Join(e.out, p.File)
	f, err := os.Create(path)
	if err == nil {
		_, err = io.Copy(f, resp.Body)
		f.Close()
	}
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("pprof: %s", resp.Status)
	}
	if err != nil {
		p.Err = err.Error()
		return p
	}
	// Flat, cumulative, and who makes the system calls (the usual first bottleneck of a proxy).
	for _, args := range [][]string{{"-flat"}, {"-cum"}, {"-cum", "-focus=Syscall6$"}} {
		sortFlag := strings.Join(args, " ")
		cmd := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof", "-top"}, args...), "-nodecount=20", path)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			p.Err = fmt.Sprintf("go tool pprof: %v: %s", err, out)
			return p
		}
		p.Top += fmt.Sprintf("# go tool pprof -top %s\n%s\n", sortFlag, out)
	}
	return p
}

// processCPU formats a per-process CPU split for the log: " (agentd-bench 40.1, kasd-a 37.0)".
func processCPU(m map[string]float64) string {
	if len(m) == 0 {
		return ""
	}
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %.1f", n, m[n])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
