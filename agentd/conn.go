package agentd

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
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
	ln        *httpstream.Listener
	ctrlMu    sync.Mutex    // serialises writes on control (heartbeats)
	hbStop    chan struct{} // closed by drain to stop the heartbeat
	hbDone    chan struct{} // closed when the heartbeat has returned
	serveDone chan struct{} // closed when srv.Serve has returned
	ctrlDone  chan struct{} // closed when the control reader has returned
	goAway    chan struct{} // closed when kasd sent GoAway

	// Handlers are tracked because http.Server.Shutdown does not wait for upgraded (hijacked)
	// streams; drain does.
	hmu      sync.Mutex     // guards hclosed
	hclosed  bool           // set by drain: no handler starts afterwards
	handlers sync.WaitGroup // running serveStream calls
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
	c.ln = httpstream.NewListener(qc, a.checkRequest, c)
	c.srv = &http.Server{
		Handler:           http.HandlerFunc(c.serveTracked),
		ReadHeaderTimeout: a.cfg.RequestHeaderTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          log.New(logWriter{c.log}, "", 0),
		ConnContext:       httpstream.ConnContext,
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
	c.hbStop, c.hbDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.hbDone)
		c.heartbeat(c.hbStop)
	}()
	c.log.Info().Msg("connected to kasd")
	return c
}

// readControl reads connection-level messages until the control stream or connection ends.
func (c *agentConn) readControl() {
	for {
		m, err := api.ReadFrame(c.control)
		if errors.Is(err, api.ErrUnknownFrameType) {
			continue // a newer kasd's message; ReadFrame consumed it
		}
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
	c.announceLeaving()
	if err := c.srv.Shutdown(ctx); err != nil {
		_ = c.srv.Close()
	}
	// Shutdown does not wait for upgraded streams: they get the rest of DrainTimeout, then
	// closing the connection ends them, and their handlers are waited for.
	handlersDone := c.stopHandlers()
	select {
	case <-handlersDone:
	case <-ctx.Done():
	}
	_ = c.qc.CloseWithError(quic.ConnCodeNoError, "agent closing")
	<-handlersDone
	close(c.hbStop)
	<-c.hbDone
	<-c.serveDone
	<-c.ctrlDone
}

// serveTracked runs serveStream as a handler that drain waits for.
func (c *agentConn) serveTracked(w http.ResponseWriter, r *http.Request) {
	c.hmu.Lock()
	if c.hclosed {
		c.hmu.Unlock()
		api.WriteHTTPError(w, api.Errorf(api.CodeShuttingDown, "the agent is closing this connection"))
		return
	}
	c.handlers.Add(1)
	c.hmu.Unlock()
	defer c.handlers.Done()
	c.a.serveStream(w, r)
}

// stopHandlers stops new handlers and returns a channel closed once the running ones have
// returned. The goroutine that closes it is drain's, which waits for the channel.
func (c *agentConn) stopHandlers() <-chan struct{} {
	c.hmu.Lock()
	c.hclosed = true
	c.hmu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.handlers.Wait()
	}()
	return done
}

// checkRequest vets a stream's Request frame before any HTTP is read.
func (a *Agent) checkRequest(req *api.Request) *api.Error {
	var refusal *api.Error
	switch {
	case req.Kind != api.KindHTTP:
		refusal = api.Errorf(api.CodeProtocol, "request kind %s is not served by agents", req.Kind)
	case a.services[req.Service] == nil:
		refusal = api.Errorf(api.CodeServiceUnknown, "service %q is not offered by this agent", req.Service)
	case !req.Deadline.IsZero() && !time.Now().Before(req.Deadline):
		refusal = api.Errorf(api.CodeDeadlineExceeded, "deadline passed before the agent received the request")
	}
	if refusal != nil {
		a.m.rejections.WithLabelValues(refusal.Code.String()).Inc()
	}
	return refusal
}

// serveStream is the http.Server handler: one proxied request.
func (a *Agent) serveStream(w http.ResponseWriter, r *http.Request) {
	sc := httpstream.FromContext(r.Context())
	var req *api.Request
	if sc != nil {
		req = sc.Request()
	}
	if req == nil {
		api.WriteHTTPError(w, api.Errorf(api.CodeInternal, "stream without an accepted request"))
		return
	}
	svc := a.services[req.Service]
	start := time.Now()
	if !req.Deadline.IsZero() {
		ctx, cancel := context.WithDeadline(r.Context(), req.Deadline)
		defer cancel()
		r = r.WithContext(ctx)
	}
	rec := &httpstream.StatusRecorder{ResponseWriter: w}
	stripCredentials(r.Header)
	svc.handler.ServeService(rec, r, req)
	a.m.observe(req.Service, rec.Status(), time.Since(start))
}

// logWriter sends net/http's internal log lines to zerolog at debug level.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(string(p))
	return len(p), nil
}
