package kasd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// FleetConfig joins a Server to a fleet of kasd replicas. A nil *FleetConfig means a single kasd.
type FleetConfig struct {
	// Registry publishes this instance's agents and holds the view of everyone else's. Its
	// instance id must equal Config.InstanceID. Required.
	Registry *registry.Registry
	// PeerSecret authenticates replicas to each other (at least 32 bytes). Required.
	PeerSecret []byte
	// PeerTLS is the client TLS configuration used to dial peers. nil: the peer's certificate is
	// not verified; both sides then prove knowledge of PeerSecret bound to the TLS session
	// (an exported key), which a machine in the middle cannot relay. This is what lets replicas
	// that each generated their own development certificate talk to each other.
	PeerTLS *tls.Config
	// PeerQUIC tunes peer connections. Default: 1s handshake, 250ms keep-alive and a 1s idle
	// timeout, so that a dead peer is noticed within 1s (peers are few, keep-alives between
	// them are cheap).
	PeerQUIC quic.Config
	// PeerRetryDelay is how long a peer whose connection died or could not be dialled is
	// skipped: requests go to other holders instead of waiting on a dial. Default 1s.
	PeerRetryDelay time.Duration

	// RebalanceInterval is how often this kasd compares its agent connections with the fleet's
	// average and, holding too many, asks one to move (rebalance.go); each wait is jittered
	// ±50 %. Default 1s; negative: never.
	RebalanceInterval time.Duration
	// RebalanceTolerance is the margin around the fleet's average, as a fraction of it, within
	// which nothing moves (nor when the most and least loaded differ by one). Default 0.1;
	// negative: no margin (connections move until the most and least loaded differ by one).
	RebalanceTolerance float64
	// RebalanceMinAge: a connection younger than this is never asked to move, so that a
	// connection that just arrived (or just moved) stays. Default 5s.
	RebalanceMinAge time.Duration
}

func (c *FleetConfig) withDefaults() *FleetConfig {
	out := *c
	if out.PeerQUIC.HandshakeTimeout == 0 {
		out.PeerQUIC.HandshakeTimeout = time.Second
	}
	if out.PeerQUIC.MaxIdleTimeout == 0 {
		out.PeerQUIC.MaxIdleTimeout = time.Second
	}
	if out.PeerQUIC.KeepAlivePeriod == 0 {
		out.PeerQUIC.KeepAlivePeriod = 250 * time.Millisecond
	}
	if out.PeerRetryDelay == 0 {
		out.PeerRetryDelay = time.Second
	}
	if out.RebalanceInterval == 0 {
		out.RebalanceInterval = time.Second
	}
	if out.RebalanceTolerance == 0 {
		out.RebalanceTolerance = 0.1
	}
	if out.RebalanceMinAge == 0 {
		out.RebalanceMinAge = 5 * time.Second
	}
	return &out
}

func (c *FleetConfig) validate(instanceID string) error {
	var errs []error
	if c.Registry == nil {
		errs = append(errs, errors.New("fleet: a registry is required"))
	} else if c.Registry.Self().ID != instanceID {
		errs = append(errs, fmt.Errorf("fleet: registry instance %q is not this server's %q", c.Registry.Self().ID, instanceID))
	}
	if len(c.PeerSecret) < 32 {
		errs = append(errs, errors.New("fleet: the peer secret must be at least 32 bytes"))
	}
	if err := c.PeerQUIC.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("fleet: %w", err))
	}
	if t := c.RebalanceTolerance; math.IsNaN(t) || math.IsInf(t, 0) {
		errs = append(errs, fmt.Errorf("fleet: rebalance tolerance %v is not a finite number", t))
	}
	return errors.Join(errs...)
}

// errPeerUnavailable marks a failure to reach a peer: nothing was sent, the next holder may be
// tried.
var errPeerUnavailable = fmt.Errorf("peer unavailable: %w", errNotSent)

// fleet is the peer side of a Server: lazily dialled, reused peer connections, and forwarding.
type fleet struct {
	s      *Server
	cfg    *FleetConfig
	reg    *registry.Registry
	dialer *quic.Dialer
	// refusals is kasd_peer_refusals_total{side,reason} (fleetid.go).
	refusals *prometheus.CounterVec

	wg sync.WaitGroup // watchPeer goroutines; they end with their connection

	mu     sync.Mutex // guards the fields below
	links  map[string]*peerLink
	closed bool
}

