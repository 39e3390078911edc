package kasd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/httpserve"
	"github.com/qkas/qkas/quic"
)

// Server is one kasd instance. Create it with New; hand it agent listeners with ServeAgents and
// mount Handler on an HTTP server for clients.
type Server struct {
	cfg   Config
	log   zerolog.Logger
	m     *metrics
	table *agentTable
	fleet *fleet // nil for a single kasd
	// idPrefix starts the ids this process makes (agent connections, requests): the instance
	// id and a random tag of the process, so that a restarted kasd, which keeps its instance id
	// (a StatefulSet pod's name), does not repeat the ids of the process before it, and a log
	// search for an id finds one connection or one request.
	idPrefix string
	connSeq  atomic.Uint64
	reqSeq   atomic.Uint64 // request ids this kasd makes (a client may bring its own)
	peerSeq  atomic.Uint64 // round robin over the peers holding an agent, one step per lookup

	inflight atomic.Int64 // proxied requests in progress (local, forwarded out and in), for Shutdown
	// apiInflight counts the proxied requests of this kasd's own API clients, for
	// Config.MaxInflightRequests.
	apiInflight atomic.Int64
	draining    atomic.Bool // set by BeginDrain: refuse new agents, fail /readyz

	quit     chan struct{}   // closed by Close: stops sampleSilence and retireSuspects
	suspects chan *agentConn // connections for retireSuspects (restarted.go)
	quitOnce sync.Once

	// admit holds Config.MaxPendingHandshakes slots, one held by each agent connection from its
	// arrival until its token has been checked, and schedules refused agents' retries
	// (admission.go).
	admit *admission

	// revocable is Config.AgentAuth when its verdicts can change (a reloaded tokens file);
	// stopRevoke stops its change notifications (Close). Both nil otherwise.
	revocable  revocableAuth
	stopRevoke func()
	// reverifier is Config.AgentAuth when its admissions expire (GitLab mode): connections in
	// use are checked again (reverify.go). nil otherwise.
	reverifier reverifiedAuth

	status statusState // StatusFor's peer probes (status.go); has its own lock

	budgets agentBudgets // per-agent stream and modules budgets (modules.go); has its own lock

	mu           sync.Mutex // guards the fields below
	closed       bool
	drainStarted time.Time
	conns        map[*quicgo.Conn]struct{} // every agent QUIC connection, authenticated or not
	// peerCtrls are the control streams of accepted peer connections (GoAway on Shutdown).
	peerCtrls map[*peerCtrl]struct{}
	// uploads are the bodies of client requests in progress (trackUpload), which Close ends.
	uploads map[*httpstream.Body]struct{}
	wg      sync.WaitGroup // agent connection handlers and request-body writers
}

// New checks cfg and builds a Server.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kasd: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		idPrefix:  cfg.InstanceID + "-" + processTag() + "-",
		log:       cfg.Log.With().Str("instance", cfg.InstanceID).Logger(),
		table:     newAgentTable(cfg.MaxAgentConnections, cfg.MaxConnectionsPerAgent),
		conns:     map[*quicgo.Conn]struct{}{},
		peerCtrls: map[*peerCtrl]struct{}{},
		uploads:   map[*httpstream.Body]struct{}{},

		admit: newAdmission(cfg.MaxPendingHandshakes, cfg.Registerer),
	}
	s.m = newMetrics(cfg.Registerer, s)
	s.quit = make(chan struct{})
	s.wg.Go(s.sampleSilence)
	s.suspects = make(chan *agentConn, maxSuspectQueue)
	s.wg.Go(s.retireSuspects) // restarted.go
	if cfg.Fleet != nil {
		f, err := newFleet(s, cfg.Fleet)
		if err != nil {
			return nil, fmt.Errorf("kasd: %w", err)
		}
		s.fleet = f
		reg := cfg.Fleet.Registry
		// Publishing never blocks: the registry reconciles etcd with this desired state.
		s.table.onChange = reg.SetAgent
		// Connections of a replica's earlier process are retired once it reconnects elsewhere.
		reg.SetReplicaHook(s.onRemoteReplicas) // restarted.go
		moves, err := newRebalanceMetrics(cfg.Registerer)
		if err != nil {
			return nil, fmt.Errorf("kasd: %w", err)
		}
		if cfg.Fleet.RebalanceInterval > 0 {
			rb := &rebalancer{moving: map[*agentConn]time.Time{}, stays: map[string]time.Time{}, moves: moves}
			s.wg.Go(func() { s.rebalanceLoop(rb) }) // rebalance.go; ends with Close
		}
	}
	if ra, ok := cfg.AgentAuth.(reverifiedAuth); ok && ra.reverifyAfter() > 0 {
		s.reverifier = ra
	}
	if ra, ok := cfg.AgentAuth.(revocableAuth); ok {
		s.revocable = ra
		s.stopRevoke = ra.onChange(s.revokeAgents) // agentauth.go
	}
	return s, nil
}

