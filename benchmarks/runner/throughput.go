package runner

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/benchmarks/plot"
)

// rawQUIC2Proc is the raw quic-go floor with its two ends in two processes (the server in a
// child process, the client in the runner), as qkas's ends are: kasd and agentd are separate
// processes, and a Go process whose one busy goroutine hands packets to another wakes an idle
// thread for each hand-off, which the in-process raw-quic (both ends busy in one process) mostly
// does not pay (docs/performance.md, "bulk transfers, forwarded route"). The headline ratios stay
// against raw-quic; this row shows how much of the gap is that.
const rawQUIC2Proc = "raw-quic-2proc"

// httpTransfer downloads (GET /bytes?n=) or uploads (POST /sink) n bytes through route r.
func httpTransfer(ctx context.Context, c *http.Client, r route, up bool, n int64) error {
	var req *http.Request
	var err error
	if up {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, r.base+"/sink", io.LimitReader(zeros{}, n))
		if req != nil {
			req.ContentLength = n
		}
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/bytes?n="+strconv.FormatInt(n, 10), nil)
	}
	if err != nil {
		return err
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", req.Method, r.name, resp.Status)
	}
	if !up && got != n {
		return fmt.Errorf("download %s: got %d of %d bytes", r.name, got, n)
	}
	return nil
}

func (e *env) runThroughput(ctx context.Context) (*ThroughputResult, error) {
	st, err := e.startLocalStack(ctx, e.fleet, tcpAgent)
	if err != nil {
		return nil, err
	}
	defer st.close()
	raw, err := e.startRawQUIC(ctx)
	if err != nil {
		return nil, fmt.Errorf("raw quic-go: %w", err)
	}
	defer raw.close()
	// The same floor with the server end in a child process (child.go), as qkas's ends are
	// separate processes: see rawQUIC2Proc.
	raw2, raw2Err := e.startRawQUICChild(ctx, st.ns)
	if raw2Err == nil {
		defer raw2.close()
	}

	routes := e.routes(st)
	tcpRoute, stopTCP, tcpErr := e.addTCPRoute(ctx, st) // tcp.go: the agent over TCP
	if tcpErr == nil {
		defer stopTCP()
		routes = append(routes, tcpRoute)
	}
	rawIdx := len(routes)
	routes = append(routes, route{name: "raw-quic"})
	if raw2Err == nil {
		routes = append(routes, route{name: rawQUIC2Proc, procs: []*proc{raw2.proc}})
	}
	n := e.sizes.ThroughputBytes
	res := &ThroughputResult{Bytes: n, Rounds: max(1, e.sizes.ThroughputRounds)}
	if !e.fleet {
		res.Missing = append(res.Missing, "forwarded: not measured ("+e.fleetWhy+")")
	}
	if tcpErr != nil {
		res.Missing = append(res.Missing, routeLocalTCP+": not measured ("+tcpErr.Error()+")")
	}
	if raw2Err != nil {
		res.Missing = append(res.Missing, rawQUIC2Proc+": not measured ("+raw2Err.Error()+")")
	}
	client := load.NewClient(1, nil)
	defer client.CloseIdleConnections()
	type key struct {
		route int
		up    bool
	}
	elapsed := map[key]time.Duration{}
	cpu := map[key]time.Duration{}
	cpuBy := map[key][]time.Duration{} // per process of the route, in routes[i].procs order
	do := func(i int, up bool, size int64) error {
		switch routes[i].name {
		case "raw-quic":
			return raw.transfer(ctx, up, size)
		case rawQUIC2Proc:
			return raw2.transfer(ctx, up, size)
		}
		return httpTransfer(ctx, client, routes[i], up, size)
	}
	// Warm up every path (connections, flow-control windows grow on first use).
	for i := range routes {
		for _, up := range []bool{false, true} {
			if err := do(i, up, min(n, 8<<20)); err != nil {
				return nil, err
			}
		}
	}
	for round := range res.Rounds {
		for j := range routes {
			i := j
			if round%2 == 1 {
				i = len(routes) - 1 - j
			}
			for _, up := range []bool{false, true} {
				k := key{i, up}
				each := make([]time.Duration, len(routes[i].procs))
				for p, pr := range routes[i].procs {
					each[p] = cpuOf(pr)
				}
				c0, t0 := cpuOf(routes[i].procs...), time.Now()
				if err := do(i, up, n); err != nil {
					return nil, err
				}
				elapsed[k] += time.Since(t0)
				cpu[k] += cpuOf(routes[i].procs...) - c0
				if cpuBy[k] == nil {
					cpuBy[k] = make([]time.Duration, len(each))
				}
				for p, pr := range routes[i].procs {
					cpuBy[k][p] += cpuOf(pr) - each[p]
				}
			}
		}
	}
	mbps := func(k key) float64 { return float64(n) * float64(res.Rounds) / elapsed[k].Seconds() / 1e6 }
	var labels []string
	series := []plot.Series{{Name: "download"}, {Name: "upload"}}
	mib := float64(n*int64(res.Rounds)) / (1 << 20)
	for i, r := range routes {
		labels = append(labels, r.name)
		for d, up := range []bool{false, true} {
			k := key{i, up}
			run := ThroughputRun{Route: r.name, Direction: map[bool]string{false: "download", true: "upload"}[up],
				Bytes: n * int64(res.Rounds), Seconds: elapsed[k].Seconds(), MBps: mbps(k)}
			if r.name != "raw-quic" {
				run.RatioToRaw = run.MBps / mbps(key{rawIdx, up})
			}
			qkas := r.name != "direct" && r.name != "raw-quic" && r.name != rawQUIC2Proc
			if qkas {
				run.RatioToDirect = run.MBps / mbps(key{0, up})
				run.TunnelCPUmsPerMiB = float64(cpu[k].Milliseconds()) / mib
			}
			line := fmt.Sprintf("throughput %-8s %-14s %.0f MB/s", run.Direction, r.name, run.MBps)
			if raw2Err == nil && r.name != rawQUIC2Proc && r.name != "raw-quic" {
				line += fmt.Sprintf(" (%.2f× raw-quic, %.2f× %s)", run.RatioToRaw, run.MBps/mbps(key{rawIdx + 1, up}), rawQUIC2Proc)
			}
			// CPU of each process per MiB: where a route spends (docs/performance.md).
			for p, pr := range r.procs {
				if p == 0 {
					line += "; CPU ms/MiB"
				}
				name := pr.name
				if r.name == rawQUIC2Proc {
					name = "server-process" // its client end runs in the runner, not counted
				}
				line += fmt.Sprintf(" %s %.1f", name, float64(cpuBy[k][p].Microseconds())/1000/mib)
			}
			e.logf("%s", line)
			res.Runs = append(res.Runs, run)
			series[d].Y = append(series[d].Y, run.MBps)
		}
	}
	name := "throughput.png"
	if err := plot.Bars(filepath.Join(e.out, name), fmt.Sprintf("Throughput, %d MiB transfers", n>>20), "MB/s", labels, series); err != nil {
		return nil, err
	}
	res.Plots = append(res.Plots, name)
	return res, nil
}