// peerLink is the one connection to a peer instance; dialled once, shared by every request.
type peerLink struct {
	addr    string
	ready   chan struct{} // closed when the dial finished; then qc or err is set
	qc      *quicgo.Conn
	err     error
	readyAt time.Time // when the dial finished (set before ready is closed)

	// failedAt is when the dial failed or the connection died (unix nanoseconds; 0 while
	// healthy). Set by the dial or by a context.AfterFunc on the connection.
	failedAt atomic.Int64
	// draining is set when the peer sent GoAway on the control stream.
	draining atomic.Bool
	// open counts the requests in flight over the link. A draining peer waits for its origins
	// to close their links (it cannot tell when the end of a response it sent has arrived;
	// the origin can): this origin closes a draining link once open drops to 0.
	open atomic.Int64
	// drained is set when this origin closed the link for that reason.
	drained atomic.Bool
}

// release ends one request over the link, and closes a draining link whose last request this
// was.
func (l *peerLink) release() {
	if l.open.Add(-1) == 0 {
		l.closeIfDrained()
	}
}

// closeIfDrained closes the link when the peer is draining and no request is in flight over it:
// every response on it has been read to its end (or abandoned), so nothing the peer still has
// to send is lost by the close, and the peer's drain need not wait for its grace to run out. A
// request that took the link just before is refused by the close (not sent) and goes to another
// holder.
func (l *peerLink) closeIfDrained() {
	if !l.draining.Load() || l.open.Load() != 0 || l.qc == nil || l.qc.Context().Err() != nil {
		return
	}
	if !l.drained.Swap(true) {
		l.failedAt.Store(time.Now().UnixNano()) // down from now on: no redial for PeerRetryDelay
		_ = l.qc.CloseWithError(quic.ConnCodeNoError, peerDrainedReason)
	}
}

// peerDrainedReason is the close reason of a link its origin closed because the peer drains.
const peerDrainedReason = "peer draining: every request on the link is done"

// down reports whether the link failed less than d ago.
func (l *peerLink) down(d time.Duration) bool {
	at := l.failedAt.Load()
	return at != 0 && time.Since(time.Unix(0, at)) < d
}

func newFleet(s *Server, cfg *FleetConfig) (*fleet, error) {
	tlsConf := cfg.PeerTLS
	if tlsConf == nil {
		// Authentication is the channel-bound proof in the peer handshake, see FleetConfig.
		tlsConf = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // see above
	}
	tlsConf = tlsConf.Clone()
	tlsConf.NextProtos = []string{api.ALPNPeer}
	refusals, err := newPeerRefusals(s.cfg.Registerer)
	if err != nil {
		return nil, err
	}
	d, err := quic.NewDialer(tlsConf, cfg.PeerQUIC)
	if err != nil {
		return nil, err
	}
	return &fleet{s: s, cfg: cfg, reg: cfg.Registry, dialer: d, refusals: refusals, links: map[string]*peerLink{}}, nil
}

func (f *fleet) close() {
	f.mu.Lock()
	links := f.links
	f.links = map[string]*peerLink{}
	f.closed = true
	f.mu.Unlock()
	for _, l := range links {
		<-l.ready
		if l.qc != nil {
			_ = l.qc.CloseWithError(quic.ConnCodeShutdown, "kasd closing")
		}
	}
	_ = f.dialer.Close()
	f.wg.Wait()
}