// InstanceID returns this kasd's instance id.
func (s *Server) InstanceID() string { return s.cfg.InstanceID }

// ServeAgents accepts agent connections from ln until ctx ends or ln is closed. It returns nil
// in those cases. Connections it accepted stay owned by the Server (see Close). It installs
// the admission gate before the TLS handshake on ln (admission.go).
func (s *Server) ServeAgents(ctx context.Context, ln *quic.Listener) error {
	ln.SetHandshakeGate(s.agentHandshakeGate)
	return s.acceptLoop(ctx, ln, "agent", s.serveAgentConn)
}

// acceptLoop accepts connections from ln until ctx ends or ln is closed (then it returns nil)
// and serves each in a goroutine that the Server owns: Close closes the connection and waits.
//
// serve may hand the rest of a connection's life to a new goroutine by returning it as then
// (see serveAgentConn); the Server owns that one too.
func (s *Server) acceptLoop(ctx context.Context, ln quicAcceptor, what string, serve func(*quicgo.Conn) (then func())) error {
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, quicgo.ErrServerClosed) || isClosed(err) {
				return nil
			}
			return fmt.Errorf("kasd: accepting %s connections: %w", what, err)
		}
		if !s.track(qc) {
			_ = qc.CloseWithError(quic.ConnCodeShutdown, "shutting_down: kasd is closing")
			continue
		}
		go func() {
			defer s.wg.Done()
			then := serve(qc)
			if then == nil {
				s.untrack(qc)
				return
			}
			s.wg.Add(1) // while this goroutine's count is still held: Close waits for both
			go func() {
				defer s.wg.Done()
				defer s.untrack(qc)
				then()
			}()
		}()
	}
}

// track registers qc and adds a handler to wg; false if the server is closed.
func (s *Server) track(qc *quicgo.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[qc] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(qc *quicgo.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, qc)
}

// goOwned runs f in a goroutine that Close waits for; false if the server is closed.
func (s *Server) goOwned(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Go(f)
	return true
}

var serviceNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// serveAgentConn runs one agent connection's handshake: Hello, authentication, Welcome. It
// returns the rest of the connection's life (serveAgent) for acceptLoop to run in a new
// goroutine, or nil when it refused the connection.
func (s *Server) serveAgentConn(qc *quicgo.Conn) (then func()) {
	log := s.log.With().Str("remote", qc.RemoteAddr().String()).Logger()
	if s.draining.Load() {
		s.refuse(qc, nil, api.Errorf(api.CodeShuttingDown, "kasd is draining; connect to another instance"), log)
		return nil
	}
	if s.table.full() {
		s.m.limitRejections.WithLabelValues("max_agent_connections").Inc()
		s.refuse(qc, nil, api.Errorf(api.CodeOverloaded, "kasd holds its maximum of %d agent connections", s.cfg.MaxAgentConnections), log)
		return nil
	}
	// Hold an admission slot until the token is checked: an unauthenticated peer may keep a
	// connection (and this goroutine) for HandshakeTimeout, so their number is bounded, and a
	// reconnect storm is answered with retry times spread at the rate kasd admits
	// (admission.go).
	releaseSlot, ok := s.admit.tryAcquire()
	if !ok {
		s.m.limitRejections.WithLabelValues("max_pending_handshakes").Inc()
		s.refuse(qc, nil, &api.Error{
			Code:       api.CodeOverloaded,
			Message:    fmt.Sprintf("kasd is handling its maximum of %d agent handshakes", s.cfg.MaxPendingHandshakes),
			RetryAfter: s.admit.retryAfter(),
		}, log)
		return nil
	}
	release := func() { releaseSlot(false) }
	defer release()
	ctx, cancel := context.WithTimeout(qc.Context(), s.cfg.HandshakeTimeout)
	defer cancel()
	control, err := qc.AcceptStream(ctx)
	if err != nil && closedBeforeHello(qc) {
		// An agent probing whether QUIC gets through again (transport.go): not a refusal.
		s.m.agentConnections.WithLabelValues("probe").Inc()
		return nil
	}
	if err != nil {
		s.m.limitRejections.WithLabelValues("handshake_timeout").Inc()
		s.refuse(qc, nil, api.Errorf(api.CodeProtocol, "no control stream within %s", s.cfg.HandshakeTimeout), log)
		return nil
	}
	stopEarlyStreams := s.refuseEarlyStreams(ctx, qc)
	defer stopEarlyStreams()
	deadline, _ := ctx.Deadline()
	_ = control.SetDeadline(deadline)
	m, err := api.ReadExpect(control, api.TypeHello)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			s.m.limitRejections.WithLabelValues("handshake_timeout").Inc()
		}
		release() // refuse lingers for the agent to read why: not in a handshake slot
		s.refuse(qc, control, asAPIError(err, api.CodeProtocol), log)
		return nil
	}
	hello := m.(*api.Hello)
	if err := s.checkHello(hello); err != nil {
		release()
		s.refuse(qc, control, asAPIError(err, api.CodeBadRequest), log)
		return nil
	}
	agentID, err := s.cfg.AgentAuth.Authenticate(WithAgentSource(ctx, qc.RemoteAddr()), hello.Token)
	releaseSlot(err == nil)
	// Before Welcome can reach the agent: a stream it opens from now on is served.
	stopEarlyStreams()
	// The handshake's context is done with: let go of it (and its place among the connection
	// context's children) now rather than when the connection ends.
	cancel()
	if err != nil {
		s.refuse(qc, control, asAPIError(err, api.CodeUnauthenticated), log)
		return nil
	}
	features := hello.Features & supportedFeatures
	c := &agentConn{
		controlOnStreams: features&api.FeatureControlOnStreams != 0,
		id:               s.idPrefix + strconv.FormatUint(s.connSeq.Add(1), 10),
		agentID:          agentID,
		token:            hello.Token,
		replica:          hello.Replica,
		process:          hello.Process,
		version:          hello.AgentVersion,
		services:         sortedCopy(hello.Services),
		since:            time.Now(),
		live:             liveness{silentAfter: silentAfterFor(s.cfg.AgentKeepAlivePeriod), idleGrace: idleGraceFor(s.cfg.AgentKeepAlivePeriod), busySilence: s.cfg.AgentBusySilence},
		qc:               qc,
		control:          control,
	}
	if s.reverifier != nil {
		c.reverify.due.Store(c.since.Add(s.reverifier.reverifyAfter()).UnixNano())
	}
	log = connLogger(log, c)
	older, limit, err := s.table.add(c)
	if err == nil && s.revocable != nil && !s.revocable.stillValid(c.token, agentID) {
		// The tokens file was reloaded without this token between the check above and the
		// add: revokeAgents, which runs after the reload, may have missed c (agentauth.go).
		s.table.remove(c)
		s.refuse(qc, control, api.Errorf(api.CodeUnauthenticated, "agent token revoked"), log)
		return nil
	}
	for _, old := range older {
		// A newer process of old's replica: old's process may be gone (killed, restarted), its
		// connection swallowing requests until its idle timeout, or alive and finishing its
		// requests (an upgrade). Routing prefers c meanwhile; a probe decides (restarted.go).
		s.suspectEarlier(old, s.cfg.InstanceID, c.process, true)
	}
	if err != nil {
		s.m.limitRejections.WithLabelValues(limit).Inc()
		s.refuse(qc, control, asAPIError(err, api.CodeOverloaded), log)
		return nil
	}
	welcome := &api.Welcome{Version: api.ProtocolVersion, AgentID: agentID, ConnectionID: c.id, InstanceID: s.cfg.InstanceID,
		Features: features}
	c.ctrlMu.Lock()
	err = api.WriteFrame(control, welcome)
	c.ctrlMu.Unlock()
	if err != nil {
		s.table.remove(c)
		log.Debug().Err(err).Msg("writing welcome failed")
		return nil
	}
	_ = control.SetDeadline(time.Time{})
	s.m.agentConnections.WithLabelValues("accepted").Inc()
	resumed := qc.ConnectionState().TLS.DidResume
	if resumed {
		s.m.tlsResumptions.Inc()
	}
	log.Info().Strs("services", c.services).Bool("tls_resumed", resumed).Bool("control_on_streams", c.controlOnStreams).Msg("agent connected")
	// The connection's life goes on in a new goroutine, with a new stack: this one's grew in
	// the handshake and the token check, and the runtime shrinks a parked goroutine's stack
	// only at collections, rare in an idle kasd (--gogc=auto).
	return func() { s.serveAgent(c) }
}

