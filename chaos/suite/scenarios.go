package suite

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// scenario is one fault and its bound.
type scenario struct {
	name  string
	about string
	run   func(s *suite, ctx context.Context) *result
}

func scenarios() []scenario {
	return []scenario{
		{"placement", "each kasd holds 2N/3 ± 20% of the agents' 2N connections", (*suite).placement},
		{"steady", "load, no fault: 0 lost", (*suite).steady},
		{"kasd-term", "SIGTERM the busiest kasd (drain), restart it: 0 lost", (*suite).kasdTerm},
		{"agent-term", "SIGTERM an agentd, restart it at once: 0 lost", (*suite).agentTerm},
		{"agent-kill", "kill -9 an agentd, restart it 2s later: lost ≤ requests in flight to it", (*suite).agentKill},
		{"kasd-kill", "kill -9 the busiest kasd: lost ≤ requests in flight through it", (*suite).kasdKill},
		{"partition", "cut kasd-1 ↔ kasd-3: 0 lost for agents with a second connection", (*suite).partition},
		{"kasd-stop", "SIGSTOP the busiest kasd, then SIGCONT: no request longer than route-timeout + response-header-timeout", (*suite).kasdStop},
		{"etcd-down", "kill -9 the etcd leader, restart it: 0 lost", (*suite).etcdDown},
		{"loss", "random loss on every kasd and agent namespace: 0 lost", (*suite).loss},
	}
}

// AllScenarios lists the scenario names in the order they run by default.
func AllScenarios() []string {
	var out []string
	for _, s := range scenarios() {
		out = append(out, s.name)
	}
	return out
}

func scenarioByName(name string) scenario {
	for _, s := range scenarios() {
		if s.name == name {
			return s
		}
	}
	panic("unknown scenario " + name) // Validate checked the names
}

// loadWith runs the load for at least d, calling fault once the warm-up has passed (in this
// goroutine: the load goes on while it works), and returns when the load has stopped.
func (s *suite) loadWith(ctx context.Context, d time.Duration, fault func(r *loadRun) error) (*loadRun, error) {
	r := s.startLoad()
	var err error
	if sleepCtx(ctx, s.cfg.Warmup) == nil && fault != nil {
		err = fault(r)
	}
	_ = sleepCtx(ctx, d-time.Since(r.origin))
	r.stop()
	return r, err
}

