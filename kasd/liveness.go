package kasd

import (
	"time"

	"github.com/qkas/qkas/quic"
)

// Liveness of agent connections at scale (docs/scale.md).
//
// An idle agent connection costs one keep-alive exchange per Config.AgentKeepAlivePeriod, so that
// period is long for large fleets (25s by the daemons' flags), and the agent sends the PING:
// kasd's agent listener sends no keep-alives of its own (kasd/cmd/kasd, quic.Config.PeerKeepsAlive;
// docs/scale.md). Silence is judged against it: an
// idle connection is presumed dead only after a period and a margin (silentAfterFor) without a
// packet and probes that went unanswered for half a period, at least probeAfter (idleGraceFor). A connection that a request is using is judged much faster: a live
// agent acknowledges what it receives within its 1 ms max_ack_delay, so one that has carried a
// request (or the probe sent when the request was first seen) and received nothing for
// Config.AgentBusySilence and half as long again (busyGraceFor) is closed, and the request fails
// over to another holder as unacknowledged (route.go).

// defaultBusySilence is Config.AgentBusySilence's default: how long a connection with requests
// in flight may receive nothing before it is probed. A live agent answers within milliseconds;
// this margin is for a host so overloaded that the agent is not scheduled for seconds (the
// -race fault tests on 2 shared cores), and it equals the idle threshold at package quic's 2s
// keep-alive. The kasd command sets 1s (--agent-busy-silence): failover within 2s.
const defaultBusySilence = 3 * time.Second

// busyGraceFor is how long a busy connection, silent for busySilence, may leave its probe
// unanswered before it is closed: half the silence, at most probeAfter (1s).
func busyGraceFor(busySilence time.Duration) time.Duration {
	return min(probeAfter, busySilence/2)
}

// silenceTickFor is how often the sampler looks at the connections that need it: every 500 ms,
// or a quarter of the busy silence when that is shorter, so that a dead busy connection is
// closed within busySilence·1.75 of its requests (2s at 1s: the first look that sees the
// requests probes at once, the verdict waits for the silence and the grace, then for a tick).
func silenceTickFor(busySilence time.Duration) time.Duration {
	return max(min(silenceSample, busySilence/4), 10*time.Millisecond)
}

// liveness is the per-connection state of the silence sampler. silentAfter is set when the
// connection is accepted and never changes; busySince is read and written only by
// Server.sampleSilence's goroutine.
type liveness struct {
	silentAfter time.Duration // idle silence before a probe: silentAfterFor(keep-alive period)
	idleGrace   time.Duration // how long an idle connection may leave probes unanswered: idleGraceFor(period)
	busySilence time.Duration // Config.AgentBusySilence
	busySince   time.Time     // when the sampler first saw requests in flight; zero when idle
	sampledAt   time.Time     // when the connection's packet count was last read
	probedAt    time.Time     // when the sampler last asked for a probe (silenceProbe)
	watch       bool          // the last verdict was not silenceOK: sample at every tick
	idx         int           // index in the sampler's list (silenceSampler)
}

// silentAfterFor is how long an idle connection may receive nothing with keep-alives every
// period: the agent's keep-alive arrives at least once per period plus a round trip (the kasd
// command's agent listener sends none of its own, quic.Config.PeerKeepsAlive; a listener that
// does gets the agent's ACK of its own keep-alive at least as often), so a period and a margin
// (half a period, at most 2s) of silence mean nobody answers. At the 2s default of package
// quic this is 3s, at the daemons' 25s it is 27s.
func silentAfterFor(period time.Duration) time.Duration {
	if period <= 0 {
		period = quic.DefaultKeepAlivePeriod
	}
	return period + min(period/2, 2*time.Second)
}