// refuseEarlyStreams closes qc as a protocol violation, counted as stream_before_welcome, if
// its agent (or peer) opens a stream besides the control stream before kasd stops it (the
// returned func, idempotent, which waits for the goroutine it starts) or ctx ends. Nobody
// accepts such a stream during the handshake, and quic-go keeps what arrives on it up to its
// receive window: one connection whose token (or peer proof) was not checked yet could make
// kasd hold --max-incoming-streams × 256 KiB, up to the 32 MiB connection window, for the
// handshake timeout. An agent opens none before Welcome, a peer none before kasd's PeerHello.
func (s *Server) refuseEarlyStreams(ctx context.Context, qc *quicgo.Conn) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := qc.AcceptStream(ctx); err != nil {
			return
		}
		s.m.limitRejections.WithLabelValues("stream_before_welcome").Inc()
		_ = qc.CloseWithError(quic.ConnCodeRefused, api.CloseReason(api.Errorf(api.CodeProtocol, "a stream besides the control stream before the handshake ended")))
	})
	return func() { cancel(); wg.Wait() }
}

// serveAgent runs an accepted agent connection until it ends, then forgets it. An idle
// connection's goroutine waits here for the agent's next stream for the connection's life, so
// the frames below it are kept small: parked in AcceptStream it uses under 1 KiB of stack, and
// the runtime shrinks its stack to 2 KiB at a collection (with the logging and the older agent's
// goroutine inline, serveAgent's own frame was 720 bytes and the stack stayed at 4 KiB).
func (s *Server) serveAgent(c *agentConn) {
	if c.controlOnStreams {
		// Connection-level messages arrive on streams the agent opens (serveAgentStream):
		// this goroutine accepts them, and the control stream is not read. The accept ends
		// when the connection ends.
		s.serveAgentStreams(c.qc.Context(), c)
	} else {
		s.serveAgentWithControl(c)
	}
	s.agentGone(c)
}

// serveAgentWithControl serves an agent that sends its connection-level messages on the
// control stream (an agentd without api.FeatureControlOnStreams): this goroutine reads it,
// another accepts the agent's streams.
//
//go:noinline
func (s *Server) serveAgentWithControl(c *agentConn) {
	ctx, cancel := context.WithCancel(c.qc.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serveAgentStreams(ctx, c)
	}()
	s.readControl(c)
	cancel()
	<-done
}

