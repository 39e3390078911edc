package kasd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// streamTransport is the proxy's http.RoundTripper: each request gets a new QUIC stream to the
// agent, a Request frame, then the HTTP/1.1 request written by net/http; the agent's Result frame
// comes back before the HTTP response, which net/http parses. It is not an http.Transport because
// the typed Result precedes the HTTP bytes and a stream is never reused.
type streamTransport struct {
	s *Server
}

// maxOpenAttempts bounds retries when a picked connection dies before the request was sent.
const maxOpenAttempts = 3

func (t *streamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tgt := req.Context().Value(targetKey{}).(*target)
	ctx := req.Context()
	hasBody := req.Body != nil && req.Body != http.NoBody
	resp, err := t.roundTrip(ctx, req, tgt, hasBody)
	if err != nil && hasBody {
		req.Body.Close()
	}
	return resp, err
}

func (t *streamTransport) roundTrip(ctx context.Context, req *http.Request, tgt *target, hasBody bool) (*http.Response, error) {
	s := t.s
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
			return nil, streamError(err)
		}
		tgt.route = "local"
		rt := &roundTrip{
			s:    s,
			sc:   quic.NewStreamConn(c.qc, st),
			ctx:  ctx,
			done: func() { e.inflight.Add(-1) },
		}
		return rt.run(req, tgt, hasBody)
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

// roundTrip is one request on one stream. Its lifetime ends in finish, called exactly once: on
// an error before the response, or when the response body is closed or fully read.
type roundTrip struct {
	s    *Server
	sc   *quic.StreamConn
	ctx  context.Context
	done func()

	timedOut   atomic.Bool
	stopCancel func() bool // stops the context.AfterFunc that aborts the stream
	finished   atomic.Bool
	sent, recv atomic.Int64
}

func (rt *roundTrip) run(req *http.Request, tgt *target, hasBody bool) (*http.Response, error) {
	s := rt.s
	s.m.openStreams.Inc()
	rt.stopCancel = context.AfterFunc(rt.ctx, func() { rt.sc.Abort(quic.StreamCodeCanceled) })
	headerTimer := time.AfterFunc(s.cfg.ResponseHeaderTimeout, func() {
		rt.timedOut.Store(true)
		rt.sc.Abort(quic.StreamCodeCanceled)
	})
	defer headerTimer.Stop()

	upgrade := isUpgrade(req)
	out := *req // shallow copy: RoundTrip must not modify req
	// One request per stream: the agent's http.Server closes the stream after the response.
	// An upgrade keeps the stream for the upgraded protocol instead.
	out.Close = !upgrade
	w := &streamWriter{sc: rt.sc}
	w.buf = api.AppendFrame(getBuf(), &api.Request{
		Kind:      api.KindHTTP,
		Service:   tgt.service,
		RequestID: tgt.requestID,
		Deadline:  tgt.deadline,
		Meta:      tgt.meta,
	})
	if !hasBody {
		out.Body = nil
		err := out.Write(w)
		if err == nil {
			err = w.Flush()
		}
		putBuf(w.buf)
		if err != nil {
			return nil, rt.fail(err)
		}
	} else {
		out.Body = &flushingBody{rc: req.Body, w: w, n: &rt.sent}
		if !s.goOwned(func() {
			err := out.Write(w)
			if err == nil {
				err = w.Flush()
			}
			if err != nil {
				rt.sc.Abort(quic.StreamCodeCanceled)
			}
		}) {
			return nil, rt.fail(api.Errorf(api.CodeShuttingDown, "kasd is closing"))
		}
	}

	br := bufio.NewReaderSize(rt.sc, 4096)
	m, err := api.ReadExpect(br, api.TypeResult)
	if err != nil {
		return nil, rt.fail(err)
	}
	if err := m.(*api.Result).Err(); err != nil {
		rt.finish(false)
		return nil, err
	}
	resp, err := readResponse(br, req)
	if err != nil {
		return nil, rt.fail(err)
	}
	headerTimer.Stop()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgradedBody{br: br, rt: rt}
		return resp, nil
	}
	resp.Body = &responseBody{rc: resp.Body, rt: rt}
	return resp, nil
}