// idleGraceFor is how long an idle connection, silent past its threshold, may leave kasd's
// probes unanswered before it is closed as dead: half a keep-alive period, at least probeAfter
// (1s at package quic's 2s default, as before; 12.5s at the daemons' 25s, so closed 39.5s after
// its last packet, still well before the 60s idle timeout). Nothing waits on an idle
// connection, so nothing is gained by condemning it fast, and a live agent whose process is
// short of CPU (thousands of agents on one host, a node under pressure) can be a few seconds
// late with its keep-alive and its acknowledgement: at 50,000 simulated agents on 2 shared
// cores a 1s grace closed tens of thousands of live connections in one sampler tick (31.5s
// silent), and their reconnect storm starved the agents further. A connection with requests
// in flight keeps the fast rule (busySilence + probeAfter).
func idleGraceFor(period time.Duration) time.Duration {
	if period <= 0 {
		period = quic.DefaultKeepAlivePeriod
	}
	return max(probeAfter, period/2)
}

// silenceLimit returns the connection's idle silence threshold (silentAfter when unset).
func (c *agentConn) silenceLimit() time.Duration {
	if c.live.silentAfter > 0 {
		return c.live.silentAfter
	}
	return silentAfter
}

// busySilence returns the connection's busy silence (the default when unset).
func (c *agentConn) busySilence() time.Duration {
	if c.live.busySilence > 0 {
		return c.live.busySilence
	}
	return defaultBusySilence
}

// silenceVerdict is what the sampler does with a connection.
type silenceVerdict int

const (
	silenceOK    silenceVerdict = iota
	silenceProbe                // send a probe: a live agent acknowledges it within 1 ms
	silenceWait                 // silent, probed a moment ago: wait for the answer
	silenceDead                 // presumed dead: close it
)

// judgeSilence samples c and decides. Called only by Server.sampleSilence's goroutine. quiet
// is how long the connection has received nothing, counted for a busy connection from when its
// requests were first seen (an idle connection is normally quiet for up to a keep-alive period,
// which says nothing about whether the agent took the request just sent).
//
// An idle connection that looked fine is sampled only about every sixth of its silence threshold
// (every 500 ms at the 2s default keep-alive, every 4.5s at 25s): reading the packet counts of
// 50,000 connections twice a second would cost several percent of a core.
func (c *agentConn) judgeSilence(now time.Time, fresh bool) (v silenceVerdict, quiet time.Duration) {
	// Busy is this connection's own request streams: an agent's other connection, idle while
	// this one carries requests, hears nothing for a keep-alive period and is judged as idle
	// (judged by the agent's count, it was marked quiet with the dead one beside it, so that new
	// requests went to either, and probed every busy silence).
	busy := c.streams.Load() > 0
	limit := c.silenceLimit()
	if !busy && !fresh && !c.live.watch && c.live.busySince.IsZero() && now.Sub(c.live.sampledAt) < limit/6-silenceSample/2 {
		return silenceOK, 0
	}
	defer func() { c.live.watch = v != silenceOK }()
	c.live.sampledAt = now
	quiet = c.sample(now, fresh)
	grace := max(c.live.idleGrace, probeAfter)
	switch {
	case !busy:
		c.live.busySince = time.Time{}
	case c.live.busySince.IsZero() || fresh:
		c.live.busySince = now
		// The request itself elicits an acknowledgement; the probe also covers a request whose
		// packets were all lost.
		return silenceProbe, 0
	default:
		quiet = min(quiet, now.Sub(c.live.busySince))
		limit, grace = min(limit, c.busySilence()), busyGraceFor(c.busySilence())
		c.quietBusy.Store(quiet >= c.busySilence()/4)
	}
	if !busy || quiet == 0 {
		c.quietBusy.Store(false)
	}
	switch {
	case quiet > limit+grace:
		return silenceDead, quiet
	case quiet > limit && now.Sub(c.live.probedAt) < grace/2:
		// Probed within the last half grace (at 25s: two probes in 12.5s; QUIC retransmits a
		// lost one meanwhile): thousands of silent connections must not cost a probe each
		// per 500 ms tick.
		return silenceWait, quiet
	case quiet > limit:
		c.live.probedAt = now
		return silenceProbe, quiet
	}
	return silenceOK, quiet
}