// agentGone forgets a connection whose serving ended, closes it and logs it.
//
//go:noinline
func (s *Server) agentGone(c *agentConn) {
	s.table.remove(c)
	_ = c.qc.CloseWithError(quic.ConnCodeNoError, "")
	// A logger's fields take a 512-byte buffer (zerolog); none is kept while the connection
	// idles, so the last line's logger is made now.
	log := connLogger(s.log.With().Str("remote", c.qc.RemoteAddr().String()).Logger(), c)
	log.Info().Str("reason", errString(context.Cause(c.qc.Context()))).Msg("agent disconnected")
}

// supportedFeatures are the api.Feature bits this kasd implements.
const supportedFeatures = api.FeatureControlOnStreams

// readControl reads the control stream of an agent that sends its connection-level messages
// there (no api.FeatureControlOnStreams): GoAway when the agent leaves, pings (ignored) when it
// heard nothing for a while; unknown frames are skipped so that newer agents can talk to this
// kasd. It returns when the stream or the connection ends.
func (s *Server) readControl(c *agentConn) {
	for {
		m, err := api.ReadFrame(c.control)
		if err != nil {
			if errors.Is(err, api.ErrUnknownFrameType) {
				continue
			}
			if e, ok := errors.AsType[*api.Error](err); ok && e.Code == api.CodeProtocol {
				// A frame over its maximum or malformed: the stream cannot be resynchronised,
				// and the agent is told why.
				s.m.limitRejections.WithLabelValues("protocol_error").Inc()
				_ = c.qc.CloseWithError(quic.ConnCodeProtocol, api.CloseReason(e))
			}
			return
		}
		s.controlMessage(c, m)
	}
}

// controlMessage acts on a connection-level message from the agent of c.
func (s *Server) controlMessage(c *agentConn, m api.Message) {
	if _, ok := m.(*api.GoAway); ok {
		// The agent leaves this connection: route no new request to it. Requests in flight
		// finish; kasd closes the connection when they are done (agentLeft), having read
		// every byte of their responses.
		s.table.remove(c)
		c.agentLeft()
	}
}

// connLogger is log with the fields of agent connection c.
func connLogger(log zerolog.Logger, c *agentConn) zerolog.Logger {
	return log.With().Str("agent_id", c.agentID).Str("connection_id", c.id).Str("replica", c.replica).Logger()
}

func (s *Server) checkHello(h *api.Hello) error {
	if err := api.CheckVersion(h.Version); err != nil {
		return err
	}
	if len(h.Services) > api.MaxServices {
		s.m.limitRejections.WithLabelValues("max_services").Inc()
		return api.Errorf(api.CodeBadRequest, "an agent may offer at most %d services", api.MaxServices)
	}
	for _, name := range h.Services {
		if !serviceNameRE.MatchString(name) {
			return api.Errorf(api.CodeBadRequest, "invalid service name %q", name)
		}
	}
	// The replica and process of every connection are published in the agent's registry key,
	// the version in agent listings: a few KiB each would make that key larger than etcd
	// accepts (the registry bounds it too, registry.maxAgentValueSize).
	// All three are shown to operators (status page, agent listings, logs) as the agent sent
	// them: printable only, as the version.
	if len(h.Replica) > api.MaxReplicaLen || !printable(h.Replica) {
		s.m.limitRejections.WithLabelValues("hello_replica").Inc()
		return api.Errorf(api.CodeBadRequest, "replica name longer than %d bytes or not printable", api.MaxReplicaLen)
	}
	if len(h.Process) > api.MaxProcessLen || !printable(h.Process) {
		s.m.limitRejections.WithLabelValues("hello_process").Inc()
		return api.Errorf(api.CodeBadRequest, "process id longer than %d bytes or not printable", api.MaxProcessLen)
	}
	if len(h.AgentVersion) > api.MaxAgentVersionLen || !printable(h.AgentVersion) {
		s.m.limitRejections.WithLabelValues("hello_agent_version").Inc()
		return api.Errorf(api.CodeBadRequest, "agent version longer than %d bytes or not printable", api.MaxAgentVersionLen)
	}
	return nil
}