// length is how long a scenario whose fault lasts hold loads the fleet.
func (s *suite) length(hold time.Duration) time.Duration {
	return max(s.cfg.Duration, s.cfg.Warmup+hold+s.cfg.Tail)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// busiest is the kasd holding the most agent connections now.
func (s *suite) busiest() int {
	conns := s.f.connections()
	best := 0
	for i, c := range conns {
		if c > conns[best] {
			best = i
		}
	}
	return best
}

func (s *suite) placement(ctx context.Context) *result {
	f := s.f
	res := &result{allowed: -1}
	conns := f.connections()
	want := float64(2*len(f.agents)) / float64(len(f.kasd))
	lo, hi := want*0.8, want*1.2
	res.bound = fmt.Sprintf("each kasd holds %.1f ± 20%% = [%.1f, %.1f] of %d connections", want, lo, hi, 2*len(f.agents))
	res.placement = conns
	for _, c := range conns {
		if float64(c) < lo || float64(c) > hi {
			res.broken = true
		}
	}
	res.boundNote = fmt.Sprintf("kasd_agent_connections %s", placementString(f, conns))
	if h, err := f.holders(); err == nil {
		per := map[string]int{}
		for _, ins := range h {
			for _, in := range ins {
				per[in]++
			}
		}
		var held []int
		for _, k := range f.kasd {
			held = append(held, per[k.id])
		}
		res.notes = append(res.notes, fmt.Sprintf("agents held (own connections in GET /api/v1/agents): %s", placementString(f, held)))
		for _, m := range f.viewMismatches(h) {
			res.notes = append(res.notes, "fleet view: "+m)
		}
	}
	res.recovery = -1
	return res
}

func placementString(f *fleet, v []int) string {
	s := ""
	for i, k := range f.kasd {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %d", k.id, v[i])
	}
	return s
}

func (s *suite) steady(ctx context.Context) *result {
	r, err := s.loadWith(ctx, s.cfg.Duration, nil)
	res := summarize(r, 0, failed)
	res.err = err
	res.limit(0, "0 lost")
	return res
}

func (s *suite) kasdTerm(ctx context.Context) *result {
	k := s.f.kasd[s.busiest()]
	var fault time.Duration
	r, err := s.loadWith(ctx, s.length(shutdownGrace), func(r *loadRun) error {
		fault = r.mark("sigterm")
		if err := k.proc.signal(syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-k.proc.done:
		case <-time.After(drainDelay + shutdownGrace + 10*time.Second):
			k.proc.kill()
			return fmt.Errorf("%s did not exit within %v of SIGTERM", k.id, drainDelay+shutdownGrace+10*time.Second)
		}
		r.mark("exited")
		if err := s.f.restartKasd(ctx, k); err != nil {
			return err
		}
		r.mark("restarted")
		return nil
	})
	res := summarize(r, fault, failed)
	res.err = err
	res.about = fmt.Sprintf("SIGTERM %s (drain-delay %v, shutdown-grace %v), restarted once it exited", k.id, drainDelay, shutdownGrace)
	res.notes = append(res.notes, fmt.Sprintf("%s exited %v after SIGTERM, was ready again %v after it",
		k.id, (r.marks["exited"]-fault).Round(time.Millisecond), (r.marks["restarted"]-fault).Round(time.Millisecond)))
	res.limit(0, "0 lost")
	return res
}

func (s *suite) agentTerm(ctx context.Context) *result {
	a := s.f.agents[0]
	var fault time.Duration
	r, err := s.loadWith(ctx, s.length(agentDrain), func(r *loadRun) error {
		fault = r.mark("sigterm")
		if err := a.proc.signal(syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-a.proc.done:
		case <-time.After(agentDrain + 10*time.Second):
			a.proc.kill()
			return fmt.Errorf("%s did not exit within %v of SIGTERM", a.id, agentDrain+10*time.Second)
		}
		r.mark("exited")
		p, err := a.proc.restart()
		if err != nil {
			return err
		}
		a.proc = p
		return nil
	})
	res := summarize(r, fault, failed)
	res.err = err
	res.about = fmt.Sprintf("SIGTERM %s (drain-timeout %v), restarted as soon as it exited", a.id, agentDrain)
	res.notes = append(res.notes, fmt.Sprintf("%s exited %v after SIGTERM; %d requests to it", a.id,
		(r.marks["exited"]-fault).Round(time.Millisecond), r.count(func(x sample) bool { return x.agent == 0 })))
	res.limit(0, "0 lost")
	return res
}

func (s *suite) agentKill(ctx context.Context) *result {
	const idx = 1
	a := s.f.agents[idx]
	var fault time.Duration
	r, err := s.loadWith(ctx, s.length(s.cfg.AgentDown), func(r *loadRun) error {
		fault = r.mark("kill")
		a.proc.kill()
		if err := sleepCtx(ctx, s.cfg.AgentDown); err != nil {
			return err
		}
		p, err := a.proc.restart()
		if err != nil {
			return err
		}
		a.proc = p
		r.mark("restarted")
		return nil
	})
	res := summarize(r, fault, failed)
	res.err = err
	res.about = fmt.Sprintf("kill -9 %s, restarted %v later", a.id, s.cfg.AgentDown)
	to := func(x sample) bool { return x.agent == idx }
	n := r.inflight(fault, to)
	res.limit(n, fmt.Sprintf("lost ≤ %d, the requests in flight to %s at the kill", n, a.id))
	res.notes = append(res.notes, fmt.Sprintf("failed requests to %s: %d of %d; to other agents: %d", a.id,
		r.count(func(x sample) bool { return to(x) && failed(x) }), r.count(to),
		r.count(func(x sample) bool { return !to(x) && failed(x) })))
	return res
}

func (s *suite) kasdKill(ctx context.Context) *result {
	ki := s.busiest()
	k := s.f.kasd[ki]
	var fault, scrapeAt time.Duration
	var metric float64
	var merr error
	r, err := s.loadWith(ctx, s.length(s.cfg.KillHold), func(r *loadRun) error {
		// The load balancer takes the kasd out first (no new requests are sent to it), then its
		// in-flight requests are read, then it is killed.
		s.lb.excluded[ki].Store(true)
		defer s.lb.excluded[ki].Store(false)
		scrapeAt = r.mark("scrape")
		metric, merr = s.f.metric(k, "kasd_inflight_requests")
		fault = r.mark("kill")
		k.proc.kill()
		if err := sleepCtx(ctx, s.cfg.KillHold); err != nil {
			return err
		}
		if err := s.f.restartKasd(ctx, k); err != nil {
			return err
		}
		r.mark("restarted")
		return nil
	})
	res := summarize(r, fault, failed)
	res.err = err
	if merr != nil && err == nil {
		res.err = fmt.Errorf("reading kasd_inflight_requests before the kill: %w", merr)
	}
	res.about = fmt.Sprintf("kill -9 %s (taken out of the load balancer just before), restarted %v later", k.id, s.cfg.KillHold)
	through := func(x sample) bool { return int(x.kasd) == ki }
	late := r.count(func(x sample) bool { return through(x) && x.start >= scrapeAt && x.start <= fault })
	allowed := int(metric) + late
	res.limit(allowed, fmt.Sprintf("lost ≤ %d: kasd_inflight_requests %d just before the kill + %d requests sent to its API after that scrape", allowed, int(metric), late))
	res.notes = append(res.notes,
		fmt.Sprintf("client requests in flight at %s's API at the kill: %d; failed through its API: %d, through the other kasd: %d",
			k.id, r.inflight(fault, through), r.count(func(x sample) bool { return through(x) && failed(x) }),
			r.count(func(x sample) bool { return !through(x) && failed(x) })))
	return res
}

func (s *suite) partition(ctx context.Context) *result {
	f := s.f
	a, b := f.kasd[0], f.kasd[2]
	h, herr := f.holders()
	multi := map[int32]bool{}
	for i, ag := range f.agents {
		if len(h[ag.id]) >= 2 {
			multi[int32(i)] = true
		}
	}
	var fault time.Duration
	r, err := s.loadWith(ctx, s.length(s.cfg.CutHold), func(r *loadRun) error {
		if herr != nil {
			return herr
		}
		fault = r.mark("cut")
		defer func() {
			_ = setRules(context.Background(), a.ns.name)
			_ = setRules(context.Background(), b.ns.name)
			r.mark("healed")
		}()
		if err := setRules(ctx, a.ns.name, "ip saddr "+b.ns.ip+" drop"); err != nil {
			return err
		}
		if err := setRules(ctx, b.ns.name, "ip saddr "+a.ns.ip+" drop"); err != nil {
			return err
		}
		return sleepCtx(ctx, s.cfg.CutHold)
	})
	counted := func(x sample) bool { return multi[x.agent] && failed(x) }
	res := summarize(r, fault, counted)
	res.err = err
	res.about = fmt.Sprintf("%s and %s drop each other's packets (nftables input) for %v", a.id, b.id, s.cfg.CutHold)
	res.limit(0, fmt.Sprintf("0 lost for the %d agents held by two kasd when the cut began", len(multi)))
	single := r.count(func(x sample) bool { return !multi[x.agent] && failed(x) })
	res.notes = append(res.notes, fmt.Sprintf("agents with one holder: %d; their failed requests: %d", len(f.agents)-len(multi), single))
	return res
}

func (s *suite) kasdStop(ctx context.Context) *result {
	ki := s.busiest()
	k := s.f.kasd[ki]
	var stopAt, contAt time.Duration
	r, err := s.loadWith(ctx, s.length(s.cfg.StopHold), func(r *loadRun) error {
		stopAt = r.mark("stop")
		if err := k.proc.signal(syscall.SIGSTOP); err != nil {
			return err
		}
		defer func() {
			_ = k.proc.signal(syscall.SIGCONT)
			contAt = r.mark("cont")
		}()
		return sleepCtx(ctx, s.cfg.StopHold)
	})
	limit := routeTimeout + headerTimeout
	// A request sent to the paused kasd's own API waits for it by construction (the client's
	// load balancer notices within lbPeriod+lbTimeout); its time counts from SIGCONT.
	eff := func(x sample) time.Duration {
		if int(x.kasd) == ki && x.start < contAt && x.end > stopAt {
			return x.end - max(x.start, contAt)
		}
		return x.latency()
	}
	slow := func(x sample) bool { return eff(x) > limit }
	res := summarize(r, stopAt, func(x sample) bool { return failed(x) || slow(x) })
	res.err = err
	res.about = fmt.Sprintf("SIGSTOP %s for %v, then SIGCONT (route-timeout %v, response-header-timeout %v)", k.id, s.cfg.StopHold, routeTimeout, headerTimeout)
	n := r.count(slow)
	var worst time.Duration
	for _, x := range r.samples {
		worst = max(worst, eff(x))
	}
	res.limit(-1, fmt.Sprintf("no request longer than %v (requests sent to %s's own API during the pause: counted from SIGCONT)", limit, k.id))
	res.lost = n
	res.broken = n > 0
	res.boundNote = fmt.Sprintf("%d requests longer than %v; longest %v", n, limit, worst.Round(time.Millisecond))
	paused := r.count(func(x sample) bool { return int(x.kasd) == ki && x.start < contAt && x.end > stopAt })
	res.notes = append(res.notes, fmt.Sprintf("requests at %s's API during the pause: %d; failed requests (not bounded here): %d", k.id, paused, r.count(failed)))
	return res
}

func (s *suite) etcdDown(ctx context.Context) *result {
	f := s.f
	leader := f.etcd[0]
	for _, e := range f.etcd {
		if v, err := f.etcdMetric(e, "etcd_server_is_leader"); err == nil && v == 1 {
			leader = e
		}
	}
	var fault time.Duration
	r, err := s.loadWith(ctx, s.length(s.cfg.EtcdHold), func(r *loadRun) error {
		fault = r.mark("kill")
		leader.proc.kill()
		if err := sleepCtx(ctx, s.cfg.EtcdHold); err != nil {
			return err
		}
		p, err := leader.proc.restart()
		if err != nil {
			return err
		}
		leader.proc = p
		r.mark("restarted")
		return f.waitHTTP(ctx, leader.clientURL()+"/health", p, 30*time.Second)
	})
	res := summarize(r, fault, failed)
	res.err = err
	res.about = fmt.Sprintf("kill -9 etcd member %s (the leader) for %v, then restart it", leader.name, s.cfg.EtcdHold)
	res.limit(0, "0 lost")
	return res
}

// etcdMetric reads one gauge from an etcd member's /metrics.
func (f *fleet) etcdMetric(e *etcdNode, name string) (float64, error) {
	return f.metricAt(e.clientURL()+"/metrics", name)
}

func (s *suite) loss(ctx context.Context) *result {
	f := s.f
	perMille := int(s.cfg.LossPercent*10 + 0.5)
	var nss []string
	for _, k := range f.kasd {
		nss = append(nss, k.ns.name)
	}
	for _, a := range f.agents {
		nss = append(nss, a.ns.name)
	}
	var fault time.Duration
	r, err := s.loadWith(ctx, s.cfg.Duration, func(r *loadRun) error {
		fault = r.mark("loss")
		for _, ns := range nss {
			if err := setRules(ctx, ns, fmt.Sprintf("iifname %q numgen random mod 1000 < %d drop", nodeIf, perMille)); err != nil {
				return err
			}
		}
		r.mark("loss on all")
		return nil
	})
	for _, ns := range nss {
		_ = setRules(context.Background(), ns)
	}
	res := summarize(r, fault, failed)
	res.err = err
	res.about = fmt.Sprintf("%.1f%% of the packets arriving at every kasd and agent namespace dropped (nftables numgen random, input) from the warm-up to the end", s.cfg.LossPercent)
	res.limit(0, "0 lost")
	return res
}
