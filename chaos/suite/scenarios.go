package suite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"syscall"
	"time"

	"github.com/qkas/qkas/api"
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
		{"kasd-join", "SIGTERM a kasd, restart it once its agents left: 0 lost, the fleet rebalances onto it (±20% within 45s, one connection at a time)", (*suite).kasdJoin},
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

// placementWait bounds how long the placement scenario waits for the fleet to balance: agentd
// places its connections at random, and the kasd above the fleet's average move connections to
// the least loaded one at a time (kasd/rebalance.go), each at least RebalanceMinAge (5 s) old.
const placementWait = 45 * time.Second

// inShare reports whether every kasd holds its share of want connections ± 20 %, and which
// bound it is.
func inShare(conns []int, want int) (ok bool, lo, hi, share float64) {
	share = float64(want) / float64(len(conns))
	lo, hi = share*0.8, share*1.2
	ok = true
	for _, c := range conns {
		if float64(c) < lo || float64(c) > hi {
			ok = false
		}
	}
	return ok, lo, hi, share
}

func (s *suite) placement(ctx context.Context) *result {
	f := s.f
	res := &result{allowed: -1}
	want := 2 * len(f.agents)
	first := f.connections()
	start := time.Now()
	conns := first
	ok, lo, hi, share := inShare(conns, want)
	for !ok && time.Since(start) < placementWait && sleepCtx(ctx, 250*time.Millisecond) == nil {
		conns = f.connections()
		ok, _, _, _ = inShare(conns, want)
	}
	took := time.Since(start)
	res.bound = fmt.Sprintf("each kasd holds %.1f ± 20%% = [%.1f, %.1f] of %d connections within %v of the fleet being whole", share, lo, hi, want, placementWait)
	res.placement = conns
	res.broken = !ok
	res.boundNote = fmt.Sprintf("kasd_agent_connections %s", placementString(f, conns))
	res.notes = append(res.notes, fmt.Sprintf("as the agents first connected: %s; balanced after %v", placementString(f, first), took.Round(100*time.Millisecond)))
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

// kasdJoin drains a kasd away, lets its agents settle on the others, then brings it back under
// load: the fleet must move connections onto it until every kasd holds its share ± 20 %,
// without losing a request and without a reconnect storm (kasd moves one connection at a time).
func (s *suite) kasdJoin(ctx context.Context) *result {
	f := s.f
	ki := len(f.kasd) - 1
	k := f.kasd[ki]
	want := 2 * len(f.agents)
	res := &result{allowed: -1, recovery: -1}
	fail := func(err error) *result { res.err = err; return res }
	if err := k.proc.signal(syscall.SIGTERM); err != nil {
		return fail(err)
	}
	select {
	case <-k.proc.done:
	case <-time.After(drainDelay + shutdownGrace + 10*time.Second):
		k.proc.kill()
		return fail(fmt.Errorf("%s did not exit within %v of SIGTERM", k.id, drainDelay+shutdownGrace+10*time.Second))
	}
	// Its agents reconnect to the other two.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conns := f.connections()
		sum := 0
		for i, c := range conns {
			if i != ki {
				sum += c
			}
		}
		if sum == want {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("agents did not all reconnect to the other kasd within 30s: %v", conns))
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return fail(err)
		}
	}
	before := f.connections()
	movesBefore := 0.0
	for i, kk := range f.kasd {
		if i != ki {
			v, _ := f.metric(kk, "kasd_rebalance_moves_total")
			movesBefore += v
		}
	}
	var joined, balanced time.Duration
	var after []int
	r, err := s.loadWith(ctx, s.cfg.Duration, func(r *loadRun) error {
		if err := s.f.restartKasd(ctx, k); err != nil {
			return err
		}
		joined = r.mark("joined")
		for {
			after = f.connections()
			if ok, _, _, _ := inShare(after, want); ok {
				balanced = r.mark("balanced")
				break
			}
			if time.Since(r.origin)-joined > placementWait {
				return nil
			}
			if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
				return err
			}
		}
		return sleepCtx(ctx, s.cfg.Tail) // a moment of load on the balanced fleet
	})
	res2 := summarize(r, joined, failed)
	res2.err = err
	res2.name = res.name
	res = res2
	res.about = fmt.Sprintf("SIGTERM %s, its agents settle on the others (%s), then restart it under load", k.id, placementString(f, before))
	res.faulted = []string{k.id}
	moves := 0.0
	for _, kk := range f.kasd {
		v, _ := f.metric(kk, "kasd_rebalance_moves_total")
		moves += v
	}
	moves -= movesBefore
	ok, lo, hi, share := inShare(after, want)
	needed := int(share*0.8 + 0.999) // the fewest moves that bring the new kasd into its bound
	maxMoves := 2*int(share+0.5) + 2
	res.limit(0, fmt.Sprintf("0 lost; each kasd back to %.1f ± 20%% = [%.1f, %.1f] within %v of the restart, by at most %d moves (no storm)", share, lo, hi, placementWait, maxMoves))
	res.allowedText = fmt.Sprintf("0, ≤%.0fs", placementWait.Seconds())
	if !ok || int(moves) > maxMoves {
		res.broken = true
	}
	took := "not balanced"
	if balanced > 0 {
		took = fmt.Sprintf("balanced %v after the restart", (balanced - joined).Round(100*time.Millisecond))
	}
	res.boundNote = fmt.Sprintf("%s: kasd_agent_connections %s; %.0f connections moved (at least %d needed)", took, placementString(f, after), moves, needed)
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
	res.faulted = []string{k.id}
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
	var fault, dead, back time.Duration
	r, err := s.loadWith(ctx, s.length(s.cfg.AgentDown), func(r *loadRun) error {
		fault = r.mark("kill")
		if err := a.proc.signal(syscall.SIGKILL); err != nil {
			return err
		}
		// The agent ran until the signal was sent, which on a loaded host can be a good while
		// after the mark (this goroutine descheduled between the two): it may have taken
		// requests sent meanwhile.
		dead = r.mark("killed")
		a.proc.kill() // waits until it is reaped
		if err := sleepCtx(ctx, s.cfg.AgentDown); err != nil {
			return err
		}
		p, err := a.proc.restart()
		if err != nil {
			return err
		}
		a.proc = p
		r.mark("restarted")
		if err := s.f.waitAgentConnected(ctx, a, 30*time.Second); err != nil {
			return err
		}
		back = r.mark("connected")
		return nil
	})
	to := func(x sample) bool { return x.agent == idx }
	// A request sent after the kill's mark that kasd answered 503 agent_not_connected (it sent
	// it nowhere) after waiting out --route-timeout, and that ended before the restarted agentd
	// had any connection, waited for an agent that was not there: the fault took longer than
	// the route timeout (on a loaded host the restart alone can take most of a second), not a
	// request kasd could have served. A 503 sooner than the route timeout, or one that ended
	// once the agent was back (another holder was there to take it), is counted.
	unreachable := func(x sample) bool {
		return to(x) && back > 0 && x.start >= fault && x.end <= back && x.latency() >= routeTimeout-100*time.Millisecond &&
			x.outcome == "503 "+api.CodeAgentNotConnected.String()
	}
	counted := func(x sample) bool { return failed(x) && !unreachable(x) }
	res := summarize(r, fault, counted)
	res.err = err
	res.about = fmt.Sprintf("kill -9 %s, restarted %v later", a.id, s.cfg.AgentDown)
	// In flight to the agent at some moment between the kill's mark and the signal.
	n := r.count(func(x sample) bool { return to(x) && x.start <= dead && x.end > fault })
	res.limit(n, fmt.Sprintf("lost ≤ %d, the requests in flight to %s between the kill's mark and its SIGKILL (not counted: 503 agent_not_connected that ended before it was connected again)", n, a.id))
	res.notes = append(res.notes, fmt.Sprintf("failed requests to %s: %d of %d; to other agents: %d; SIGKILL sent %v after the kill's mark, restarted %v after it, connected again %v after it; not counted (unreachable until their route timeout): %d", a.id,
		r.count(func(x sample) bool { return to(x) && failed(x) }), r.count(to),
		r.count(func(x sample) bool { return !to(x) && failed(x) }), (dead-fault).Round(time.Millisecond),
		(r.marks["restarted"]-fault).Round(time.Millisecond), (back-fault).Round(time.Millisecond), r.count(unreachable)))
	// Not (yet) a bound of their own: requests sent after the SIGKILL never reached the agent,
	// and kasd should have served them once it was back.
	late := func(x sample) bool { return counted(x) && x.start > dead }
	if k := r.count(late); k > 0 {
		res.notes = append(res.notes, fmt.Sprintf("counted failures sent after the SIGKILL: %d: %s", k, r.describe(late, 5)))
	}
	return res
}

