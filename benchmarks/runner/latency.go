package runner

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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
	// TunnelCPUus: CPU of the route's tunnel processes (kasd, agentd) per request, µs.
	TunnelCPUus float64 `json:"tunnel_cpu_us_per_request"`
}

// LatencyResults is scenario 1.
type LatencyResults struct {
	BodyBytes int          `json:"body_bytes"`
	Rounds    int          `json:"rounds"`
	Runs      []LatencyRun `json:"runs"`
	Plots     []string     `json:"plots"`
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

func (e *env) runLatency(ctx context.Context) (*LatencyResults, error) {
	st, err := e.startLocalStack(ctx, e.fleet)
	if err != nil {
		return nil, err
	}
	defer st.close()
	routes := e.routes(st)
	res := &LatencyResults{BodyBytes: e.sizes.BodyBytes, Rounds: max(1, e.sizes.LatencyRounds)}
	if !e.fleet {
		res.Missing = append(res.Missing, "forwarded: not measured ("+e.fleetWhy+")")
	}
	for ci, c := range e.sizes.LatencyConcurrency {
		total := e.sizes.LatencyRequests[ci]
		clients := make([]*http.Client, len(routes))
		fns := make([]load.Func, len(routes))
		for i, r := range routes {
			clients[i] = load.NewClient(c, nil)
			fns[i] = load.Get(clients[i], r.base+"/small", r.header)
			// Warm up: connections, pools, the Go scheduler.
			if _, err := load.Run(ctx, load.Options{Concurrency: c, Requests: max(100, 5*c)}, fns[i]); err != nil {
				return nil, err
			}
		}
		merged := make([][]*load.Result, len(routes))
		cpu := make([]time.Duration, len(routes))
		for round := range res.Rounds {
			order := make([]int, len(routes))
			for i := range order {
				order[i] = i
				if round%2 == 1 {
					order[i] = len(routes) - 1 - i
				}
			}
			for _, i := range order {
				cpu0 := cpuOf(routes[i].procs...)
				r, err := load.Run(ctx, load.Options{Concurrency: c, Requests: max(1, total/res.Rounds)}, fns[i])
				if err != nil {
					return nil, err
				}
				cpu[i] += cpuOf(routes[i].procs...) - cpu0
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
			}
			if r.name == "direct" {
				direct = run.Summary
			} else {
				run.AddedP50us = run.P50us - direct.P50us
				run.AddedP99us = run.P99us - direct.P99us
			}
			e.logf("latency c=%d %-9s %s tunnel CPU %.1fµs/req", c, r.name, run.Summary, run.TunnelCPUus)
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
	if e.sizes.ProfileSeconds > 0 {
		res.Profile = e.profileLocal(ctx, st, routes[1])
	}
	return res, nil
}

// profileLocal takes kasd's CPU profile from /debug/pprof/profile while c=64 requests run on the
// local route, saves kasd.pprof and keeps the top of `go tool pprof -top`.
func (e *env) profileLocal(ctx context.Context, st *localStack, local route) *Profile {
	p := &Profile{File: "kasd.pprof", Seconds: e.sizes.ProfileSeconds}
	client := load.NewClient(64, nil)
	defer client.CloseIdleConnections()
	lctx, cancel := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { // owned here: waited for below
		defer close(loadDone)
		_, _ = load.Run(lctx, load.Options{Concurrency: 64, Duration: time.Duration(p.Seconds+2) * time.Second}, load.Get(client, local.base+"/small", local.header))
	}()
	defer func() { cancel(); <-loadDone }()
	time.Sleep(500 * time.Millisecond) // let the load reach steady state
	url := st.kasd[0].obsURL(fmt.Sprintf("/debug/pprof/profile?seconds=%d", p.Seconds))
	resp, err := (&http.Client{Timeout: time.Duration(p.Seconds+30) * time.Second}).Get(url)
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
