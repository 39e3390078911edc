package kasd

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// streamTransport is the proxy's http.RoundTripper: each request gets a new QUIC stream to the
// agent (see package httpstream), directly or through the peer that holds the agent. It is not
// an http.Transport because the typed Result precedes the HTTP bytes and a stream is never
// reused.
type streamTransport struct {
	s *Server
}

// maxRouteAttempts bounds how many connections or holders one request tries.
const maxRouteAttempts = 4

func (t *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tgt := req.Context().Value(targetKey{}).(*target)
	ctx := req.Context()
	resp, err := t.roundTrip(ctx, req, tgt)
	if err != nil && req.Body != nil {
		req.Body.Close()
	}
	return resp, err
}

// roundTrip routes the request: to a local connection of the agent if there is one, else to a
// kasd the registry says holds it (one hop), else it waits up to RouteTimeout for either to
// appear, woken by the agent table or the registry watch, never by polling.
func (t *streamTransport) roundTrip(ctx context.Context, req *http.Request, tgt *target) (*http.Response, error) {
	s := t.s
	frame := &api.Request{
		Kind:      api.KindHTTP,
		Service:   tgt.service,
		RequestID: tgt.requestID,
		Deadline:  tgt.deadline,
		Meta:      tgt.meta,
	}
	var (
		deadline time.Time
		tried    map[string]bool // peers that refused or failed this request
		lastErr  error
		attempts int
		waitFrom time.Time
	)
	for attempts < maxRouteAttempts {
		// Take the change channels before looking, so that no change between the look and
		// the wait is missed.
		tableChanged := s.table.waitChange()
		var fleetChanged <-chan struct{}
		if s.fleet != nil {
			fleetChanged = s.fleet.reg.Changed()
		}

		c, ok, err := s.table.pick(tgt.agentID, tgt.service)
		if err != nil {
			return nil, err
		}
		if ok {
			s.observeWait(waitFrom)
			attempts++
			resp, err, retry := t.local(ctx, c, frame, req, tgt)
			if retry {
				lastErr = err
				continue
			}
			return resp, err
		}
		if s.fleet != nil {
			if hs := s.fleet.holders(tgt.agentID, tried, s.reqSeq.Load()); len(hs) > 0 {
				s.observeWait(waitFrom)
				attempts++
				h := hs[0]
				tgt.route = "forwarded"
				resp, err := s.fleet.forward(ctx, h, frame, req, tgt)
				s.m.forwarded.WithLabelValues(s.m.peerLabel(h.ID), resultLabel(err)).Inc()
				if err != nil && retryForward(ctx, err, req) {
					if tried == nil {
						tried = map[string]bool{}
					}
					tried[h.ID] = true
					lastErr = err
					continue
				}
				return resp, err
			}
		}
		// Nobody (left to try) holds the agent: wait for the table or the registry to change.
		if deadline.IsZero() {
			deadline = time.Now().Add(s.cfg.RouteTimeout)
			waitFrom = time.Now()
		}
		timer := time.NewTimer(time.Until(deadline))
		select {
		case <-tableChanged:
		case <-fleetChanged:
		case <-ctx.Done():
		case <-timer.C:
		}
		timer.Stop()
		if ctx.Err() != nil {
			return nil, asAPIError(ctx.Err(), api.CodeAgentNotConnected)
		}
		if !time.Now().Before(deadline) {
			break
		}
	}
	s.observeWait(waitFrom)
	if lastErr != nil {
		return nil, lastErr
	}
	s.m.limitRejections.WithLabelValues("route_timeout").Inc()
	return nil, &api.Error{Code: api.CodeAgentNotConnected, Message: "agent " + tgt.agentID + " is not connected", RetryAfter: time.Second}
}

// local sends the request on a local agent connection. retry is true when nothing was sent
// (the connection died after it was picked).
func (t *streamTransport) local(ctx context.Context, c *agentConn, frame *api.Request, req *http.Request, tgt *target) (resp *http.Response, err error, retry bool) {
	s := t.s
	e := c.entry
	if e.inflight.Add(1) > int64(s.cfg.MaxInflightPerAgent) {
		e.inflight.Add(-1)
		s.m.limitRejections.WithLabelValues("max_inflight_per_agent").Inc()
		return nil, &api.Error{Code: api.CodeOverloaded, Message: "too many requests in flight to agent " + tgt.agentID, RetryAfter: time.Second}, false
	}
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		e.inflight.Add(-1)
		return nil, httpstream.StreamError(err), ctx.Err() == nil
	}
	tgt.route = "local"
	s.m.openStreams.Inc()
	resp, err = httpstream.RoundTrip(ctx, quic.NewStreamConn(c.qc, st), frame, req, &httpstream.Options{
		ResponseHeaderTimeout: s.cfg.ResponseHeaderTimeout,
		Go:                    s.goOwned,
		Done: func(clean bool, sent, recv int64) {
			e.inflight.Add(-1)
			s.m.streamDone(sent, recv)
		},
	})
	if err != nil && ctx.Err() == nil && api.CodeOf(err) == api.CodeDeadlineExceeded {
		s.m.limitRejections.WithLabelValues("response_header_timeout").Inc()
	}
	return resp, err, false
}

// retryForward reports whether a failed forward may be tried on the next holder: only when the
// request provably did not reach an agent — the peer refused it before reading the body (stale
// route, draining) or could not be reached at all. A request that was sent and then lost with
// its peer fails with agent_failed (502): it may have been executed, so it is not repeated.
func retryForward(ctx context.Context, err error, _ *http.Request) bool {
	if ctx.Err() != nil {
		return false
	}
	var re *httpstream.RefusedError
	if errors.As(err, &re) {
		return re.BodyUnread && (re.Err.Code == api.CodeNotHolder || re.Err.Code == api.CodeShuttingDown)
	}
	return errors.Is(err, errPeerUnavailable)
}

func resultLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return api.CodeOf(err).String()
}

func (s *Server) observeWait(from time.Time) {
	if !from.IsZero() {
		s.m.routeWait.Observe(time.Since(from).Seconds())
	}
}

// copyBuffers is the ReverseProxy buffer pool.
var copyBuffers = &bytePool{sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bytePool struct{ p sync.Pool }

func (b *bytePool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bytePool) Put(p []byte) { b.p.Put(&p) }
