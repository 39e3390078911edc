package kasd

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeLook stands in for Server.lookAtSilence: it counts looks per connection and applies the
// part of judgeSilence that decides when the next look is due (sampledAt, watch, busySince).
type fakeLook struct {
	looks map[*agentConn]int
	watch map[*agentConn]bool // connections whose verdict is not OK (silent, probed)
}

func (f *fakeLook) look(c *agentConn, now time.Time, fresh bool) {
	busy := c.streams.Load() > 0 // the connection's own requests (judgeSilence)
	if !busy && !fresh && !c.live.watch && c.live.busySince.IsZero() && now.Sub(c.live.sampledAt) < c.silenceLimit()/6-silenceSample/2 {
		return // judgeSilence's early return: not a look
	}
	f.looks[c]++
	c.live.sampledAt = now
	c.live.watch = f.watch[c]
	if busy {
		if c.live.busySince.IsZero() {
			c.live.busySince = now
		}
	} else {
		c.live.busySince = time.Time{}
	}
}

func addIdleConns(t *testing.T, table *agentTable, n int, silentAfter time.Duration) []*agentConn {
	t.Helper()
	conns := make([]*agentConn, n)
	for i := range conns {
		c := &agentConn{id: fmt.Sprint("c", i), agentID: fmt.Sprint("agent-", i)}
		c.live.silentAfter = silentAfter
		if _, _, err := table.add(c); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns
}

// TestSilenceSamplerLooksOnlyWhereNeeded: the sampler looks at an idle connection that looked
// fine once per sixth of its silence threshold, not at every tick; at every tick at a silent
// (watched) one and at every connection of an agent with a request in flight, including one
// last time after the request ended; at a new connection at the next tick; at every connection
// after a pause; and no more at a removed one.
func TestSilenceSamplerLooksOnlyWhereNeeded(t *testing.T) {
	table := newAgentTable(1000, 4)
	const threshold = 27 * time.Second // a 25s keep-alive: a look every 4.25s
	conns := addIdleConns(t, table, 100, threshold)
	f := &fakeLook{looks: map[*agentConn]int{}, watch: map[*agentConn]bool{}}
	p := newSilenceSampler(table, f.look)
	t0 := time.Unix(1_000_000, 0)
	ticks := 0
	run := func(n int) (looked int) {
		for range n {
			ticks++
			looked += p.tick(t0.Add(time.Duration(ticks)*silenceSample), false)
		}
		return looked
	}

	if got := run(1); got != 100 {
		t.Fatalf("first tick looked at %d connections, want all 100", got)
	}
	// 20 more ticks (10s): each idle connection is due twice more (at 4.25s and 8.5s).
	if got := run(20); got != 200 {
		t.Fatalf("20 ticks looked %d times at 100 idle connections, want 200 (each every 4.25s)", got)
	}

	// A watched connection (silent, probed) is looked at every tick.
	f.watch[conns[7]] = true
	before := f.looks[conns[7]]
	run(9) // it becomes due within 9 ticks, and is then watched
	f.looks[conns[7]] = 0
	run(10)
	if got := f.looks[conns[7]]; got != 10 {
		t.Fatalf("a watched connection was looked at %d times in 10 ticks, want 10 (had %d before)", got, before)
	}
	f.watch[conns[7]] = false
	run(1)

	// A request in flight to an agent: its connection is looked at every tick until one tick
	// after the request ended; then back to every 4.25s.
	busy := conns[42]
	if !table.startRequest(busy.entry, 10) {
		t.Fatal("startRequest refused")
	}
	busy.streamStarted()
	f.looks[busy] = 0
	run(10)
	if got := f.looks[busy]; got != 10 {
		t.Fatalf("a connection with a request in flight was looked at %d times in 10 ticks, want 10", got)
	}
	busy.entry.inflight.Add(-1)
	busy.streams.Add(-1)
	f.looks[busy] = 0
	run(1)
	if got := f.looks[busy]; got != 1 {
		t.Fatalf("after its request ended the connection was looked at %d times at the next tick, want 1 (to end its busy state)", got)
	}
	if !busy.live.busySince.IsZero() || busy.entry.inBusy.Load() || len(table.appendBusy(nil)) != 0 {
		t.Fatal("the agent is still in the busy set after a tick saw its request end")
	}
	f.looks[busy] = 0
	run(8) // 4s: not due again yet
	if got := f.looks[busy]; got != 0 {
		t.Fatalf("an idle connection was looked at %d times within 4s of its last look", got)
	}

	// A new connection is looked at on the next tick; a removed one never again.
	fresh := addIdleConns(t, table, 1, threshold)[0]
	fresh.agentID, fresh.id = "new-agent", "new"
	table.remove(conns[3])
	f.looks[conns[3]] = 0
	run(1)
	if f.looks[fresh] != 1 {
		t.Fatalf("a new connection was looked at %d times at the next tick, want 1", f.looks[fresh])
	}
	run(20)
	if f.looks[conns[3]] != 0 {
		t.Fatal("a removed connection was looked at")
	}

	// After a pause every connection is looked at.
	if got := p.tick(t0.Add(time.Duration(ticks)*silenceSample+10*time.Second), true); got != 100 {
		t.Fatalf("a tick after a pause looked at %d connections, want all 100", got)
	}
}

// TestBusySetKeepsEveryAgentWithRequests: however requests start and end around the sampler's
// settling, an agent with a request in flight is in the busy set afterwards.
func TestBusySetKeepsEveryAgentWithRequests(t *testing.T) {
	table := newAgentTable(10, 1)
	e := &agentEntry{}
	for range 2000 {
		var wg sync.WaitGroup
		wg.Go(func() {
			if table.startRequest(e, 100) {
				e.inflight.Add(-1)
			}
			table.startRequest(e, 100) // stays in flight
		})
		wg.Go(func() { table.settleBusy(e) })
		wg.Wait()
		if !e.inBusy.Load() || len(table.appendBusy(nil)) != 1 {
			t.Fatalf("an agent with %d requests in flight is not in the busy set", e.inflight.Load())
		}
		e.inflight.Add(-1)
		table.settleBusy(e)
		if e.inBusy.Load() || len(table.appendBusy(nil)) != 0 {
			t.Fatal("an agent with no request in flight stayed in the busy set")
		}
	}
}

// BenchmarkSilenceTick: one tick of the sampler over 10,000 idle connections that looked fine
// (the steady state of a large fleet).
func BenchmarkSilenceTick(b *testing.B) {
	table := newAgentTable(20000, 4)
	for i := range 10000 {
		c := &agentConn{id: fmt.Sprint("c", i), agentID: fmt.Sprint("agent-", i)}
		c.live.silentAfter = 27 * time.Second
		if _, _, err := table.add(c); err != nil {
			b.Fatal(err)
		}
	}
	f := &fakeLook{looks: map[*agentConn]int{}, watch: map[*agentConn]bool{}}
	p := newSilenceSampler(table, f.look)
	t0 := time.Unix(1_000_000, 0)
	p.tick(t0, false)
	b.ResetTimer()
	for i := range b.N {
		p.tick(t0.Add(time.Duration(i%8+1)*silenceSample), false) // within 4.25s: none due
	}
}
