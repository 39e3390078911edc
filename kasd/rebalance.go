package kasd

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/api"
)

// Rebalancing. agentd spreads its connections over the kasd addresses it knows, but nothing in
// that choice sees the fleet: a kasd that restarts comes back empty, and agents that connected
// while it was away stay where they are. So every kasd compares, once per
// FleetConfig.RebalanceInterval (jittered), the agent connections it holds with the fleet's
// average from the registry (registry.Load) and, when it holds too many, asks one agent
// connection to move: a GoAway whose Prefer names the least loaded instance. The agent opens
// its replacement first and drains this connection after (make before break, agentd/agent.go),
// so no request is lost and no agent is ever left with fewer connections.
//
// The pace is the point: one connection per kasd per tick, never a connection younger than
// RebalanceMinAge, never one of an agentd process whose move is still under way (it has a
// connection here that was asked to move), so a kasd coming back fills up over seconds,
// without a reconnect storm. A kasd moves connections away only when that makes the fleet more
// even:
//   - it holds more than the average plus a margin (RebalanceTolerance × average), or the
//     least loaded instance holds less than the average minus that margin and this kasd holds
//     more than the average;
//   - and it holds at least two more than the least loaded instance. A move from m to l
//     connections with m − l ≥ 2 lowers the sum of squares of the counts by 2(m−l)−2 ≥ 2, so
//     moves cannot go round in circles: with a view that is up to date the fleet settles after
//     finitely many, within the margin or one connection of even, whichever is wider.
//
// Only this kasd's own count is exact (its table, less the connections already asked to move);
// the others come from the registry, a watch behind. A peer whose link is down or that
// announced a drain (GoAway on the link, or the draining mark of its registry entry, which
// peers without a link see) is never a target. A draining kasd does not rebalance (it sends every
// agent a GoAway without a preference). An agent whose replacement connection comes back to
// this kasd (it knows no other address) is left alone for stayFor.

// rebalancer is the state of Server.rebalanceLoop, which alone touches it.
type rebalancer struct {
	moving map[*agentConn]time.Time // connections asked to move, until they leave the table
	// stays are agentd processes (replicaKey) whose moved connection came back here: the
	// agent cannot reach another instance (it knows only this kasd's address, say), so it is
	// not asked again before the time noted.
	stays map[string]time.Time
	moves *prometheus.CounterVec // kasd_rebalance_moves_total{reason}
}

// stayFor is how long an agent that came back after a move is left alone.
const stayFor = 10 * time.Minute

// movingTimeout bounds how long a connection asked to move is counted as leaving: an agent that
// ignores the hint (an older agentd) is asked again later.
const movingTimeout = 30 * time.Second

func newRebalanceMetrics(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_rebalance_moves_total",
		Help: "Agent connections this kasd asked to move to another instance for balance (GoAway with a preferred instance), by reason: above_average (this kasd held more than the fleet average plus the margin), below_average (another instance held less than the average minus the margin).",
	}, []string{"reason"})
	for _, r := range []string{"above_average", "below_average"} {
		c.WithLabelValues(r)
	}
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("rebalance metrics: %w", err)
	}
	return c, nil
}

// rebalanceLoop runs until Close, one tick per RebalanceInterval ± 50 %.
func (s *Server) rebalanceLoop(rb *rebalancer) {
	iv := s.fleet.cfg.RebalanceInterval
	t := time.NewTimer(jittered(iv))
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			s.rebalanceOnce(rb, time.Now())
			t.Reset(jittered(iv))
		}
	}
}

func jittered(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}

