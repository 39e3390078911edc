package agentd

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/quic"
)

// agentConn is one established connection to a kasd instance.
type agentConn struct {
	a       *Agent
	qc      *quicgo.Conn
	control *quicgo.Stream
	welcome *api.Welcome
	log     zerolog.Logger
	// announced is the service set sent in Hello; set by connect before the slot sees c.
	announced *serviceSet

	ctx        context.Context // ends when the connection ends or drain stops accepting
	stop       context.CancelFunc
	ctrlMu     sync.Mutex    // serialises writes on control (GoAway)
	acceptDone chan struct{} // closed when the accept loop has returned
	ctrlDone   chan struct{} // closed when the control reader has returned
	goAway     chan struct{} // closed when kasd sent GoAway
	goAwayMsg  *api.GoAway   // the GoAway kasd sent; set before goAway is closed
	// quicBack is closed when this TCP connection should move back to QUIC (transport.go);
	// nil for QUIC connections. Set by connect before the slot sees c.
	quicBack <-chan struct{}

	hmu      sync.Mutex     // guards hclosed, oclosed and outbound
	hclosed  bool           // set by drain: streams that arrive later are refused
	handlers sync.WaitGroup // running serveStream calls
	served   bool           // a serveStream call started on c (under hmu)
	// outbound counts the GitLab requests on streams this agent opened on c whose response
	// has not been read to its end (or closed); oclosed, set by drain, sends later ones to
	// another connection, and outboundDone is closed once it is set and outbound is 0.
	oclosed      bool
	outbound     int
	outboundDone chan struct{}
}

// startOutbound counts a GitLab request about to open a stream on c; false once c drains.
func (c *agentConn) startOutbound() bool {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if c.oclosed {
		return false
	}
	c.outbound++
	return true
}

// draining says whether drain has begun: GitLab requests go to another connection.
func (c *agentConn) draining() bool {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	return c.oclosed
}

// endOutbound ends what startOutbound counted: the request failed, or its response was read
// to the end or closed.
func (c *agentConn) endOutbound() {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	c.outbound--
	if c.outbound == 0 && c.oclosed {
		close(c.outboundDone)
	}
}

// closeOutbound stops new GitLab requests on c and returns a channel closed once those in
// flight are done.
func (c *agentConn) closeOutbound() <-chan struct{} {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if !c.oclosed {
		c.oclosed = true
		if c.outbound == 0 {
			close(c.outboundDone)
		}
	}
	return c.outboundDone
}

// startConn starts the connection's accept loop and control reader. Both goroutines, and one
// per stream, are owned by the agentConn: drain waits for them. There is no heartbeat: a kasd
// that crashed and restarted answers the connection's next keep-alive PING with a stateless
// reset (quic-go patch change 12 pads it to the size a reset answers), and a kasd that is gone
// is noticed at the idle timeout.
func (a *Agent) startConn(qc *quicgo.Conn, control *quicgo.Stream, w *api.Welcome) *agentConn {
	c := &agentConn{
		a:          a,
		qc:         qc,
		control:    control,
		welcome:    w,
		log:        a.log.With().Str("agent_id", w.AgentID).Str("connection_id", w.ConnectionID).Str("kas_instance", w.InstanceID).Str("transport", transportOf(qc)).Logger(),
		acceptDone: make(chan struct{}),
		ctrlDone:   make(chan struct{}),
		goAway:     make(chan struct{}),

		outboundDone: make(chan struct{}),
	}
	c.ctx, c.stop = context.WithCancel(qc.Context())
	go func() {
		defer close(c.acceptDone)
		c.acceptStreams()
	}()
	go func() {
		defer close(c.ctrlDone)
		c.readControl()
	}()
	resumed := qc.ConnectionState().TLS.DidResume
	if resumed {
		a.m.tlsResumptions.Inc()
	}
	c.log.Info().Bool("tls_resumed", resumed).Msg("connected to kasd")
	return c
}

// acceptStreams serves every stream kasd opens, one goroutine each, until the connection ends
// or drain stops it.
func (c *agentConn) acceptStreams() {
	for {
		st, err := c.qc.AcceptStream(c.ctx)
		if err != nil {
			return
		}
		sc := quic.NewStreamConn(c.qc, st)
		c.hmu.Lock()
		if c.hclosed {
			c.hmu.Unlock()
			// Not processed: kasd sends it to another connection of this agent.
			sc.Abort(quic.StreamCodeRefused)
			continue
		}
		c.handlers.Add(1)
		c.served = true
		c.hmu.Unlock()
		go func() {
			defer c.handlers.Done()
			c.a.serveStream(c.ctx, sc)
		}()
	}
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
			c.log.Info().Str("reason", m.Reason).Str("prefer", m.Prefer).Msg("kasd sent GoAway")
			c.goAwayMsg = m
			close(c.goAway)
			return
		default:
			// Unknown connection-level messages are ignored: kasd may be newer than us.
		}
	}
}

