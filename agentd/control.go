package agentd

import (
	"context"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// sendControl sends a connection-level message (GoAway) to kasd within timeout: on a
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
// restart of the agent) could fail a request. It reports whether kasd was told.
func (c *agentConn) announceLeaving() bool {
	if c.qc.Context().Err() != nil {
		return false
	}
	if err := c.sendControl(&api.GoAway{Reason: "agent leaving this connection"}, time.Second); err != nil {
		return false
	}
	t := time.NewTimer(goAwayLinger)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.qc.Context().Done():
	}
	return true
}