// waitAgentConnected polls a's agentd /readyz (200 once it holds a connection to a kasd) from
// inside its namespace until it answers 200.
func (f *fleet) waitAgentConnected(ctx context.Context, a *agentNode, timeout time.Duration) error {
	c := &http.Client{Transport: &http.Transport{DialContext: a.ns.Dial, DisableKeepAlives: true}, Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		if resp, err := c.Get("http://" + agentdObservabilityAddr + "/readyz"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if a.proc.exited() {
			return fmt.Errorf("%s exited (%s); see %s", a.id, a.proc.exitStatus(), a.proc.logPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not connected to a kasd %v after its restart", a.id, timeout)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

func (s *suite) kasdKill(ctx context.Context) *result {
	ki := s.busiest()
	k := s.f.kasd[ki]
	var fault time.Duration
	var metric float64
	var merr error
	logFrom := make([]int64, len(s.f.kasd))
	for i, o := range s.f.kasd {
		logFrom[i] = logSize(o.proc.logPath)
	}
	r, err := s.loadWith(ctx, s.length(s.cfg.KillHold), func(r *loadRun) error {
		// The load balancer takes the kasd out first (no new requests are sent to it), then its
		// in-flight requests are read (a note: a sample, not the bound), then it is killed.
		s.lb.excluded[ki].Store(true)
		defer s.lb.excluded[ki].Store(false)
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
	// The requests whose bytes were at the killed kasd when it died: those in flight at its own
	// API (the client's count), and those another kasd had forwarded to it and that were still
	// in flight (the origin's access line names the peer it last sent the request to; the
	// client's times say it was in flight at the kill). Only those may fail: any other failure
	// breaks the bound whatever the count. A forward the killed kasd had not acknowledged is
	// sent to the agent's next holder (kasd route.go, unacknowledged), so it ends under
	// another peer's name or succeeds.
	var origins []holderLog
	for i, o := range s.f.kasd {
		if i != ki {
			origins = append(origins, readHolderLog(o.proc.logPath, logFrom[i]))
		}
	}
	through := func(x sample) bool { return int(x.kasd) == ki }
	forwardedThere := func(x sample) bool {
		if through(x) {
			return false
		}
		for _, o := range origins {
			if o.forwardedTo[x.id(r)] == k.id {
				return true
			}
		}
		return false
	}
	atKilled := func(x sample) bool {
		return x.start <= fault && x.end > fault && (through(x) || forwardedThere(x))
	}
	stray := func(x sample) bool { return failed(x) && !atKilled(x) }
	res := summarize(r, fault, failed)
	res.err = err
	if merr != nil && err == nil {
		res.err = fmt.Errorf("reading kasd_inflight_requests before the kill: %w", merr)
	}
	res.about = fmt.Sprintf("kill -9 %s (taken out of the load balancer just before), restarted %v later", k.id, s.cfg.KillHold)
	res.faulted = []string{k.id}
	apiInflight := r.inflight(fault, through)
	fwdInflight := r.inflight(fault, forwardedThere)
	allowed := apiInflight + fwdInflight
	res.limit(allowed, fmt.Sprintf("lost ≤ %d, and no failure but those: %d requests in flight at its API at the kill (the client's count) + %d forwarded to it by the other kasd and in flight at the kill (their access logs)", allowed, apiInflight, fwdInflight))
	if n := r.count(stray); n > 0 {
		res.broken = true
		res.notes = append(res.notes, fmt.Sprintf("failed requests whose bytes were not at %s when it died: %d: %s", k.id, n, r.describe(stray, 3)))
	}
	res.notes = append(res.notes,
		fmt.Sprintf("client requests in flight at %s's API at the kill: %d; failed through its API: %d, through the other kasd: %d (forwarded to %s: %d); kasd_inflight_requests %d just before the kill",
			k.id, apiInflight, r.count(func(x sample) bool { return through(x) && failed(x) }),
			r.count(func(x sample) bool { return !through(x) && failed(x) }), k.id,
			r.count(func(x sample) bool { return forwardedThere(x) && failed(x) }), int(metric)))
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
	marks := f.logMarks()
	var fault time.Duration
	r, err := s.loadWith(ctx, s.length(s.cfg.CutHold), func(r *loadRun) error {
		if herr != nil {
			return herr
		}
		defer func() {
			_ = setBridgeRules(context.Background())
			r.mark("healed")
		}()
		// Both directions in one nft transaction on the bridge: a symmetric cut from its
		// first moment. The fault's time is taken after nft returns: the rules are in place
		// by then (taking it before would count the time nft takes to start as cut).
		if err := setBridgeRules(ctx,
			"ip saddr "+a.ns.ip+" ip daddr "+b.ns.ip+" drop",
			"ip saddr "+b.ns.ip+" ip daddr "+a.ns.ip+" drop"); err != nil {
			return err
		}
		fault = r.mark("cut")
		return sleepCtx(ctx, s.cfg.CutHold)
	})
	// A request forwarded across the cut link before the cut, whose head the holder beyond it
	// logged, reached that holder and the agent: the agent executed it, and only its answer
	// could not come back. Repeating it elsewhere could execute it twice (a POST), so the retry
	// policy does not; like a request whose bytes were at a killed kasd, it is not counted.
	// Everything sent after the cut, or not yet across it, must be served by another holder.
	la := readHolderLog(a.proc.logPath, marks[a.proc.logPath])
	lb := readHolderLog(b.proc.logPath, marks[b.proc.logPath])
	// In flight across the cut link at the cut: sent before it by one side to the other (the
	// holder beyond logged it), or forwarded by one side, held by the other, and still going
	// at the cut (a body too large to replay whose head was on its way, say: the holder logs
	// nothing of a head it did not finish reading).
	crossed := func(x sample) bool {
		if x.start >= fault {
			return false
		}
		id := x.id(r)
		if lb.from(a.id, id) || la.from(b.id, id) {
			return true
		}
		if x.end <= fault {
			return false
		}
		other := map[int]string{0: b.id, 2: a.id}[int(x.kasd)]
		origin := map[int]holderLog{0: la, 2: lb}[int(x.kasd)]
		return other != "" && origin.forwardedOut[id] && slices.Contains(h[f.agents[x.agent].id], other)
	}
	counted := func(x sample) bool { return multi[x.agent] && failed(x) && !crossed(x) }
	res := summarize(r, fault, counted)
	res.err = err
	res.about = fmt.Sprintf("the bridge drops every packet between %s and %s, both ways at once (nftables bridge forward) for %v", a.id, b.id, s.cfg.CutHold)
	res.faulted = []string{a.id, b.id}
	res.limit(0, fmt.Sprintf("0 lost for the %d agents held by two kasd when the cut began (requests in flight across the cut link at the cut are not counted: their bytes were beyond it)", len(multi)))
	single := r.count(func(x sample) bool { return !multi[x.agent] && failed(x) })
	res.notes = append(res.notes,
		fmt.Sprintf("failed requests in flight across the cut link at the cut (not counted): %d, of %d requests in flight at the cut",
			r.count(func(x sample) bool { return failed(x) && crossed(x) }), r.inflight(fault, func(sample) bool { return true })),
		fmt.Sprintf("agents with one holder: %d; their failed requests: %d", len(f.agents)-len(multi), single))
	if n := r.count(counted); n > 0 {
		res.notes = append(res.notes, "counted failures: "+r.describe(counted, 3))
	}
	if n := r.count(func(x sample) bool {
		return counted(x) && !la.any(x.id(r)) && !lb.any(x.id(r))
	}); n > 0 {
		res.notes = append(res.notes, fmt.Sprintf("counted failures that no holder across the cut logged: %d (they never reached it; "+
			"the origin took them for possibly executed, having received packets from the peer after sending them — sent before the cut, read late)", n))
	}
	return res
}

func (s *suite) kasdStop(ctx context.Context) *result {
	ki := s.busiest()
	k := s.f.kasd[ki]
	logFrom := make([]int64, len(s.f.kasd))
	for i, o := range s.f.kasd {
		logFrom[i] = logSize(o.proc.logPath)
	}
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
	// A request whose bytes had reached the paused kasd may fail (issue 11: under any single
	// fault, only those may): sent to its own API during the pause, forwarded to it and logged
	// by it as the holder (it logs once it runs again), or forwarded to it by another kasd that
	// logged it as failed at the paused kasd after its QUIC stack had acknowledged it (a peer
	// that freezes a moment after taking a request: the origin cannot tell whether it will run
	// it when it resumes, so it may not send it elsewhere). Any other failure counts.
	held := readHolderLog(k.proc.logPath, logFrom[ki])
	var origins []holderLog
	for i, o := range s.f.kasd {
		if i != ki {
			origins = append(origins, readHolderLog(o.proc.logPath, logFrom[i]))
		}
	}
	atPaused := func(x sample) bool {
		if (int(x.kasd) == ki && x.start < contAt && x.end > stopAt) || held.any(x.id(r)) {
			return true
		}
		for _, o := range origins {
			if o.failedAtPeer[x.id(r)] == k.id {
				return true
			}
		}
		return false
	}
	strayFailure := func(x sample) bool { return failed(x) && !atPaused(x) }
	res := summarize(r, stopAt, func(x sample) bool { return slow(x) || strayFailure(x) })
	res.err = err
	res.about = fmt.Sprintf("SIGSTOP %s for %v, then SIGCONT (route-timeout %v, response-header-timeout %v)", k.id, s.cfg.StopHold, routeTimeout, headerTimeout)
	res.faulted = []string{k.id}
	n, stray := r.count(slow), r.count(strayFailure)
	var worst time.Duration
	for _, x := range r.samples {
		worst = max(worst, eff(x))
	}
	res.limit(0, fmt.Sprintf("no request longer than route-timeout + response-header-timeout = %v (requests sent to %s's own API during the pause: counted from SIGCONT); no failed request but those whose bytes had reached %s", limit, k.id, k.id))
	res.allowedText = "0, ≤" + limit.String()
	res.boundNote = fmt.Sprintf("%d requests longer than %v (longest %v ≤ %v: %v); %d failed requests whose bytes had not reached %s",
		n, limit, worst.Round(time.Millisecond), limit, worst <= limit, stray, k.id)
	if stray > 0 {
		res.notes = append(res.notes, "failed requests whose bytes had not reached "+k.id+": "+r.describe(strayFailure, 3))
	}
	paused := r.count(func(x sample) bool { return int(x.kasd) == ki && x.start < contAt && x.end > stopAt })
	res.notes = append(res.notes, fmt.Sprintf("requests at %s's API during the pause: %d; failed requests: %d, of which %d had reached %s (its API, forwarded to it and logged by it, or acknowledged by it and failed at the origin)",
		k.id, paused, r.count(failed), r.count(func(x sample) bool { return failed(x) && atPaused(x) }), k.id))
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