// wait blocks until the connection should be replaced and says why: "reload" once reload is
// closed (the services changed since c announced them; reload.go), or once QUIC works again
// while c is on TCP: both are a make-before-break re-dial (transport.go). With reload nil the
// caller cannot re-dial, so neither is waited for.
func (c *agentConn) wait(ctx context.Context, reload <-chan struct{}) string {
	var back <-chan struct{}
	if reload != nil {
		back = c.quicBack
	}
	select {
	case <-back:
		return "reload"
	case <-ctx.Done():
		return "shutdown"
	case <-c.goAway:
		return "goaway"
	case <-c.qc.Context().Done():
		return "lost: " + context.Cause(c.qc.Context()).Error()
	case <-reload:
		return "reload"
	}
}

// drainCloseWait bounds how long a drained connection whose requests are done waits for kasd
// to close it when no response can be lost (kasd opened no stream on it), or when kasd was not
// told that the agent leaves (the GoAway could not be sent). Otherwise kasd closes the
// connection when it has read every response on it, and the agent waits for that within the
// drain's bound: the end of a response may wait unread in kasd's receive buffer for as long as
// its client takes to read what came before (a slow client, a loaded machine), and closing
// would discard it. A 1 s bound for that cut a 4 MiB response to a slow client
// (TestFleetDrainWaitsForSlowClientOfPeer). A kasd older than agentLeft does not close: the
// drain then lasts its bound.
const drainCloseWait = time.Second

// drain lets the GitLab requests in flight on c finish, then stops accepting streams, lets
// kasd's in-flight requests (upgraded ones included) finish, all within DrainTimeout (a
// draining kasd's GoAway: drainForKasd), closes the connection and waits for the connection's
// goroutines.
//
// The GitLab requests come first because kasd closes a connection the agent said it leaves
// once kasd's own requests on it are done: only the agent knows when it has read a module
// response to its end, so it says it leaves only then. Until then c serves kasd as before (a
// replacement connection, if any, serves it too).
func (c *agentConn) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), c.a.cfg.DrainTimeout)
	defer cancel()
	c.drainWithin(ctx, false)
}

// drainForKasd drains a connection whose kasd sent GoAway because it drains (no Prefer), or
// asked it to move for balance (once the replacement is up): a draining kasd serves its
// in-flight requests to their end within its own grace (its --shutdown-grace and the context
// of its Shutdown), then closes the connection itself; after a move, kasd closes it once its
// requests on it are done (the agent said it leaves), and nothing needs it gone before. So the requests here run
// until they are done or kasd closes the connection, not for DrainTimeout: a stream longer
// than that (a slow download on a loaded machine, a watch) would be cut under a kasd still
// waiting for it, and its client would get a 200 with a truncated body. DrainTimeout bounds
// the wait only once this agent stops too (run ended: SIGTERM): from then on, as for any
// other drain.
func (c *agentConn) drainForKasd(run context.Context) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var timer atomic.Pointer[time.Timer]
	stopAfter := context.AfterFunc(run, func() { timer.Store(time.AfterFunc(c.a.cfg.DrainTimeout, cancel)) })
	defer func() {
		stopAfter()
		if t := timer.Load(); t != nil {
			t.Stop()
		}
	}()
	c.drainWithin(ctx, true)
}

