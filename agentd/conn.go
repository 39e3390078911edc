package agentd

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// agentConn is one established connection to a kasd instance.
type agentConn struct {
	a       *Agent
	qc      *quicgo.Conn
	control *quicgo.Stream
	welcome *api.Welcome
	log     zerolog.Logger

	srv       *http.Server
	ln        *streamListener
	serveDone chan struct{} // closed when srv.Serve has returned
	ctrlDone  chan struct{} // closed when the control reader has returned
	goAway    chan struct{} // closed when kasd sent GoAway
}

// startConn starts the connection's http.Server and control reader. Both goroutines are owned by
// the agentConn: drain waits for them.
func (a *Agent) startConn(qc *quicgo.Conn, control *quicgo.Stream, w *api.Welcome) *agentConn {
	c := &agentConn{
		a:         a,
		qc:        qc,
		control:   control,
		welcome:   w,
		log:       a.log.With().Str("agent_id", w.AgentID).Str("connection_id", w.ConnectionID).Str("kas_instance", w.InstanceID).Logger(),
		serveDone: make(chan struct{}),
		ctrlDone:  make(chan struct{}),
		goAway:    make(chan struct{}),
	}
	lnCtx, cancel := context.WithCancel(qc.Context())
	c.ln = &streamListener{c: c, ctx: lnCtx, cancel: cancel}
	c.srv = &http.Server{
		Handler:           http.HandlerFunc(a.serveStream),
		ReadHeaderTimeout: a.cfg.RequestHeaderTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          log.New(logWriter{c.log}, "", 0),
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return context.WithValue(ctx, streamKey{}, nc.(*stream))
		},
		ConnState: func(nc net.Conn, state http.ConnState) {
			switch state {
			case http.StateNew:
				a.m.openStreams.Inc()
			case http.StateHijacked, http.StateClosed:
				a.m.openStreams.Dec()
			}
		},
	}
	go func() {
		defer close(c.serveDone)
		_ = c.srv.Serve(c.ln)
	}()
	go func() {
		defer close(c.ctrlDone)
		c.readControl()
	}()
	c.log.Info().Msg("connected to kasd")
	return c
}

// readControl reads connection-level messages until the control stream or connection ends.
func (c *agentConn) readControl() {
	for {
		m, err := api.ReadFrame(c.control)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *api.GoAway:
			c.a.m.goAways.Inc()
			c.log.Info().Str("reason", m.Reason).Msg("kasd sent GoAway")
			close(c.goAway)
			return
		default:
			// Unknown connection-level messages are ignored: kasd may be newer than us.
		}
	}
}

// wait blocks until the connection should be replaced and says why.
func (c *agentConn) wait(ctx context.Context) string {
	select {
	case <-ctx.Done():
		return "shutdown"
	case <-c.goAway:
		return "goaway"
	case <-c.qc.Context().Done():
		return "lost: " + context.Cause(c.qc.Context()).Error()
	}
}

// drain stops accepting streams, lets in-flight requests finish within DrainTimeout, closes the
// connection and waits for the connection's goroutines.
func (c *agentConn) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), c.a.cfg.DrainTimeout)
	defer cancel()
	if err := c.srv.Shutdown(ctx); err != nil {
		_ = c.srv.Close()
	}
	_ = c.qc.CloseWithError(quic.ConnCodeNoError, "agent closing")
	<-c.serveDone
	<-c.ctrlDone
}

// streamListener yields the connection's accepted streams to the http.Server.
type streamListener struct {
	c      *agentConn
	ctx    context.Context
	cancel context.CancelFunc
}

func (l *streamListener) Accept() (net.Conn, error) {
	st, err := l.c.qc.AcceptStream(l.ctx)
	if err != nil {
		return nil, net.ErrClosed
	}
	return &stream{StreamConn: quic.NewStreamConn(l.c.qc, st), c: l.c}, nil
}

func (l *streamListener) Close() error   { l.cancel(); return nil }
func (l *streamListener) Addr() net.Addr { return l.c.qc.LocalAddr() }

type streamKey struct{}

// stream is one accepted request stream. Its first Read consumes and checks the Request frame and
// answers the Result before the http.Server sees any HTTP bytes.
type stream struct {
	*quic.StreamConn
	c *agentConn

	// Set by the first Read, which is made by the http.Server's goroutine for this stream before
	// the handler runs; read only by that handler afterwards.
	started bool
	req     *api.Request
	svc     *service
}

func (s *stream) Read(p []byte) (int, error) {
	if !s.started {
		s.started = true
		if err := s.accept(); err != nil {
			return 0, io.EOF
		}
	}
	return s.StreamConn.Read(p)
}

// accept reads the Request frame (bounded by the read deadline the http.Server set from
// ReadHeaderTimeout) and answers OK or a typed refusal.
func (s *stream) accept() error {
	a := s.c.a
	m, err := api.ReadExpect(s.StreamConn, api.TypeRequest)
	if err != nil {
		a.m.rejections.WithLabelValues("bad_preamble").Inc()
		s.c.log.Debug().Err(err).Msg("bad request preamble")
		s.refuse(api.CodeOf(err), err.Error())
		return err
	}
	req := m.(*api.Request)
	var refusal *api.Error
	switch svc := a.services[req.Service]; {
	case req.Kind != api.KindHTTP:
		refusal = api.Errorf(api.CodeProtocol, "request kind %d is not served by agents", req.Kind)
	case svc == nil:
		refusal = api.Errorf(api.CodeServiceUnknown, "service %q is not offered by this agent", req.Service)
	case !req.Deadline.IsZero() && !time.Now().Before(req.Deadline):
		refusal = api.Errorf(api.CodeDeadlineExceeded, "deadline passed before the agent received the request")
	default:
		s.req, s.svc = req, svc
	}
	if refusal != nil {
		a.m.rejections.WithLabelValues(refusal.Code.String()).Inc()
		s.refuse(refusal.Code, refusal.Message)
		return refusal
	}
	return api.WriteFrame(s.StreamConn, &api.Result{Code: api.CodeOK})
}

func (s *stream) refuse(code api.Code, msg string) {
	if code == api.CodeInternal {
		code = api.CodeProtocol
	}
	_ = api.WriteFrame(s.StreamConn, &api.Result{Code: code, Message: msg})
	_ = s.StreamConn.Close()
}

// serveStream is the http.Server handler: one proxied request.
func (a *Agent) serveStream(w http.ResponseWriter, r *http.Request) {
	s, _ := r.Context().Value(streamKey{}).(*stream)
	if s == nil || s.svc == nil {
		api.WriteHTTPError(w, api.Errorf(api.CodeInternal, "stream without an accepted request"))
		return
	}
	start := time.Now()
	if !s.req.Deadline.IsZero() {
		ctx, cancel := context.WithDeadline(r.Context(), s.req.Deadline)
		defer cancel()
		r = r.WithContext(ctx)
	}
	rec := &statusRecorder{ResponseWriter: w}
	s.svc.serve(rec, r, s.req)
	a.m.observe(s.svc.name, rec.status(), time.Since(start))
}

// statusRecorder remembers the response status. Unwrap keeps Flush and Hijack reachable through
// http.ResponseController, which ReverseProxy uses.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// logWriter sends net/http's internal log lines to zerolog at debug level.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(string(p))
	return len(p), nil
}

