package kasd

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// streamTransport is the proxy's http.RoundTripper: each request gets a new QUIC stream to the
// agent (see package httpstream). It is not an http.Transport because the typed Result precedes
// the HTTP bytes and a stream is never reused.
type streamTransport struct {
	s *Server
}

// maxOpenAttempts bounds retries when a picked connection dies before the request was sent.
const maxOpenAttempts = 3

func (t *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tgt := req.Context().Value(targetKey{}).(*target)
	ctx := req.Context()
	resp, err := t.roundTrip(ctx, req, tgt)
	if err != nil && req.Body != nil {
		req.Body.Close()
	}
	return resp, err
}

func (t *streamTransport) roundTrip(ctx context.Context, req *http.Request, tgt *target) (*http.Response, error) {
	s := t.s
	frame := &api.Request{
		Kind:      api.KindHTTP,
		Service:   tgt.service,
		RequestID: tgt.requestID,
		Deadline:  tgt.deadline,
		Meta:      tgt.meta,
	}
	for attempt := 0; ; attempt++ {
		c, err := s.route(ctx, tgt)
		if err != nil {
			return nil, err
		}
		e := c.entry
		if e.inflight.Add(1) > int64(s.cfg.MaxInflightPerAgent) {
			e.inflight.Add(-1)
			s.m.limitRejections.WithLabelValues("max_inflight_per_agent").Inc()
			return nil, &api.Error{Code: api.CodeOverloaded, Message: "too many requests in flight to agent " + tgt.agentID, RetryAfter: time.Second}
		}
		st, err := c.qc.OpenStreamSync(ctx)
		if err != nil {
			e.inflight.Add(-1)
			if ctx.Err() == nil && attempt+1 < maxOpenAttempts {
				continue // the connection died after it was picked; nothing was sent yet
			}
			return nil, httpstream.StreamError(err)
		}
		tgt.route = "local"
		s.m.openStreams.Inc()
		resp, err := httpstream.RoundTrip(ctx, quic.NewStreamConn(c.qc, st), frame, req, &httpstream.Options{
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
		return resp, err
	}
}

// route returns a local connection for the target, waiting up to RouteTimeout for the agent.
func (s *Server) route(ctx context.Context, tgt *target) (*agentConn, error) {
	c, ok, err := s.table.pick(tgt.agentID, tgt.service)
	if err != nil {
		return nil, err
	}
	if ok {
		return c, nil
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, s.cfg.RouteTimeout)
	defer cancel()
	for s.table.waitFor(wctx, tgt.agentID) {
		c, ok, err := s.table.pick(tgt.agentID, tgt.service)
		if err != nil {
			return nil, err
		}
		if ok {
			s.m.routeWait.Observe(time.Since(start).Seconds())
			return c, nil
		}
	}
	s.m.routeWait.Observe(time.Since(start).Seconds())
	if ctx.Err() != nil {
		return nil, asAPIError(ctx.Err(), api.CodeAgentNotConnected)
	}
	s.m.limitRejections.WithLabelValues("route_timeout").Inc()
	return nil, &api.Error{Code: api.CodeAgentNotConnected, Message: "agent " + tgt.agentID + " is not connected", RetryAfter: time.Second}
}

// copyBuffers is the ReverseProxy buffer pool.
var copyBuffers = &bytePool{sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bytePool struct{ p sync.Pool }

func (b *bytePool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bytePool) Put(p []byte) { b.p.Put(&p) }
