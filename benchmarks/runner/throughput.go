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

	routes := e.routes(st)
	tcpRoute, stopTCP, tcpErr := e.addTCPRoute(ctx, st) // tcp.go: the agent over TCP
	if tcpErr == nil {
		defer stopTCP()
		routes = append(routes, tcpRoute)
	}
	routes = append(routes, route{name: "raw-quic"})
	n := e.sizes.ThroughputBytes
	res := &ThroughputResult{Bytes: n, Rounds: max(1, e.sizes.ThroughputRounds)}
	if !e.fleet {
		res.Missing = append(res.Missing, "forwarded: not measured ("+e.fleetWhy+")")
	}
	if tcpErr != nil {
		res.Missing = append(res.Missing, routeLocalTCP+": not measured ("+tcpErr.Error()+")")
	}
	client := load.NewClient(1, nil)
	defer client.CloseIdleConnections()
	type key struct {
		route int
		up    bool
	}
	elapsed := map[key]time.Duration{}
	cpu := map[key]time.Duration{}
	do := func(i int, up bool, size int64) error {
		if routes[i].name == "raw-quic" {
			return raw.transfer(ctx, up, size)
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
				c0, t0 := cpuOf(routes[i].procs...), time.Now()
				if err := do(i, up, n); err != nil {
					return nil, err
				}
				elapsed[k] += time.Since(t0)
				cpu[k] += cpuOf(routes[i].procs...) - c0
			}
		}
	}
	mbps := func(k key) float64 { return float64(n) * float64(res.Rounds) / elapsed[k].Seconds() / 1e6 }
	var labels []string
	series := []plot.Series{{Name: "download"}, {Name: "upload"}}
	for i, r := range routes {
		labels = append(labels, r.name)
		for d, up := range []bool{false, true} {
			k := key{i, up}
			run := ThroughputRun{Route: r.name, Direction: map[bool]string{false: "download", true: "upload"}[up],
				Bytes: n * int64(res.Rounds), Seconds: elapsed[k].Seconds(), MBps: mbps(k)}
			if r.name != "raw-quic" {
				run.RatioToRaw = run.MBps / mbps(key{len(routes) - 1, up})
			}
			if r.name != "direct" && r.name != "raw-quic" {
				run.RatioToDirect = run.MBps / mbps(key{0, up})
				run.TunnelCPUmsPerMiB = float64(cpu[k].Milliseconds()) / (float64(run.Bytes) / (1 << 20))
			}
			e.logf("throughput %-8s %-9s %.0f MB/s", run.Direction, r.name, run.MBps)
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
