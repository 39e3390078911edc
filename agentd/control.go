package agentd

import (
	"context"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// heartbeatPadding makes the packet that carries a Ping clearly larger than the 42 bytes below
// which quic-go never answers with a stateless reset.
const heartbeatPadding = 64

// heartbeat probes a silent connection with a padded Ping on the control stream. QUIC's own
// keep-alive PINGs are too small for a restarted kasd to answer with a stateless reset (quic-go
// answers only packets over 42 bytes), so without a probe an agent would notice a kasd that
// crashed and came back only at its idle timeout. A live kasd answers every keep-alive (with
// an ACK at least), so the probe is sent only when nothing at all was received for a keep-alive
// period and a margin (half a period, at most 2s: 27s with agentd's --keep-alive-period of 25s,
// before its 60s idle timeout; 3s with package quic's 2s default): it costs nothing in steady
// state, which matters with tens of thousands of idle agents per kasd. Owned by the agentConn:
// drain closes stop and waits for it.
func (c *agentConn) heartbeat(stop <-chan struct{}) {
	period := c.a.cfg.QUIC.KeepAlivePeriod
	// A live kasd's keep-alive, or its ACK of ours, arrives at most a period and a round trip
	// after the previous packet; more silence than that means nobody is answering.
	window := period + min(period/2, 2*time.Second)
	// Look often enough that the silence is measured within a second or two, rarely enough that
	// an idle connection costs nothing: 2s at 25s, 500 ms at 2s.
	t := time.NewTicker(max(min(period/4, 2*time.Second), 100*time.Millisecond))
	defer t.Stop()
	ping := &api.Ping{Padding: make([]byte, heartbeatPadding)}
	last, lastChange := c.qc.ConnectionStats().PacketsReceived, time.Now()
	for {
		select {
		case <-stop:
			return
		case <-c.qc.Context().Done():
			return
		case <-t.C:
		}
		if received := c.qc.ConnectionStats().PacketsReceived; received != last {
			last, lastChange = received, time.Now()
			continue
		}
		if time.Since(lastChange) < window {
			continue
		}
		lastChange = time.Now() // at most one probe per window while silent
		c.a.m.probes.Inc()
		if err := c.sendControl(ping, period); err != nil {
			return
		}
	}
}

// sendControl sends a connection-level message (Ping, GoAway) to kasd within timeout: on a
// stream of its own, the frame and FIN, when kasd agreed to api.FeatureControlOnStreams in
// Welcome (kasd then does not read the control stream, which saves it a goroutine per idle
// connection); on the control stream otherwise.
func (c *agentConn) sendControl(m api.Message, timeout time.Duration) error {
	if c.welcome.Features&api.FeatureControlOnStreams == 0 {
		c.ctrlMu.Lock()
		defer c.ctrlMu.Unlock()
		_ = c.control.SetWriteDeadline(time.Now().Add(timeout))
		return api.WriteFrame(c.control, m)
	}
	ctx, cancel := context.WithTimeout(c.qc.Context(), timeout)
	defer cancel()
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	st.CancelRead(quic.StreamCodeNoError) // kasd answers nothing
	_ = st.SetWriteDeadline(time.Now().Add(timeout))
	if err := api.WriteFrame(st, m); err != nil {
		st.CancelWrite(quic.StreamCodeCanceled)
		return err
	}
	return st.Close()
}

// goAwayLinger is how long a leaving connection keeps accepting streams after telling kasd
// it leaves: requests kasd routed before the GoAway reached it still arrive and are served.
const goAwayLinger = 250 * time.Millisecond

// announceLeaving tells kasd that this connection is going away, so that kasd stops routing new
// requests to it, and keeps accepting streams a moment longer for the requests already on their
// way. Without it, closing a connection kasd still routes to (a duplicate instance, a rolling
// restart of the agent) could fail a request.
func (c *agentConn) announceLeaving() {
	if c.qc.Context().Err() != nil {
		return
	}
	if err := c.sendControl(&api.GoAway{Reason: "agent leaving this connection"}, time.Second); err != nil {
		return
	}
	t := time.NewTimer(goAwayLinger)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.qc.Context().Done():
	}
}