// readResponse reads the final response, skipping informational (1xx) ones other than 101.
func readResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
	}
}

// fail ends the round trip with err mapped to a typed error.
func (rt *roundTrip) fail(err error) error {
	rt.finish(false)
	switch {
	case rt.timedOut.Load():
		rt.s.m.limitRejections.WithLabelValues("response_header_timeout").Inc()
		return api.Errorf(api.CodeDeadlineExceeded, "no response header from the agent within %s", rt.s.cfg.ResponseHeaderTimeout)
	case errors.Is(rt.ctx.Err(), context.DeadlineExceeded):
		return api.Errorf(api.CodeDeadlineExceeded, "request deadline exceeded")
	case rt.ctx.Err() != nil:
		return &api.Error{Code: api.CodeAgentFailed, Message: "request canceled", Err: rt.ctx.Err()}
	}
	return streamError(err)
}

// finish releases the stream: a cleanly completed exchange closes it, anything else resets it.
func (rt *roundTrip) finish(clean bool) {
	if rt.finished.Swap(true) {
		return
	}
	rt.stopCancel()
	if clean {
		_ = rt.sc.Close()
	} else {
		rt.sc.Abort(quic.StreamCodeCanceled)
	}
	rt.done()
	m := rt.s.m
	m.openStreams.Dec()
	m.bytes.WithLabelValues("request").Add(float64(rt.sent.Load()))
	m.bytes.WithLabelValues("response").Add(float64(rt.recv.Load()))
}

// responseBody is the proxied response body; it ends the round trip when read to EOF or closed.
type responseBody struct {
	rc io.ReadCloser
	rt *roundTrip
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.rt.recv.Add(int64(n))
	if err == io.EOF {
		b.rt.finish(true)
	} else if err != nil {
		err = b.rt.fail(err)
	}
	return n, err
}

func (b *responseBody) Close() error {
	b.rt.finish(false)
	return nil
}

// upgradedBody is the agent side of an upgraded (101) connection, as ReverseProxy expects: an
// io.ReadWriteCloser over the stream.
type upgradedBody struct {
	br *bufio.Reader
	rt *roundTrip
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	n, err := b.br.Read(p)
	b.rt.recv.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	n, err := b.rt.sc.Write(p)
	b.rt.sent.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Close() error {
	b.rt.finish(true)
	return nil
}

func isUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return r.Header.Get("Upgrade") != ""
			}
		}
	}
	return false
}

// streamWriter buffers the small writes net/http makes for the request line and headers so that
// a request without a body leaves in one stream write; large writes go straight to the stream.
type streamWriter struct {
	sc  *quic.StreamConn
	buf []byte
}

const streamWriterMax = 16 << 10

func (w *streamWriter) Write(p []byte) (int, error) {
	if len(w.buf)+len(p) <= streamWriterMax {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return w.sc.Write(p)
}

// WriteByte makes streamWriter an io.ByteWriter, so (*http.Request).Write does not add its own
// bufio.Writer.
func (w *streamWriter) WriteByte(c byte) error {
	_, err := w.Write([]byte{c})
	return err
}

func (w *streamWriter) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.sc.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}

// flushingBody is the request body as (*http.Request).Write reads it: before each read it flushes
// what was written so far, so headers and body chunks reach the agent without waiting for a
// buffer to fill.
type flushingBody struct {
	rc io.ReadCloser
	w  *streamWriter
	n  *atomic.Int64
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if err := b.w.Flush(); err != nil {
		return 0, err
	}
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *flushingBody) Close() error { return b.rc.Close() }

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() []byte { return (*bufPool.Get().(*[]byte))[:0] }

func putBuf(b []byte) {
	if cap(b) <= 64<<10 {
		bufPool.Put(&b)
	}
}

// copyBuffers is the ReverseProxy buffer pool.
var copyBuffers = &bytePool{sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}

type bytePool struct{ p sync.Pool }

func (b *bytePool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bytePool) Put(p []byte) { b.p.Put(&p) }