func (f *fleet) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// conn returns the live connection to inst, dialling it if needed. Concurrent callers share one
// dial; a peer that could not be dialled is skipped for PeerRetryDelay.
func (f *fleet) conn(ctx context.Context, inst registry.Instance) (*peerLink, error) {
	f.mu.Lock()
	l := f.links[inst.ID]
	if l != nil && l.addr == inst.PeerAddr {
		f.mu.Unlock()
		select {
		case <-l.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		switch {
		case l.draining.Load() && l.qc != nil && l.qc.Context().Err() == nil:
			// The peer is shutting down: it takes no new request, and it does not hold the
			// agent much longer. Another holder, or the agent's next connection, serves it.
			return nil, &api.Error{Code: api.CodeShuttingDown, Message: "peer " + inst.ID + " is draining", Err: errPeerUnavailable}
		case l.qc != nil && l.qc.Context().Err() == nil:
			return l, nil
		case l.down(f.cfg.PeerRetryDelay):
			// Skip it for now: the caller tries another holder instead of waiting on a dial
			// to a peer that was just lost.
			if l.err != nil {
				return nil, l.err
			}
			return nil, &api.Error{Code: api.CodeAgentFailed, Message: "peer " + inst.ID + " connection lost", Err: errPeerUnavailable}
		}
		f.mu.Lock()
		if f.links[inst.ID] != l { // someone else replaced it meanwhile
			f.mu.Unlock()
			return f.conn(ctx, inst)
		}
	}
	if f.closed {
		f.mu.Unlock()
		return nil, api.Errorf(api.CodeShuttingDown, "kasd is closing")
	}
	if old := f.links[inst.ID]; old != nil {
		select {
		case <-old.ready:
			// The peer moved (a new address) or its link died: make sure the old one is gone.
			if old.qc != nil {
				_ = old.qc.CloseWithError(quic.ConnCodeNoError, "replaced")
			}
		default: // still dialling: its dialler owns it, and it is replaced below
		}
	}
	l = &peerLink{addr: inst.PeerAddr, ready: make(chan struct{})}
	if old := f.links[inst.ID]; old != nil && old.draining.Load() {
		// Redialling a peer that was draining: it still is until it accepts a link (a draining
		// kasd refuses new ones), so the status and routing keep treating it as draining.
		l.draining.Store(true)
	}
	f.links[inst.ID] = l
	f.mu.Unlock()

	// The dial serves every waiter, so it must not end with this request.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.PeerQUIC.HandshakeTimeout)
	defer cancel()
	var ctrl *quicgo.Stream
	l.qc, ctrl, l.err = f.dial(dctx, inst)
	f.mu.Lock()
	replaced := f.links[inst.ID] != l
	f.mu.Unlock()
	if replaced && l.qc != nil {
		// Replaced while dialling (the peer moved, or the fleet closed): nobody will reuse it.
		_ = l.qc.CloseWithError(quic.ConnCodeNoError, "replaced")
	}
	result := "ok"
	if l.qc != nil {
		qc, id := l.qc, inst.ID
		context.AfterFunc(qc.Context(), func() {
			l.failedAt.Store(time.Now().UnixNano())
			if l.drained.Load() {
				f.s.m.peerLinksDrained.Inc()
				f.s.log.Info().Str("peer", id).Msg("peer link closed: the peer is draining and every request on the link is done")
				return
			}
			if !f.isClosed() {
				f.s.m.peerLinkLosses.Inc()
				f.s.log.Warn().Str("peer", id).Str("cause", errString(context.Cause(qc.Context()))).Msg("peer link lost; its agents are reached through their other holders")
			}
		})
		l.draining.Store(false) // it accepted the link: not draining (a GoAway on it says otherwise)
		f.wg.Go(func() { f.watchPeer(l, ctrl) })
	}
	if l.err != nil {
		l.failedAt.Store(time.Now().UnixNano())
		result = "error"
		if api.CodeOf(l.err) == api.CodeShuttingDown {
			// The peer refused the link because it drains (serveFleetConn): as a GoAway on a
			// live link would, this marks it draining, so the status keeps showing the drain
			// (not "unreachable") when this kasd redials after closing the drained link.
			l.draining.Store(true)
			f.s.log.Info().Err(l.err).Str("peer", inst.ID).Msg("peer refused a link: it is draining")
		} else {
			f.s.log.Warn().Err(l.err).Str("peer", inst.ID).Str("peer_addr", inst.PeerAddr).Msg("dialling peer failed")
		}
	}
	f.s.m.peerDials.WithLabelValues(result).Inc()
	l.readyAt = time.Now()
	close(l.ready)
	if l.err != nil {
		return nil, l.err
	}
	return l, nil
}

// dial connects to a peer and runs the mutual, channel-bound handshake.
func (f *fleet) dial(ctx context.Context, inst registry.Instance) (*quicgo.Conn, *quicgo.Stream, error) {
	if inst.PeerAddr == "" {
		return nil, nil, api.Errorf(api.CodeAgentFailed, "peer %s has no peer address", inst.ID)
	}
	qc, err := f.dialer.Dial(ctx, inst.PeerAddr)
	if err != nil {
		return nil, nil, &api.Error{Code: api.CodeAgentFailed, Message: "peer " + inst.ID + " unreachable", Err: fmt.Errorf("%w: %w", errPeerUnavailable, err)}
	}
	fail := func(err error) (*quicgo.Conn, *quicgo.Stream, error) {
		_ = qc.CloseWithError(quic.ConnCodeRefused, "peer handshake failed")
		return nil, nil, &api.Error{Code: api.CodeAgentFailed, Message: "peer " + inst.ID + " handshake: " + err.Error(), Err: fmt.Errorf("%w: %w", errPeerUnavailable, err)}
	}
	refuse := func(reason string, err error) (*quicgo.Conn, *quicgo.Stream, error) {
		f.refused("dial", reason, inst.ID, inst.PeerAddr, err) // fleetid.go
		return fail(err)
	}
	exporter, err := peerExporter(qc)
	if err != nil {
		return fail(err)
	}
	ctrl, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return fail(err)
	}
	deadline, _ := ctx.Deadline()
	_ = ctrl.SetDeadline(deadline)
	if err := api.WriteFrame(ctrl, f.helloFor(exporter)); err != nil {
		return fail(err)
	}
	m, err := api.ReadExpect(ctrl, api.TypePeerHello)
	if e := peerRefusal(err); e != nil { // fleetid.go
		// The peer judged our hello and said why (another fleet, another secret).
		return refuse(refusedByPeer, fmt.Errorf("refused by the peer: %w", e))
	}
	if err != nil {
		return refuse(refusedProtocol, err)
	}
	ph := m.(*api.PeerHello)
	if reason, err := f.checkHello(ph, exporter); err != nil { // fleetid.go
		return refuse(reason, err)
	}
	if ph.InstanceID != inst.ID {
		return refuse(refusedWrongInstance, fmt.Errorf("answered as %q", ph.InstanceID))
	}
	_ = ctrl.SetDeadline(time.Time{})
	f.s.log.Info().Str("peer", inst.ID).Str("peer_addr", inst.PeerAddr).Msg("peer connected")
	return qc, ctrl, nil
}