// printable reports whether s is UTF-8 without control characters: the agent version is shown
// to operators (status page, agent listings, logs) as the agent sent it.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

// refuse tells the agent why it is refused, counts it, and closes the connection. The reason is
// sent both as an Error frame and in the close reason, in case the frame is lost with the close.
func (s *Server) refuse(qc *quicgo.Conn, control *quicgo.Stream, e *api.Error, log zerolog.Logger) {
	s.m.agentConnections.WithLabelValues(e.Code.String()).Inc()
	if e.RetryAfter > 0 {
		// Load shedding (admission during a reconnect storm): counted, and logged only at
		// debug level, or tens of thousands of lines would cost what the refusal saves.
		log.Debug().Str("code", e.Code.String()).Str("reason", e.Message).Dur("retry_after", e.RetryAfter).Msg("agent connection refused")
	} else {
		log.Warn().Str("code", e.Code.String()).Str("reason", e.Message).Msg("agent connection refused")
	}
	if control != nil {
		_ = control.SetWriteDeadline(time.Now().Add(time.Second))
		if api.WriteFrame(control, e) == nil {
			_ = control.Close()
			// Give the agent a moment to read the frame and close first.
			t := time.NewTimer(500 * time.Millisecond)
			select {
			case <-qc.Context().Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	_ = qc.CloseWithError(quic.ConnCodeRefused, api.CloseReason(e)) // "<code>: <message>[ (retry_after_ms=N)]"
}

// peerGoAwayLinger is how long Shutdown keeps peer connections open after GoAway, so that a
// forward already on its way is answered (refused as shutting_down, which the origin retries
// elsewhere) instead of cut.
const peerGoAwayLinger = 500 * time.Millisecond

// goAwayWait bounds how long Shutdown waits for agents to leave after GoAway when no request is
// in flight.
const goAwayWait = 2 * time.Second

// Ready reports whether the server accepts agents and requests.
func (s *Server) Ready() bool { return !s.draining.Load() }

// BeginDrain starts a drain without waiting: /readyz fails (Ready is false), new agents and
// forwarded requests are refused with shutting_down (peers then send them to the agent's other
// holders), peers are told with GoAway to stop choosing this instance, and agents with GoAway to
// connect elsewhere — make before break: an agent opens its new connection first and keeps
// serving the requests already on this one until they finish. Client requests keep being
// served. Idempotent; Shutdown calls it.
func (s *Server) BeginDrain() {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return
	}
	s.draining.Store(true) // under mu: a peer accepted from now on is told at once
	s.drainStarted = time.Now()
	ctrls := make([]*peerCtrl, 0, len(s.peerCtrls))
	for pc := range s.peerCtrls {
		ctrls = append(ctrls, pc)
	}
	s.mu.Unlock()
	if s.fleet != nil {
		// Peers without a link to this kasd hear of the drain from the registry: they stop
		// naming it as a place to move agents to (rebalance.go).
		s.fleet.reg.SetDraining()
	}
	for _, pc := range ctrls {
		pc.sendGoAway()
	}
	for _, c := range s.table.all() {
		c.sendGoAway("kasd is shutting down")
	}
}

// Shutdown drains (BeginDrain, if not begun), then waits until every request in flight — local,
// forwarded out, and forwarded in from peers, each counted from its first byte — has finished
// and agents and peers have had a moment to act on GoAway, and peers have closed the
// connections they forward over, bounded by ctx and Config.ShutdownGrace; then it closes
// everything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.BeginDrain()
	s.mu.Lock()
	ctrls := len(s.peerCtrls)
	started := s.drainStarted
	s.mu.Unlock()
	peersLeave := started.Add(peerGoAwayLinger)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ShutdownGrace)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	// Wait for in-flight requests, and give agents a moment to act on GoAway and leave by
	// themselves (closing at once would discard the GoAway still in the send buffer).
	agentsLeave := started.Add(goAwayWait)
	pending := func() bool {
		now := time.Now()
		if s.inflight.Load() > 0 {
			return true
		}
		_, conns := s.table.counts()
		s.mu.Lock()
		peers := len(s.peerCtrls)
		s.mu.Unlock()
		// Peers close the connections they forward over themselves, once every response on
		// them has arrived (fleet.go peerLink.closeIfDrained): the end of a response this kasd
		// sent may still be in flight, due for retransmission, or unread in the origin's
		// receive buffer (its client reads slowly) when its last request ends here, and
		// closing the connection would discard it and cut the response at the origin. So
		// they are waited for up to the grace, not for a fixed time: a 2 s bound cut a 4 MiB
		// response to a slow client of a peer (TestFleetDrainWaitsForSlowClientOfPeer). A
		// kasd older than closeIfDrained does not close: its links hold the drain to the end
		// of the grace.
		return (conns > 0 && now.Before(agentsLeave)) ||
			(ctrls > 0 && now.Before(peersLeave)) ||
			peers > 0 ||
			(s.cfg.ShutdownWaitsFor != nil && s.cfg.ShutdownWaitsFor())
	}
	var err error
	for pending() && err == nil {
		select {
		case <-ctx.Done():
			if n := s.inflight.Load(); n > 0 {
				err = fmt.Errorf("kasd: %d requests still in flight at the end of the grace period", n)
			} else if s.cfg.ShutdownWaitsFor != nil && s.cfg.ShutdownWaitsFor() {
				err = errors.New("kasd: client connections still open at the end of the grace period")
			} else {
				err = errors.New("kasd: peers had not closed their links at the end of the grace period")
			}
		case <-t.C:
		}
	}
	return errors.Join(err, s.Close())
}

