package kasd

import (
	"math"
	"slices"
	"time"

	"github.com/qkas/qkas/quic"
)

// The silence sampler's walk (liveness.go has the rules). Every silenceSample tick it looks at
// the connections that need a look, not at all of them: an idle connection that looked fine
// needs one only every sixth of its silence threshold (every 4.25s at a 25s keep-alive), one
// that is silent or was probed needs one at every tick, and so does every connection of an
// agent with requests in flight. The sampler keeps its own list of the table's connections
// with, beside it, when each next needs a look (a compact slice, rebuilt only when the table
// changed), and the table keeps the set of agents that may have requests in flight
// (startRequest adds an agent when its count leaves 0; the sampler takes it out once it has seen
// the count at 0). Walking every connection at every tick, reading each one's state and its
// agent's count, was 9-19 % of an idle kasd's CPU at 10,000 agents (docs/scale.md).

// startRequest counts a request to e, or reports false when e already has max in flight. An
// agent whose count leaves 0 joins the sampler's busy set: its connections are judged at every
// tick until the sampler sees the count back at 0.
func (t *agentTable) startRequest(e *agentEntry, max int) bool {
	n := e.inflight.Add(1)
	if n > int64(max) {
		e.inflight.Add(-1)
		return false
	}
	if n == 1 {
		t.markBusy(e)
	}
	return true
}

// markBusy puts e in the busy set. inBusy changes only under busyMu; reading it first keeps
// the lock off the path of an agent already in the set.
func (t *agentTable) markBusy(e *agentEntry) {
	if e.inBusy.Load() {
		return
	}
	t.busyMu.Lock()
	if !e.inBusy.Load() {
		e.inBusy.Store(true)
		t.busy[e] = struct{}{}
	}
	t.busyMu.Unlock()
}

// appendBusy appends the entries of the busy set to dst.
func (t *agentTable) appendBusy(dst []*agentEntry) []*agentEntry {
	t.busyMu.Lock()
	defer t.busyMu.Unlock()
	for e := range t.busy {
		dst = append(dst, e)
	}
	return dst
}

// settleBusy takes e out of the busy set once the sampler has seen it with no request in
// flight. A request that started meanwhile keeps it there: a startRequest that still saw
// inBusy set raised the count before the count is read here (atomics are sequentially
// consistent), and one that saw it clear puts e back itself.
func (t *agentTable) settleBusy(e *agentEntry) {
	t.busyMu.Lock()
	e.inBusy.Store(false)
	delete(t.busy, e)
	t.busyMu.Unlock()
	if e.inflight.Load() > 0 {
		t.markBusy(e)
	}
}

// connsSince appends every connection to dst and returns the table's generation, or returns
// ok false (and dst unchanged) when the generation is still gen.
func (t *agentTable) connsSince(dst []*agentConn, gen uint64) (_ []*agentConn, now uint64, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.gen == gen {
		return dst, gen, false
	}
	return t.appendConnsLocked(dst), t.gen, true
}

// entryConns returns e's connections.
func (t *agentTable) entryConns(e *agentEntry) []*agentConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return e.conns
}

// nextLook is when c next needs the sampler's look: never before sampledAt plus a sixth of its
// threshold (less half a tick) while it is idle and looked fine; at every tick otherwise (the
// zero time). It mirrors the early return of judgeSilence.
func (c *agentConn) nextLook() time.Time {
	if c.live.watch || !c.live.busySince.IsZero() || c.live.sampledAt.IsZero() {
		return time.Time{}
	}
	return c.live.sampledAt.Add(c.silenceLimit()/6 - silenceSample/2)
}

// silenceSampler is the walk's state, owned by Server.sampleSilence's goroutine.
type silenceSampler struct {
	table *agentTable
	look  func(c *agentConn, now time.Time, fresh bool) // judges c and acts on the verdict

	gen   uint64
	conns []*agentConn
	due   []int64 // when conns[i] next needs a look, Unix nanoseconds (math.MinInt64: at every tick)
	busy  []*agentEntry
}