// watchPeer reads the peer's control stream until the connection ends. A GoAway means the peer
// drains: no new request is forwarded over this link (requests go to other holders, or wait
// for the agent to move).
func (f *fleet) watchPeer(l *peerLink, ctrl *quicgo.Stream) {
	for {
		m, err := api.ReadFrame(ctrl)
		if errors.Is(err, api.ErrUnknownFrameType) {
			continue
		}
		if err != nil {
			return
		}
		if _, ok := m.(*api.GoAway); ok {
			l.draining.Store(true)
			l.closeIfDrained() // nothing in flight: close now, else the last request's release does
		}
	}
}

func peerExporter(qc *quicgo.Conn) ([]byte, error) {
	st := qc.ConnectionState().TLS
	return st.ExportKeyingMaterial(auth.PeerExporterLabel, nil, auth.PeerExporterLength)
}

// holders returns the instances other than this one that hold agentID, minus those in skip.
// The list is rotated by rr so that load spreads over holders.
func (f *fleet) holders(agentID string, skip func(h registry.Holder) bool, rr uint64) []registry.Holder {
	hs := f.reg.Holders(agentID)
	out := make([]registry.Holder, 0, len(hs))
	for _, h := range hs {
		if h.Instance.ID != f.s.cfg.InstanceID && !skip(h) {
			out = append(out, h)
		}
	}
	if len(out) > 1 {
		k := int(rr % uint64(len(out)))
		out = append(out[k:], out[:k]...)
	}
	// Peers whose link just failed or that announced a drain go last: the registry still lists
	// them until their lease expires or their keys are deleted, but a request should not wait
	// on them while another holder is healthy.
	healthy := out[:0:0]
	var unhealthy []registry.Holder
	for _, h := range out {
		if f.unhealthy(h.Instance) {
			unhealthy = append(unhealthy, h)
		} else {
			healthy = append(healthy, h)
		}
	}
	return append(healthy, unhealthy...)
}

