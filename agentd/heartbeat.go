package agentd

import (
	"time"

	"github.com/qkas/qkas/api"
)

// heartbeatPadding makes the packet that carries a Ping clearly larger than the 42 bytes below
// which quic-go never answers with a stateless reset.
const heartbeatPadding = 64

// heartbeat sends a padded Ping on the control stream every keep-alive period until the
// connection ends or stop is closed. QUIC's own keep-alive PINGs are too small for a restarted
// kasd to answer with a stateless reset, so without this an agent would notice a kasd that
// crashed and came back only at its idle timeout; with it, at the next heartbeat. Owned by the
// agentConn: drain closes stop and waits for it.
func (c *agentConn) heartbeat(stop <-chan struct{}) {
	t := time.NewTicker(c.a.cfg.QUIC.KeepAlivePeriod)
	defer t.Stop()
	ping := &api.Ping{Padding: make([]byte, heartbeatPadding)}
	for {
		select {
		case <-stop:
			return
		case <-c.qc.Context().Done():
			return
		case <-t.C:
		}
		c.ctrlMu.Lock()
		_ = c.control.SetWriteDeadline(time.Now().Add(c.a.cfg.QUIC.KeepAlivePeriod))
		err := api.WriteFrame(c.control, ping)
		c.ctrlMu.Unlock()
		if err != nil {
			return
		}
	}
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
	c.ctrlMu.Lock()
	_ = c.control.SetWriteDeadline(time.Now().Add(time.Second))
	err := api.WriteFrame(c.control, &api.GoAway{Reason: "agent leaving this connection"})
	c.ctrlMu.Unlock()
	if err != nil {
		return
	}
	t := time.NewTimer(goAwayLinger)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.qc.Context().Done():
	}
}
