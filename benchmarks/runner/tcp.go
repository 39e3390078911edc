package runner

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// The TCP transport, side by side with QUIC
//
// A second agentd, tcpAgent, reaches the same kasd with --transport tcp (QUIC carried over
// TLS/TCP, docs/transport.md) and exposes the same service. Its route (routeLocalTCP in the
// latency and throughput scenarios, system holQkasTCP in the head-of-line one) differs from
// "local" / "qkas" only by the agent's transport, so the rows measure what falling back costs.

const (
	tcpAgent      = "bench-tcp"
	routeLocalTCP = "local-tcp"
	holQkasTCP    = "qkas-tcp"
)

// startTCPAgent starts tcpAgent in ns against kasd k (agent address kasAddr; kasd listens for
// TCP on the same port number) exposing svc=svcURL, and waits until k holds it. token is
// tcpAgent's token from k's tokens file.
func (e *env) startTCPAgent(ctx context.Context, ns *netns, k *kasdProc, kasAddr, token, svcURL string) (*proc, error) {
	if !strings.Contains(e.agentHelp, "-transport") {
		return nil, fmt.Errorf("this agentd has no --transport")
	}
	if token == "" {
		return nil, fmt.Errorf("no token for %s in the tokens file", tcpAgent)
	}
	dir := e.subdir("agentd-" + tcpAgent)
	tokenFile, err := writeToken(dir, tcpAgent, token)
	if err != nil {
		return nil, err
	}
	argv := []string{e.agentdBin,
		"--kas-address", kasAddr, "--token-file", tokenFile, "--ca-file", e.caFile, "--transport", "tcp",
		"--observability-listen", "", "--replica", tcpAgent, "--kas-connections", "1",
		"--drain-timeout", "1s", "--log-level", "warn", "--log-format", "json", "--gitlab-proxy-listen=",
		"--service", "svc=" + svcURL,
	}
	p, err := startProc(dir, "agentd-"+tcpAgent, ns.String(), argv...)
	if err != nil {
		return nil, err
	}
	if err := e.waitAgent(ctx, k, tcpAgent, 1, p); err != nil {
		p.stop(3 * time.Second)
		e.logf("agent over TCP not measured: %v", err)
		return nil, err
	}
	return p, nil
}

// addTCPRoute starts tcpAgent on st's kasd[0] and returns its route (through kasd[0], like
// "local") and a function that stops it. st must have been started with tcpAgent among its
// extra agents.
func (e *env) addTCPRoute(ctx context.Context, st *localStack) (route, func(), error) {
	k := st.kasd[0]
	p, err := e.startTCPAgent(ctx, st.ns, k, k.opts.agentListen, st.tokens[tcpAgent], "http://"+st.svc.addr())
	if err != nil {
		return route{}, nil, err
	}
	r := route{name: routeLocalTCP, base: k.apiURL("/api/v1/agents/" + tcpAgent + "/proxy/svc"),
		header: http.Header{"Authorization": {"Bearer " + e.jwt}}, procs: []*proc{k.proc, p}, ns: st.ns}
	c := r.client(1)
	err = waitRoute(ctx, r, c)
	c.CloseIdleConnections()
	if err != nil {
		p.stop(3 * time.Second)
		return route{}, nil, err
	}
	return r, func() { p.stop(3 * time.Second) }, nil
}

// tcpHeadline puts the TCP transport's figures next to QUIC's: latency of the local route,
// throughput, and the small requests of the head-of-line scenario under loss.
func tcpHeadline(r *Results) []HeadlineRow {
	var rows []HeadlineRow
	if l := r.Latency; l != nil {
		for _, c := range r.Sizes.LatencyConcurrency {
			q, t := findLatency(l, "local", c), findLatency(l, routeLocalTCP, c)
			if q == nil || t == nil {
				continue
			}
			rows = append(rows, HeadlineRow{Scenario: "transport", Metric: fmt.Sprintf("p50 / p99, 1 KiB GET, c=%d, local route, agent over TCP", c),
				Qkas: quantiles(t.P50us, t.P99us), Baseline: quantiles(q.P50us, q.P99us) + " over QUIC",
				Ratio: ratios([]float64{t.P50us, t.P99us}, []float64{q.P50us, q.P99us})})
			rows = append(rows, HeadlineRow{Scenario: "transport", Metric: fmt.Sprintf("tunnel CPU per request, c=%d, agent over TCP", c),
				Qkas: fmt.Sprintf("%.1f µs", t.TunnelCPUus), Baseline: fmt.Sprintf("%.1f µs over QUIC", q.TunnelCPUus), Ratio: ratio(t.TunnelCPUus, q.TunnelCPUus)})
		}
	}
	if t := r.Throughput; t != nil {
		for _, dir := range []string{"download", "upload"} {
			q, x := t.find("local", dir), t.find(routeLocalTCP, dir)
			if q == nil || x == nil {
				continue
			}
			rows = append(rows, HeadlineRow{Scenario: "transport", Metric: fmt.Sprintf("%s MB/s, %d MiB, local route, agent over TCP", dir, t.Bytes>>20),
				Qkas: fmt.Sprintf("%.0f", x.MBps), Baseline: fmt.Sprintf("%.0f over QUIC", q.MBps), Ratio: ratio(x.MBps, q.MBps)})
		}
	}
	if h := r.HOL; h != nil {
		for _, loss := range r.Sizes.HOLLossPercent {
			for _, bg := range []string{holNone, holBulk} {
				q, x := h.find("qkas", loss, bg), h.find(holQkasTCP, loss, bg)
				if q == nil || x == nil {
					continue
				}
				rows = append(rows, HeadlineRow{Scenario: "transport",
					Metric: fmt.Sprintf("small-request p50 / p99 / p99.9 at %g%% loss, %s, agent over TCP", loss, map[string]string{holNone: "no bulk", holBulk: "with bulk"}[bg]),
					Qkas:   quantiles(x.P50us, x.P99us, x.P999us), Baseline: quantiles(q.P50us, q.P99us, q.P999us) + " over QUIC",
					Ratio: ratios([]float64{x.P50us, x.P99us, x.P999us}, []float64{q.P50us, q.P99us, q.P999us})})
			}
		}
	}
	return rows
}