// unhealthy reports a peer whose link failed less than PeerRetryDelay ago, or whose link is open
// and draining. A draining link that has closed since (this kasd closed it once its requests
// were done, or the peer exited) says nothing after PeerRetryDelay: the registry lists the
// instance again only once it restarted under the same id and address, and conn dials it
// afresh.
func (f *fleet) unhealthy(inst registry.Instance) bool {
	f.mu.Lock()
	l := f.links[inst.ID]
	f.mu.Unlock()
	if l == nil || l.addr != inst.PeerAddr {
		return false
	}
	if l.down(f.cfg.PeerRetryDelay) {
		return true
	}
	select {
	case <-l.ready:
	default:
		return false // still dialling
	}
	return l.draining.Load() && l.qc != nil && l.qc.Context().Err() == nil
}

// forward sends the request to inst over the peer connection: a Forward frame, then exactly
// what the agent will receive. Failures before anything was sent wrap errNotSent.
func (f *fleet) forward(ctx context.Context, inst registry.Instance, agentID string, req *api.Request, body *httpstream.Body) (*http.Response, error) {
	s := f.s
	l, err := f.conn(ctx, inst)
	if err != nil {
		if ctx.Err() != nil {
			return nil, contextError(ctx.Err())
		}
		return nil, err
	}
	qc := l.qc
	l.open.Add(1)
	mark := qc.ConnectionStats().LargestSentAppData
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		l.release()
		if ctx.Err() != nil {
			return nil, contextError(ctx.Err())
		}
		return nil, notSent(httpstream.StreamError(err))
	}
	prefix := api.AppendFrame(nil, &api.Forward{AgentID: agentID, Origin: s.cfg.InstanceID})
	s.m.openStreams.Inc()
	sc := quic.NewStreamConn(qc, st)
	resp, err := httpstream.RoundTrip(ctx, sc, req, body, &httpstream.Options{
		Prefix:                prefix,
		ResponseHeaderTimeout: s.headerTimeout(ctx), // deadline.go
		Go:                    s.goOwned,
		Done: func(clean bool, sent, recv int64) {
			s.m.streamDone(sent, recv)
			l.release()
		},
	})
	if err != nil && ctx.Err() == nil && untaken(sc, mark) {
		err = unacknowledged(err) // the peer was gone before the request reached it
	}
	return resp, err
}

// ServePeers accepts connections from other kasd replicas on ln until ctx ends or ln is closed.
func (s *Server) ServePeers(ctx context.Context, ln *quic.Listener) error {
	if s.fleet == nil {
		return errors.New("kasd: ServePeers without a fleet configuration")
	}
	return s.acceptLoop(ctx, ln, "peer", func(qc *quicgo.Conn) func() { s.servePeerConn(qc); return nil })
}

