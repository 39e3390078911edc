package runner

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/qkas/qkas/benchmarks/load"
	"github.com/qkas/qkas/benchmarks/plot"
)

// runFailover: a fleet of kasd-etcd (runs the embedded etcd, holds no agent), kasd-a and kasd-b;
// agentd keeps two connections (its default), to a and b. A steady request stream goes through
// kasd-etcd (forwarded route); kasd-a is killed with SIGKILL. kasd-etcd must stop routing to the
// dead peer and use the survivor. Recovery = kill → first success of a request started after
// it; steady = kill → end of the last failed request.
func (e *env) runFailover(ctx context.Context) (*FailoverResults, error) {
	if !e.fleet {
		return nil, skipError{"failover: not measured (" + e.fleetWhy + ")"}
	}
	dir := e.subdir("failover")
	tokensFile := filepath.Join(dir, "agent-tokens.yaml")
	tokens, err := writeTokens(tokensFile, []string{benchAgent})
	if err != nil {
		return nil, err
	}
	tokenFile, err := writeToken(dir, benchAgent, tokens[benchAgent])
	if err != nil {
		return nil, err
	}
	flags, err := e.fleetFlags(dir, 3)
	if err != nil {
		return nil, err
	}
	var ks []*kasdProc
	defer func() {
		for i := len(ks) - 1; i >= 0; i-- {
			ks[i].stop(3 * time.Second)
		}
	}()
	for i, id := range []string{"kasd-etcd", "kasd-a", "kasd-b"} {
		k, err := e.startKasd(ctx, kasdOpts{id: id, tokensFile: tokensFile, extra: flags[i]})
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	st := &localStack{}
	ln, err := listenLoopback()
	if err != nil {
		return nil, err
	}
	st.svc = serveHTTP(ln, serviceHandler(e.sizes.BodyBytes))
	defer st.svc.close()
	// The deployed configuration: agentd keeps two connections (its default), one to each of
	// kasd-a and kasd-b; requests go through kasd-etcd, which holds no agent connection, so
	// every request is forwarded to a holder. kasd-a is killed.
	agent, err := e.startAgent(agentOpts{id: benchAgent, kas: []string{ks[1].opts.agentListen, ks[2].opts.agentListen},
		tokenFile: tokenFile, services: []string{"svc=http://" + st.svc.addr()}, conns: 2})
	if err != nil {
		return nil, err
	}
	defer agent.stop(3 * time.Second)
	for _, k := range ks[1:] {
		if err := e.waitAgent(ctx, k, benchAgent, 1, agent); err != nil {
			return nil, err
		}
	}
	holder, through := ks[1], ks[0]
	r := route{name: "failover", base: through.apiURL("/api/v1/agents/" + benchAgent + "/proxy/svc"),
		header: map[string][]string{"Authorization": {"Bearer " + e.jwt}}}
	client := load.NewClient(1, nil)
	defer client.CloseIdleConnections()
	if err := waitRoute(ctx, r, client); err != nil {
		return nil, err
	}
	get := load.Get(client, r.base+"/small", r.header)
	res := &FailoverResults{Setup: fmt.Sprintf("kasd-etcd runs the embedded etcd and holds no agent; agentd --kas-address kasd-a,kasd-b --kas-connections 2 (the default) holds both; one request every %v (c=1, 10 s timeout each) through %s (forwarded route); `kill -9` of %s 1 s into the stream. (An agent with a single connection to the killed kasd notices only at its QUIC idle timeout, 6 s.)",
		e.sizes.FailoverInterval, through.opts.id, holder.opts.id)}

	var killAt time.Time
	killed := make(chan struct{})
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // owned here: waited for through killed
		defer close(killed)
		select {
		case <-lctx.Done():
		case <-time.After(time.Second):
			killAt = time.Now()
			holder.kill()
		}
	}()
	start := time.Now()
	lr, err := load.Run(lctx, load.Options{Concurrency: 1, Duration: time.Second + e.sizes.FailoverAfter, Pause: e.sizes.FailoverInterval},
		func(ctx context.Context) error {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return get(rctx)
		})
	cancel()
	<-killed
	if err != nil {
		return nil, err
	}
	if killAt.IsZero() {
		return nil, fmt.Errorf("the stream ended before the kill")
	}
	kill := killAt.Sub(start)
	res.Requests = len(lr.Samples)
	res.Failed = lr.Failed()
	res.Errors = lr.Errors()
	res.RecoverySeconds = -1
	lastFail := time.Duration(-1)
	ok, bad := plot.Series{Name: "succeeded"}, plot.Series{Name: "failed"}
	for _, s := range lr.Samples {
		x := (s.Start - kill).Seconds()
		y := float64(s.Latency.Microseconds()) / 1e3
		if s.Err != "" {
			bad.X, bad.Y = append(bad.X, x), append(bad.Y, y)
			if end := s.Start + s.Latency; end > lastFail {
				lastFail = end
			}
			continue
		}
		ok.X, ok.Y = append(ok.X, x), append(ok.Y, y)
		if s.Start >= kill && res.RecoverySeconds < 0 {
			res.RecoverySeconds = (s.Start + s.Latency - kill).Seconds()
		}
	}
	res.SteadySeconds = max(0, (lastFail - kill).Seconds())
	e.logf("failover: first success %.2fs after the kill, last failure %.2fs after; %d/%d failed %v",
		res.RecoverySeconds, res.SteadySeconds, res.Failed, res.Requests, res.Errors)
	name := "failover-timeline.png"
	if err := plot.Scatter(filepath.Join(e.out, name), "Requests around kill -9 of the kasd holding the agent",
		"request start, seconds after the kill", "latency (ms, log scale)", []plot.Series{ok, bad}, true); err != nil {
		return nil, err
	}
	res.Plots = append(res.Plots, name)
	return res, nil
}