func newSilenceSampler(t *agentTable, look func(c *agentConn, now time.Time, fresh bool)) *silenceSampler {
	return &silenceSampler{table: t, look: look, gen: ^uint64(0)}
}

// tick looks at the connections that need it at now (all of them when fresh, after this
// process was paused) and returns how many it looked at.
func (p *silenceSampler) tick(now time.Time, fresh bool) (looked int) {
	if conns, gen, ok := p.table.connsSince(p.conns[:0], p.gen); ok {
		clear(conns[len(conns):cap(conns)]) // keep no removed connection reachable
		p.conns, p.gen = conns, gen
		p.due = slices.Grow(p.due[:0], len(conns))[:len(conns)]
		for i, c := range conns {
			c.live.idx = i
			p.due[i] = unixNano(c.nextLook())
		}
	}
	nowNs := now.UnixNano()
	for i, c := range p.conns {
		if !fresh && p.due[i] > nowNs {
			continue
		}
		p.look(c, now, fresh)
		p.due[i] = unixNano(c.nextLook())
		looked++
	}
	p.busy = p.table.appendBusy(p.busy[:0])
	for _, e := range p.busy {
		idle := e.inflight.Load() == 0
		for _, c := range p.table.entryConns(e) {
			if c.live.sampledAt.Equal(now) {
				continue // looked at above
			}
			p.look(c, now, fresh)
			if i := c.live.idx; i < len(p.conns) && p.conns[i] == c {
				p.due[i] = unixNano(c.nextLook())
			}
			looked++
		}
		if idle {
			p.table.settleBusy(e)
		}
	}
	clear(p.busy)
	return looked
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}

// silenceSample is how often sampleSilence looks at the connections that need it.
const silenceSample = 500 * time.Millisecond

// sampleSilence notes, every 500 ms (silenceTickFor), which agent connections received
// packets, so that routing can prefer connections that are not silent (agentConn.silent). An
// idle connection silent for a keep-alive period and a margin (silentAfterFor), or a busy one
// silent for Config.AgentBusySilence, is probed; one still silent a grace later is presumed dead
// (a killed or paused agent, a dark path) and closed, well before the idle timeout, so that
// requests on it fail over instead of waiting (liveness.go). One goroutine for all
// connections, owned by the Server: Close stops it.
func (s *Server) sampleSilence() {
	tick := silenceTickFor(s.cfg.AgentBusySilence)
	t := time.NewTicker(tick)
	defer t.Stop()
	prev := time.Now()
	p := newSilenceSampler(s.table, s.lookAtSilence)
	for {
		select {
		case <-s.quit:
			return
		case now := <-t.C:
			// A tick far later than due means this process was paused (SIGSTOP, a VM
			// freeze): start every silence anew rather than condemn live connections.
			gap := now.Sub(prev)
			fresh := gap > 3*time.Second
			if fresh && s.fleet != nil {
				// fleet.go: the peers closed them meanwhile; the pause began at most a
				// tick after the last one.
				s.fleet.dropLinksAfterPause(prev.Add(tick), gap)
			}
			prev = now
			p.tick(now, fresh)
		}
	}
}

// lookAtSilence judges c (liveness.go) and acts on the verdict: idle connections against a
// keep-alive period and a margin, busy ones against Config.AgentBusySilence.
func (s *Server) lookAtSilence(c *agentConn, now time.Time, fresh bool) {
	wasQuiet := c.quietBusy.Load()
	verdict, quiet := c.judgeSilence(now, fresh)
	if !wasQuiet && c.quietBusy.Load() {
		s.m.quietBusy.Inc()
	}
	switch verdict {
	case silenceDead:
		s.m.agentConnections.WithLabelValues("silent_closed").Inc()
		s.log.Warn().Str("agent_id", c.agentID).Str("connection_id", c.id).Dur("silent", quiet).Msg("agent connection silent: presumed dead, closing")
		_ = c.qc.CloseWithError(quic.ConnCodeNoError, "silent: presumed dead")
		s.table.remove(c)
	case silenceProbe:
		s.m.silenceProbes.Inc()
		c.probe()
	}
}