// servePeerConn authenticates a peer and serves the Forward streams it opens.
func (s *Server) servePeerConn(qc *quicgo.Conn) {
	f := s.fleet
	log := s.log.With().Str("peer_remote", qc.RemoteAddr().String()).Logger()
	ctx, cancel := context.WithTimeout(qc.Context(), f.cfg.PeerQUIC.HandshakeTimeout+time.Second)
	ctrl, err := qc.AcceptStream(ctx)
	cancel()
	if err != nil {
		if qc.Context().Err() == nil {
			// Still there, and silent: refused as a missing hello is (a dialler that went away
			// by itself refused nothing).
			s.m.peerConns.WithLabelValues("refused").Inc()
			f.refused("accept", refusedProtocol, "", qc.RemoteAddr().String(), errors.New("no control stream within the peer handshake timeout"))
		}
		_ = qc.CloseWithError(quic.ConnCodeRefused, "no peer handshake")
		return
	}
	deadline := time.Now().Add(f.cfg.PeerQUIC.HandshakeTimeout + time.Second)
	_ = ctrl.SetDeadline(deadline)
	// A dialler that has not proved it is a peer opens no other stream (server.go).
	hctx, hcancel := context.WithDeadline(qc.Context(), deadline)
	defer hcancel()
	stopEarlyStreams := s.refuseEarlyStreams(hctx, qc)
	defer stopEarlyStreams()
	exporter, err := peerExporter(qc)
	var ph *api.PeerHello
	reason := refusedProtocol
	if err == nil {
		var m api.Message
		if m, err = api.ReadExpect(ctrl, api.TypePeerHello); err == nil {
			ph = m.(*api.PeerHello)
			reason, err = f.checkHello(ph, exporter) // fleetid.go
		}
	}
	if err != nil {
		s.m.peerConns.WithLabelValues("refused").Inc()
		peer := ""
		if ph != nil {
			peer = ph.InstanceID
		}
		f.refused("accept", reason, peer, qc.RemoteAddr().String(), err)
		e := asAPIError(err, api.CodeUnauthenticated)
		_ = api.WriteFrame(ctrl, e)
		// The close may overtake the error frame: its reason says the same (fleetid.go).
		_ = qc.CloseWithError(quic.ConnCodeRefused, refusalCloseReason(e))
		return
	}
	stopEarlyStreams() // before our answer can reach the peer: its forwards are served
	if err := api.WriteFrame(ctrl, f.helloFor(exporter)); err != nil {
		return
	}
	_ = ctrl.SetDeadline(time.Time{})
	s.m.peerConns.WithLabelValues("accepted").Inc()
	log = log.With().Str("peer", ph.InstanceID).Logger()
	log.Info().Msg("peer accepted")
	pc := &peerCtrl{stream: ctrl}
	s.mu.Lock()
	s.peerCtrls[pc] = struct{}{}
	draining := s.draining.Load()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.peerCtrls, pc)
		s.mu.Unlock()
	}()
	if draining {
		pc.sendGoAway()
	}
	for {
		st, err := qc.AcceptStream(qc.Context())
		if err != nil {
			break
		}
		sc := quic.NewStreamConn(qc, st)
		if !s.goOwned(func() { s.serveForward(sc, ph.InstanceID) }) {
			sc.Abort(quic.StreamCodeRefused)
			break
		}
	}
	_ = qc.CloseWithError(quic.ConnCodeNoError, "")
}