// processTag is 6 random characters [a-z2-7] (30 bits) naming this process in its ids.
func processTag() string { return strings.ToLower(rand.Text()[:6]) }

// isClosed reports whether Close has begun.
func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close closes every agent connection at once and waits for the server's goroutines. Request
// bodies still waiting for their clients are cut after closeUploadWait (stopUploads): Close
// never waits for a client. It is idempotent.
func (s *Server) Close() error {
	if s.stopRevoke != nil {
		s.stopRevoke()
	}
	s.draining.Store(true)
	s.mu.Lock()
	s.closed = true
	conns := make([]*quicgo.Conn, 0, len(s.conns))
	for qc := range s.conns {
		conns = append(conns, qc)
	}
	s.mu.Unlock()
	for _, qc := range conns {
		_ = qc.CloseWithError(quic.ConnCodeShutdown, "shutting_down: kasd closed")
	}
	if s.fleet != nil {
		s.cfg.Fleet.Registry.SetReplicaHook(nil)
		s.fleet.close()
	}
	s.quitOnce.Do(func() { close(s.quit) })
	s.stopUploads()
	s.wg.Wait()
	return nil
}

// closeUploadWait is how long Close lets the handlers of requests still in progress answer
// (their agent and peer connections are closed: 502 or 503) and end their bodies themselves,
// before it interrupts the reads of request bodies that still wait for a client.
const closeUploadWait = time.Second