// rebalanceOnce decides, from the table and the registry, whether to move one connection, and
// asks it to. It returns the connection asked to move, or nil.
func (s *Server) rebalanceOnce(rb *rebalancer, now time.Time) *agentConn {
	f := s.fleet
	if s.draining.Load() || !f.reg.Synced() {
		return nil
	}
	conns := s.table.all()
	inTable := make(map[*agentConn]bool, len(conns))
	for _, c := range conns {
		inTable[c] = true
	}
	movingAgents := map[string]bool{}
	for c, at := range rb.moving {
		if !inTable[c] || now.Sub(at) > movingTimeout {
			delete(rb.moving, c)
			if s.cameBack(conns, c, at) {
				rb.stays[replicaKey(c)] = now.Add(stayFor)
			}
			continue
		}
		movingAgents[replicaKey(c)] = true
	}
	for k, until := range rb.stays {
		if now.After(until) {
			delete(rb.stays, k)
		} else {
			movingAgents[k] = true
		}
	}
	load := f.reg.Load()
	self := s.cfg.InstanceID
	mine := len(conns) - len(rb.moving)
	total := load.Total - load.Connections[self] + mine
	if _, ok := load.Connections[self]; !ok {
		return nil // not in the view yet (lease not granted, or just lost): no fleet to compare with
	}
	n := len(load.Connections)
	if n < 2 {
		return nil
	}
	mean := float64(total) / float64(n)
	margin := max(f.cfg.RebalanceTolerance, 0) * mean // negative: no margin (FleetConfig)
	// The least loaded instance that can take a connection now.
	target, least := "", math.MaxInt
	for _, inst := range f.reg.Instances() {
		c, ok := load.Connections[inst.ID]
		if inst.ID == self || !ok || inst.Draining || f.unhealthy(inst) {
			continue
		}
		if c < least || (c == least && inst.ID < target) {
			target, least = inst.ID, c
		}
	}
	if target == "" || mine-least < 2 {
		return nil
	}
	reason := ""
	switch {
	case float64(mine) > mean+margin:
		reason = "above_average"
	case float64(least) < mean-margin && float64(mine) > mean:
		reason = "below_average"
	default:
		return nil
	}
	c := s.pickToMove(conns, rb, movingAgents, target, now)
	if c == nil {
		return nil
	}
	rb.moving[c] = now
	rb.moves.WithLabelValues(reason).Inc()
	s.log.Info().Str("agent_id", c.agentID).Str("connection_id", c.id).Str("prefer", target).
		Int("connections", mine).Float64("fleet_average", math.Round(mean*10)/10).Int("target_connections", least).
		Str("reason", reason).Msg("rebalance: asking an agent connection to move")
	c.ctrlMu.Lock()
	_ = c.control.SetWriteDeadline(time.Now().Add(time.Second))
	_ = api.WriteFrame(c.control, &api.GoAway{Reason: "rebalance: " + reason, Prefer: target})
	c.ctrlMu.Unlock()
	return c
}

// cameBack reports whether the agentd process of c, asked to move at at, has a connection here
// that arrived after that: its replacement came to this kasd again.
func (s *Server) cameBack(conns []*agentConn, c *agentConn, at time.Time) bool {
	k := replicaKey(c)
	for _, o := range conns {
		if o != c && replicaKey(o) == k && o.since.After(at) {
			return true
		}
	}
	return false
}

// replicaKey names one agentd process: moves are one at a time per process, whose
// connections are its slots.
func replicaKey(c *agentConn) string { return c.agentID + "\x00" + c.replica + "\x00" + c.process }

// pickToMove chooses the connection to move: a live, not silent connection older than
// RebalanceMinAge whose agent process has no move under way,
// preferring an agent that target does not hold yet (so the agent's connections end on
// distinct instances); at random among equals, so that kasd shedding at the same moment rarely
// pick the same agent.
func (s *Server) pickToMove(conns []*agentConn, rb *rebalancer, movingAgents map[string]bool, target string, now time.Time) *agentConn {
	perProcess := map[string]int{}
	for _, c := range conns {
		perProcess[replicaKey(c)]++
	}
	var best, fallback []*agentConn
	// A random order, and a bounded look: a kasd with many thousand connections needs a few
	// good candidates, not all of them.
	for _, i := range rand.Perm(len(conns)) {
		if len(best) >= 16 {
			break
		}
		c := conns[i]
		switch {
		case movingAgents[replicaKey(c)], c.qc.Context().Err() != nil, c.silent(now),
			now.Sub(c.since) < s.fleet.cfg.RebalanceMinAge:
			continue
		case perProcess[replicaKey(c)] > 1:
			// Two connections of one agent here: moving one also spreads the agent.
			best = append(best, c)
			continue
		}
		held := false
		for _, h := range s.fleet.reg.Holders(c.agentID) {
			if h.Instance.ID == target {
				held = true
			}
		}
		if held {
			fallback = append(fallback, c)
		} else {
			best = append(best, c)
		}
	}
	if len(best) == 0 {
		best = fallback
	}
	if len(best) == 0 {
		return nil
	}
	return best[rand.IntN(len(best))]
}