// serveForward serves one forwarded request: it checks that this kasd holds the agent, opens a
// stream to it, passes the request head on and splices bytes both ways without parsing them.
// Every refusal comes before the body is read, so the origin can send the request elsewhere.
func (s *Server) serveForward(sc *quic.StreamConn, origin string) {
	// In flight from its first byte: a drain must not close the peer connection under a
	// forwarded request whose head is still being read.
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	start := time.Now()
	_ = sc.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := api.ReadExpect(sc, api.TypeForward)
	var f *api.Request
	if err == nil {
		f, err = httpstream.ReadRequest(sc)
	}
	if err != nil {
		s.m.forwardedIn.WithLabelValues(api.CodeProtocol.String()).Inc()
		httpstream.Refuse(sc, api.Errorf(api.CodeProtocol, "bad forwarded request: %v", err))
		return
	}
	fw := m.(*api.Forward)
	_ = sc.SetReadDeadline(time.Time{})
	// A child of the origin kasd's span; the head passed to the agent carries this one's.
	span := s.cfg.Tracer.StartHead("kasd.forward", tracing.KindServer, &f.Header) // nil Tracer: no cost
	var spanCode string
	if span.Recording() {
		defer func() {
			span.End(tracing.Outcome{Agent: fw.AgentID, Service: f.Service, Route: "forwarded_in", RequestID: f.RequestID, Code: spanCode})
		}()
	}
	refuse := func(e *api.Error) {
		spanCode = e.Code.String()
		s.m.forwardedIn.WithLabelValues(e.Code.String()).Inc()
		s.logForwardedAccess(f, fw.AgentID, origin, e, 0, 0, start) // accesslog.go
		httpstream.Refuse(sc, e)
	}
	if s.draining.Load() {
		refuse(api.Errorf(api.CodeShuttingDown, "instance %s is draining", s.cfg.InstanceID))
		return
	}
	conns, perr := s.table.pickAll(fw.AgentID, f.Service)
	switch {
	case perr != nil:
		refuse(asAPIError(perr, api.CodeServiceUnknown))
		return
	case len(conns) == 0:
		refuse(api.Errorf(api.CodeNotHolder, "instance %s does not hold agent %s", s.cfg.InstanceID, fw.AgentID))
		return
	}
	// Only connections that are not silent: if every connection of the agent here went quiet
	// (a killed or paused replica not yet timed out), the origin does better with another
	// holder, and the refusal says the request was not processed.
	live := conns[:0]
	now := time.Now()
	revoked := false
	for _, c := range conns {
		switch {
		case c.silent(now) || c.suspect.Load():
		case !s.stillAdmitted(sc.Context(), c): // reverify.go
			revoked = true
		default:
			live = append(live, c)
		}
	}
	if conns = live; len(conns) == 0 {
		why := "are silent"
		if revoked {
			why = "authenticated with a token that was revoked"
		}
		refuse(api.Errorf(api.CodeAgentNotConnected, "agent %s's connections to %s %s", fw.AgentID, s.cfg.InstanceID, why))
		return
	}
	if conns[0].quietBusy.Load() {
		// Its requests have had no answer for a moment: another connection first, if one is
		// not (it is still tried when it is the only one: it may only be slow).
		if i := slices.IndexFunc(conns, func(c *agentConn) bool { return !c.quietBusy.Load() }); i > 0 {
			conns[0], conns[i] = conns[i], conns[0]
		}
	}
	e := conns[0].entry
	if !s.table.startRequest(e, s.cfg.MaxInflightPerAgent) {
		s.m.limitRejections.WithLabelValues("max_inflight_per_agent").Inc()
		refuse(&api.Error{Code: api.CodeOverloaded, Message: "too many requests in flight to agent " + fw.AgentID, RetryAfter: time.Second})
		return
	}
	defer e.inflight.Add(-1)
	var asc *quic.StreamConn
	var agent *agentConn
	var mark uint64
	for _, c := range conns {
		mark = c.qc.ConnectionStats().LargestSentAppData
		c.streamStarted() // a connection the agent leaves is closed once its streams are done
		octx, cancel := context.WithTimeout(sc.Context(), s.cfg.ResponseHeaderTimeout)
		st, err := c.qc.OpenStreamSync(octx)
		cancel()
		if err == nil {
			asc, agent = quic.NewStreamConn(c.qc, st), c
			break
		}
		c.streamDone()
	}
	if asc != nil {
		defer agent.streamDone()
	}
	if asc == nil {
		refuse(api.Errorf(api.CodeAgentNotConnected, "no usable connection to agent %s on %s", fw.AgentID, s.cfg.InstanceID))
		return
	}
	head := api.AppendFrame(make([]byte, 0, 512), f)
	if _, err = asc.Write(head); err != nil {
		asc.Abort(quic.StreamCodeCanceled)
		if untaken(asc, mark) {
			// The agent acknowledged nothing sent since the stream was opened: it never took
			// the request, and the origin may send it to another holder.
			refuse(api.Errorf(api.CodeAgentNotConnected, "writing to agent %s: %v", fw.AgentID, err))
			return
		}
		// The agent may have the head: not a refusal (that would let the origin send a
		// request twice), a failure the origin's retry policy judges.
		sc.Abort(quic.StreamCodeCanceled)
		spanCode = api.CodeAgentFailed.String()
		s.m.forwardedIn.WithLabelValues(api.CodeAgentFailed.String()).Inc()
		s.logForwardedAccess(f, fw.AgentID, origin, api.Errorf(api.CodeAgentFailed, "writing to agent %s: %v", fw.AgentID, err), 0, 0, start)
		return
	}
	if !f.Has(api.FlagBody) && !f.Has(api.FlagUpgrade) {
		// FIN with the head, as the origin sent it. An error here is not a refusal: the head
		// was written, and the agent may already have answered and stopped reading (a
		// STOP_SENDING racing this close); the splice below carries its answer, or its
		// failure, back to the origin.
		_ = asc.CloseWrite()
	}
	s.m.forwardedIn.WithLabelValues("ok").Inc()
	s.m.openStreams.Inc()
	// When the agent connection dies and the agent acknowledged nothing sent since the stream
	// was opened, it never took the request (a live agent acknowledges within 1 ms): the
	// origin gets "refused" and sends the request to another holder.
	refusedIfUntaken := func(err error) quicgo.StreamErrorCode {
		if (agent.qc.Context().Err() != nil || connectionError(err)) && untaken(asc, mark) {
			return quic.StreamCodeRefused
		}
		return quic.StreamCodeCanceled
	}
	// The origin's reset (its client left, a deadline passed) ends sc's send side, which the
	// splice sees only at its next write to sc: for a body-less request the origin→agent
	// direction ended at the FIN, and the agent→origin one waits on the agent, maybe for ever
	// (a quiet watch), holding the agent stream, the service connection and this agent's
	// in-flight slot. Pass the origin's code on to the agent at once. Not code 0: that is the
	// origin's Close before reading to EOF (it has a complete answer and stops the upload,
	// STOP_SENDING, which the splice passes on as such).
	stopWatch := context.AfterFunc(sc.Context(), func() {
		var se *quicgo.StreamError
		if errors.As(context.Cause(sc.Context()), &se) && se.Remote && se.ErrorCode != quic.StreamCodeNoError {
			asc.Abort(se.ErrorCode)
		}
	})
	sent, got := httpstream.SpliceWith(sc, asc, refusedIfUntaken)
	stopWatch()
	s.m.streamDone(sent, got)
	s.logForwardedAccess(f, fw.AgentID, origin, nil, sent, got, start) // accesslog.go
}