// trackUpload makes body, the request body of a client request (nil for none), end with the
// request: its reads can be interrupted through the client connection's read deadline
// (Body.Interrupt), and Close ends it. The handler defers the returned func, which ends it
// (Body.Stop): a body writer still waiting for the client's next bytes then ends too. Without
// it, a client that stalls mid-upload keeps that writer, which Close waits for, forever.
//
// Setting the read deadline is a last resort: on HTTP/1.1 the failed read also ends the
// request's context (net/http takes it for the client going away), so it only ever happens
// once the handler has answered, or at Close.
//
// The linger reads and drops the rest of r.Body itself where net/http would not
// (httpserve.LingerExpectContinue).
func (s *Server) trackUpload(w http.ResponseWriter, r *http.Request, body *httpstream.Body) (end func(linger bool)) {
	http1 := r.ProtoMajor == 1
	if body == nil {
		return func(bool) {}
	}
	rc := http.NewResponseController(w)
	var ending atomic.Bool
	body.Interrupt = func() {
		if !ending.Load() {
			_ = rc.SetReadDeadline(time.Now())
		}
	}
	s.mu.Lock()
	s.uploads[body] = struct{}{}
	s.mu.Unlock()
	return func(linger bool) {
		s.mu.Lock()
		delete(s.uploads, body)
		s.mu.Unlock()
		// Before the handler returns, and until a read in progress has returned: Interrupt acts
		// on the client's connection, which net/http reads again once the handler is done.
		// With linger (kasd answered an error with Connection: close while the client still
		// sends), the read deadline is uploadLinger away instead of now: a read that fails
		// leaves its error in net/http's chunked reader, which then could not read (and drop)
		// the rest before it closes, and closing with unread bytes resets the connection,
		// often before the client read the answer (a 504 for Qkas-Deadline mid-upload reached
		// clients as "connection reset by peer").
		if linger && !body.AtEOF() {
			ending.Store(true)
			until := time.Now().Add(uploadLinger)
			_ = rc.SetReadDeadline(until)
			body.StopWait(httpserve.RSTAvoidance + 100*time.Millisecond)
			// net/http lingers after the handler only for a body it reads itself, not for
			// an Expect: 100-continue body (curl sends the expectation above 1 MiB): that one
			// is read and dropped here.
			httpserve.LingerExpectContinue(w, r, until)
			return
		}
		body.StopWait(time.Second)
		if !body.AtEOF() && http1 {
			// The rest of the body is not read: with full duplex, net/http would read it after
			// the handler returns and, at its end, start a background read that its read of the
			// next request then collides with (a panic, golang/go#68560). The read deadline
			// ends that; the connection is not reused.
			_ = rc.SetReadDeadline(time.Now())
		}
	}
}

// uploadLinger is how long the rest of an upload is read and dropped after an answer that ends
// the connection (a lingering close, as Apache's 2 s): the deadline counts from before the
// answer is flushed, and net/http then waits its own 500 ms before it closes; with only those
// 500 ms a client starved of CPU for about as long met the reset while still writing, and
// Go's client then returns its write error, not the answer (TestDeadlineMidUploadUnderLoad
// failed in 2 of 3 loaded full runs of a flaky-test hunt).
const uploadLinger = 2 * time.Second

// stopUploads ends, for Close, the request bodies of the requests still in progress, so that
// Close never waits for a client: their handlers get closeUploadWait to answer and end them,
// then the reads still waiting for a client are interrupted, counted
// (kasd_close_uploads_cut_total) and logged. Their writers then end, and Close waits for them.
func (s *Server) stopUploads() {
	deadline := time.Now().Add(closeUploadWait)
	for {
		s.mu.Lock()
		n := len(s.uploads)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.mu.Lock()
	bodies := make([]*httpstream.Body, 0, len(s.uploads))
	for b := range s.uploads {
		bodies = append(bodies, b)
	}
	s.mu.Unlock()
	cut := 0
	for _, b := range bodies {
		// A body its handler ended meanwhile is not interrupted again (Stop is idempotent),
		// and a handler ends its body before returning: this never acts on a connection that
		// serves another request already.
		if b.Stop() {
			cut++
		}
	}
	if cut > 0 {
		s.m.uploadsCut.Add(float64(cut))
		s.log.Warn().Int("uploads", cut).Int("requests", len(bodies)).Msg("kasd closed: request bodies still waiting for their clients were cut")
	}
}