// drainWithin is drain bounded by ctx. forKasd (drainForKasd) waits for kasd's close after the
// handlers returned as it waits for the handlers: until ctx ends, which is DrainTimeout after
// this agent stops.
func (c *agentConn) drainWithin(ctx context.Context, forKasd bool) {
	select {
	case <-c.closeOutbound():
	case <-ctx.Done():
	case <-c.qc.Context().Done():
	}
	told := c.announceLeaving()
	c.hmu.Lock()
	c.hclosed = true
	served := c.served
	c.hmu.Unlock()
	handlersDone := make(chan struct{})
	go func() { // owned by drain, which waits for it below
		defer close(handlersDone)
		c.handlers.Wait()
	}()
	select {
	case <-handlersDone:
		// Every handler returned, but the end of a response may still sit in the send
		// buffer, or unread in kasd's receive buffer, which closing now would discard. kasd
		// closes the connection once it has read every response on it (it knows the
		// connection is leaving); wait for that, within the drain's bound.
		wait := drainCloseWait
		if told && served {
			// kasd closes it once it has read every response; one that does not (an older
			// kasd, a stream it lost count of) is not waited for past DrainTimeout, however
			// long the requests themselves ran, when this agent drains (drain). drainForKasd
			// waits for it as long as for its handlers (below).
			wait = c.a.cfg.DrainTimeout
		}
		var timeout <-chan time.Time
		if !(forKasd && told && served) {
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		// After a move or a draining kasd's GoAway (drainForKasd) the responses kasd is still
		// reading are as much its requests as those whose handlers run: a response the
		// handler wrote at once may wait unread in kasd's receive buffer (up to its stream
		// window) for as long as kasd's client (or the peer it relays to) takes. They are
		// waited for the same way, until kasd closes or DrainTimeout after this agent stops
		// (ctx). A fixed DrainTimeout from the handlers' end cut them: chaos kasd-join on a
		// loaded host, 2 GETs of 160-190 KB cut at 35-47 KB ("agent closing") while kasd
		// relayed them to a peer that had just restarted
		// (TestMoveKeepsResponseKasdIsStillReading). A kasd that never closes (older than
		// agentLeft) keeps the connection, refused for new streams, until then.
		select {
		case <-c.qc.Context().Done():
		case <-ctx.Done():
		case <-timeout:
		}
	case <-ctx.Done():
	}
	c.stop()
	_ = c.qc.CloseWithError(quic.ConnCodeNoError, "agent closing")
	<-handlersDone
	<-c.acceptDone
	<-c.ctrlDone
}

// checkRequest vets a stream's request head before anything else is read, against the
// services of set.
func (a *Agent) checkRequest(set *serviceSet, req *api.Request) *api.Error {
	var refusal *api.Error
	switch {
	case req.Kind != api.KindHTTP:
		refusal = api.Errorf(api.CodeProtocol, "request kind %s is not served by agents", req.Kind)
	case set.lookup(req.Service) == nil:
		refusal = a.unknownService(req.Service) // service.go: lists what the agent offers
	case !req.Deadline.IsZero() && !time.Now().Before(req.Deadline):
		refusal = api.Errorf(api.CodeDeadlineExceeded, "deadline passed before the agent received the request")
	default:
		if c, ok := set.lookup(req.Service).handler.(RequestChecker); ok {
			refusal = c.CheckRequest(req)
		}
	}
	if refusal != nil {
		a.m.rejections.WithLabelValues(refusal.Code.String()).Inc()
	}
	return refusal
}

// serveStream serves one proxied request: it reads the head (bounded by
// RequestHeaderTimeout), checks it, calls the service and writes the response. Every request is
// counted and timed, however it ends.
func (a *Agent) serveStream(ctx context.Context, sc *quic.StreamConn) {
	a.m.openStreams.Inc()
	defer a.m.openStreams.Dec()
	start := time.Now()
	var bytesIn, bytesOut int64 // for the access log
	// One generation of services for the whole request: a reload never pulls its service away.
	set := a.svcs.Load()
	check := func(req *api.Request) *api.Error { return a.checkRequest(set, req) }
	var span tracing.Span // zero (no cost) with tracing off
	res := httpstream.Serve(ctx, sc, a.cfg.RequestHeaderTimeout, check, func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		stripCredentials(r.Header)
		// A child of kasd's span; the service gets this span's traceparent.
		span = a.cfg.Tracer.StartHeader("agentd.request", tracing.KindServer, r.Header)
		// The call to the service, child of the request's span and the service's parent.
		upstream := a.cfg.Tracer.StartHeader("agentd.upstream", tracing.KindClient, r.Header)
		in := countRequestBody(r)
		set.lookup(f.Service).handler.ServeService(w, r, f)
		if upstream.Recording() {
			upstream.End(tracing.Outcome{Agent: a.agentID(), Service: f.Service, Route: "upstream", RequestID: f.RequestID, Status: w.Status()})
		}
		bytesIn, bytesOut = in.count(), w.Written()
	})
	defer a.logAccess(res, bytesIn, bytesOut, start)
	if span.Recording() {
		o := tracing.Outcome{Agent: a.agentID(), Service: res.Head.Service, Route: "agent", RequestID: res.Head.RequestID, Status: res.Status}
		if res.Refusal != nil {
			o.Code = res.Refusal.Code.String()
		}
		span.End(o)
	}
	switch {
	case res.Head == nil:
		a.m.rejections.WithLabelValues(api.CodeProtocol.String()).Inc()
	case res.Refusal != nil:
		// checkRequest counted its own refusals; this is a head it accepted but could not use.
		if res.Refusal.Code == api.CodeBadRequest {
			a.m.rejections.WithLabelValues(res.Refusal.Code.String()).Inc()
		}
	default:
		status := res.Status
		if res.Canceled {
			status = api.CodeClientCanceled.HTTPStatus() // kasd (its client) went away first
		}
		a.m.observe(res.Head.Service, status, time.Since(start))
		if res.HeadError != nil {
			a.m.limits.WithLabelValues("response_head_too_large").Inc()
			a.m.serviceErrors.WithLabelValues(res.Head.Service).Inc()
		}
		if res.TrailerError != nil {
			a.m.limits.WithLabelValues("response_trailers_too_large").Inc()
			a.m.serviceErrors.WithLabelValues(res.Head.Service).Inc()
		}
	}
}