// connectionError reports whether err ended a stream because its connection ended (closed by
// either side, idle timeout, stateless reset, failed handshake) rather than the stream alone.
// The connection's context is canceled only after its streams have seen the error, so a
// splice that fails at that moment cannot tell from the context (a connection retired because
// its agent restarted elsewhere: 22 forwarded POSTs lost in one chaos agent-kill).
func connectionError(err error) bool {
	var (
		appErr   *quicgo.ApplicationError
		trErr    *quicgo.TransportError
		idleErr  *quicgo.IdleTimeoutError
		resetErr *quicgo.StatelessResetError
		hsErr    *quicgo.HandshakeTimeoutError
	)
	return errors.As(err, &appErr) || errors.As(err, &trErr) || errors.As(err, &idleErr) ||
		errors.As(err, &resetErr) || errors.As(err, &hsErr)
}

// dropLinksAfterPause forgets the dialled peer links that went through a pause of this process
// (SIGSTOP, a VM freeze) longer than the peer idle timeout: the peers have closed their ends,
// and a request sent into one of these links would wait for the local idle timer to notice.
// The next request to a peer dials it anew. pausedAfter is the latest the pause can have
// begun (the last sampler tick before it, plus a tick): a link made after that instant was
// dialled after the process resumed — its idle timer fired first and routing redialled before
// the sampler saw the gap — and carries requests sent since; it is kept.
func (f *fleet) dropLinksAfterPause(pausedAfter time.Time, paused time.Duration) {
	if paused < f.cfg.PeerQUIC.MaxIdleTimeout {
		return
	}
	f.mu.Lock()
	links := make([]*peerLink, 0, len(f.links))
	for id, l := range f.links {
		select {
		case <-l.ready:
		default:
			continue // still dialling: a dial that started after the pause
		}
		if l.readyAt.After(pausedAfter) {
			continue // made after the pause
		}
		delete(f.links, id)
		links = append(links, l)
	}
	f.mu.Unlock()
	for _, l := range links {
		if l.qc != nil {
			_ = l.qc.CloseWithError(quic.ConnCodeNoError, "this kasd was paused: link presumed dead")
		}
	}
	if len(links) > 0 {
		f.s.log.Warn().Dur("paused", paused).Int("links", len(links)).Msg("this kasd was paused longer than the peer idle timeout: peer links dropped, to be dialled anew")
	}
}

// livePeerLinks counts live dialled peer connections, for metrics.
func (s *Server) livePeerLinks() int {
	if s.fleet == nil {
		return 0
	}
	f := s.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, l := range f.links {
		select {
		case <-l.ready:
			if l.qc != nil && l.qc.Context().Err() == nil {
				n++
			}
		default:
		}
	}
	return n
}

// peerCtrl is the control stream of an accepted peer connection, on which Shutdown sends
// GoAway.
type peerCtrl struct {
	mu     sync.Mutex // serialises writes
	stream *quicgo.Stream
}

func (p *peerCtrl) sendGoAway() {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.stream.SetWriteDeadline(time.Now().Add(time.Second))
	_ = api.WriteFrame(p.stream, &api.GoAway{Reason: "kasd is shutting down"})
}
