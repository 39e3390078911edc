package agentd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// Agent keeps connections to kasd and serves the streams kasd opens on them. Create it with New
// and run it with Run.
type Agent struct {
	cfg Config
	log zerolog.Logger
	m   *metrics

	svcs  atomic.Pointer[serviceSet] // the services now (reload.go)
	tr    *transports                // QUIC or TCP, fallback and return (transport.go); set by Run
	svcMu sync.Mutex                 // serialises reloads

	nextAddr atomic.Uint64
	process  string // random id of this process, sent in Hello

	mu    sync.Mutex         // guards the fields below
	slots map[int]*agentConn // live connection per slot
	// placement: which kasd instance answered at which address (learnt from Welcomes), and
	// what a slot moving for balance avoids and prefers (nextTarget).
	addrInstance map[string]string
	moves        map[int]slotMove
	// closed is set when Run ends: no request goroutine starts afterwards.
	closed bool
	// reqs are request-scoped goroutines (GitLab request-body writers), waited for by Run.
	reqs sync.WaitGroup
}

// New checks cfg and builds an Agent. It opens no connection until Run.
func New(cfg Config) (*Agent, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agentd: %w", err)
	}
	if cfg.Replica == "" {
		cfg.Replica, _ = os.Hostname()
	}
	a := &Agent{
		cfg:   cfg,
		log:   *cfg.Log,
		m:     newMetrics(cfg.Registerer),
		slots: map[int]*agentConn{},

		addrInstance: map[string]string{},
		moves:        map[int]slotMove{},
	}
	// Each agent starts at a random kasd address, so that a fleet of agents spreads its
	// connections over every kasd instead of all starting with the first address.
	a.nextAddr.Store(rand.Uint64())
	a.process = strconv.FormatUint(rand.Uint64(), 36)
	a.svcs.Store(a.newServiceSet(cfg.Services, cfg.Handlers, nil))
	return a, nil
}

// sessionCacheSize is how many TLS session tickets an agent keeps: one per server name it dials.
const sessionCacheSize = 4

// Run keeps Config.Connections connections to kasd until ctx ends, then drains them and returns
// nil once every goroutine it started has returned, including the request-body writers of
// GitLab requests (see GitLabRoundTripper). An Agent runs once.
func (a *Agent) Run(ctx context.Context) error {
	tlsConf := a.cfg.TLS.Clone()
	tlsConf.NextProtos = []string{api.ALPNAgent}
	if tlsConf.ClientSessionCache == nil {
		// TLS session resumption (docs/scale.md): a reconnect presents kasd's last ticket and
		// skips the certificate chain's verification (kasd its signature); the key exchange is
		// fresh. One entry per server name: every kasd of a fleet serving the same key accepts
		// the others' tickets. A ticket outlives a refused or failed attempt.
		tlsConf.ClientSessionCache = quic.NewClientSessionCache(sessionCacheSize)
	}
	// A socket per connection: behind a load balancer (one kasd address), the agent's
	// connections are separate flows placed on separate kasd replicas, and a redial after a
	// drain or a crash is placed anew (quic.Config.SocketPerConnection).
	qcfg := a.cfg.QUIC
	qcfg.SocketPerConnection = true
	dialer, err := quic.NewDialer(tlsConf, qcfg)
	if err != nil {
		return fmt.Errorf("agentd: %w", err)
	}
	defer dialer.Close()
	a.reportSocket(dialer)

	var wg sync.WaitGroup // slots, drainers and the QUIC probe (transport.go)
	if err := a.startTransports(ctx, dialer, tlsConf, &wg); err != nil {
		return fmt.Errorf("agentd: %w", err)
	}
	defer a.tr.tcp.Close()
	for slot := range a.cfg.Connections {
		wg.Go(func() { a.runSlot(ctx, slot, dialer, &wg) })
	}
	wg.Wait()
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.reqs.Wait()
	a.closeIdleServices()
	return nil
}

// goOwned runs f in a goroutine that Run waits for; false once Run is ending.
func (a *Agent) goOwned(f func()) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.reqs.Go(f)
	return true
}

// Connected reports how many connections to kasd are established.
func (a *Agent) Connected() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.slots)
}

// Instances returns the kasd instance ids the agent is connected to, by slot.
func (a *Agent) Instances() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, c := range a.slots {
		out = append(out, c.welcome.InstanceID)
	}
	sort.Strings(out)
	return out
}

// runSlot dials, serves until the connection ends or kasd asks the agent to go away, and
// reconnects with backoff until ctx ends. A connection that got GoAway is drained in a goroutine
// added to wg, so the replacement connection is dialled at once. Slots prefer kasd addresses and
// instances that other slots do not hold, so that one kasd dying leaves the agent reachable.
func (a *Agent) runSlot(ctx context.Context, slot int, dialer *quic.Dialer, wg *sync.WaitGroup) {
	attempt, dupes, refusedToken := 0, 0, 0
	// leaving is a connection kasd asked to move for balance (GoAway with Prefer), or whose kasd
	// drains (GoAway without Prefer: leavingDraining): it keeps serving until this slot's next
	// connection is up (make before break), then drains. A draining kasd keeps routing its
	// clients' requests to it for --drain-delay, and closes it at the end of its grace: where
	// no other kasd takes the agent (a single kasd restarting), leaving at once failed every
	// request of the drain delay with agent_not_connected.
	var leaving *agentConn
	var leavingDraining bool // for the log line
	// A connection left for balance or a draining kasd serves its requests to their end:
	// nothing forces it to close before (kasd bounds its own drain by its grace; a move has
	// the new connection up), and a watch, an event stream or a slow download on it was cut at
	// DrainTimeout. DrainTimeout bounds it once this agent stops (drainForKasd).
	drainLeaving := func(l *agentConn) { l.drainForKasd(ctx) }
	defer func() {
		if leaving != nil {
			drainLeaving(leaving)
		}
	}()
	for ctx.Err() == nil {
		tgt, ntargets, err := a.nextTarget(ctx, slot)
		var c *agentConn
		if err == nil {
			c, err = a.connect(ctx, dialer, tgt)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.countAttempt(err)
			// The instance a draining kasd left is avoided only while another answers: once an
			// attempt elsewhere failed, the round robin takes it again (a new process there
			// after the rollout, or the only kasd left).
			a.endDrainingMove(slot)
			a.dropPreference(slot) // a preferred kasd that refused (draining, overloaded) is not dialled first again
			if permanent(err) {
				refusedToken++
			}
			delay := reconnectDelay(a.cfg.Backoff, attempt, refusedToken, err, rand.Float64)
			a.connectFailed(err, tgt, attempt, delay) // one warn line per attempt, with a code and what to check
			if sleep(ctx, delay) != nil {
				return
			}
			attempt++
			continue
		}
		attempt, refusedToken = 0, 0
		a.countAttempt(nil)
		a.learnInstance(tgt, c.welcome.InstanceID)
		tries := max(ntargets, minPlacementTries)
		held, avoided := a.heldByOtherSlot(slot, c.welcome.InstanceID), a.moveAvoids(slot, c.welcome.InstanceID)
		heldTries := tries
		if leaving != nil {
			// Moving for balance: settling for a held instance (and draining the connection
			// it leaves) would put two of the agent's connections on one kasd, where the
			// instance it leaves, settled for after tries, keeps them on distinct ones.
			heldTries = 3 * tries
		}
		if held && dupes < heldTries || avoided && dupes < tries {
			// Another slot already holds this kasd instance, or it is the one this slot is
			// moving away from: try the next address (or, behind one load-balanced address,
			// a new flow from a new socket), a bounded number of times, before settling for it.
			dupes++
			c.log.Info().Msg("kasd instance already held by another connection, or being left; trying another address")
			c.drain()
			continue
		}
		dupes = 0
		a.endMove(slot)
		a.setSlot(slot, c)
		if leaving != nil {
			l, draining := leaving, leavingDraining
			leaving, leavingDraining = nil, false
			msg := "moved for balance: draining the old connection"
			if draining {
				msg = "moved away from a draining kasd: draining the old connection"
			}
			l.log.Info().Str("kas_instance_now", c.welcome.InstanceID).Msg(msg)
			wg.Go(func() { drainLeaving(l) })
		}
		reason := c.wait(ctx, c.announced.replaced)
		for reason == "reload" { // the services changed: re-announce them (reload.go)
			nc := a.reannounce(ctx, slot, dialer, c, tgt, wg)
			if nc == c { // ctx or c ended first
				reason = c.wait(ctx, nil)
				break
			}
			c = nc
			reason = c.wait(ctx, c.announced.replaced)
		}
		a.setSlot(slot, nil)
		a.noteEnd(c, reason)
		c.log.Info().Str("reason", reason).Msg("connection to kasd ended")
		if reason == "goaway" && ctx.Err() == nil {
			if m := c.goAwayMsg; m != nil && m.Prefer != "" && leaving == nil {
				// kasd is not draining, it asks this connection to move for balance: keep
				// serving on it until the replacement is up.
				a.beginMove(slot, slotMove{avoid: c.welcome.InstanceID, prefer: m.Prefer})
				leaving = c
				continue
			}
			if m := c.goAwayMsg; m == nil || m.Prefer == "" {
				// kasd drains: it bounds its requests on c by its own grace and closes c. It
				// refuses new connections until it has gone, so the redial goes elsewhere
				// while there is an elsewhere (it may come back under the same instance:
				// then it is accepted, see moveAvoids). c keeps serving until the redial
				// succeeds or kasd closes it (make before break).
				a.beginMove(slot, slotMove{avoid: c.welcome.InstanceID, draining: true})
				if leaving == nil {
					leaving, leavingDraining = c, true
				} else {
					wg.Go(func() { c.drainForKasd(ctx) })
				}
			} else {
				wg.Go(func() { c.drainForKasd(ctx) }) // a second move while one is under way
			}
			continue
		}
		c.drain()
		// Full jitter before the first reconnect: agents that lost their kasd at the same
		// moment (it crashed, or restarted) do not all dial it again at the same moment.
		if ctx.Err() == nil && sleep(ctx, reconnectDelay(a.cfg.Backoff, 0, 0, nil, rand.Float64)) != nil {
			return
		}
	}
}

// minPlacementTries is how many times a slot that reached an instance another slot holds dials
// again, at least (else once per resolved address): behind one address, a load balancer that
// places flows at random puts two connections on one of two replicas half of the time.
const minPlacementTries = 3

// countAttempt counts a connect attempt (a slot's dial or a re-announce's) that ended with err
// (nil: connected) in agentd_connect_attempts_total{result}.
func (a *Agent) countAttempt(err error) {
	result := "ok"
	if err != nil {
		result = "error"
		if code := api.CodeOf(err); code != api.CodeInternal {
			result = code.String()
		}
	}
	a.m.connectAttempts.WithLabelValues(result).Inc()
}

// refusedTokenBackoff bounds the wait after a refused token (unauthenticated, forbidden, a
// protocol version kasd does not speak) or Hello (bad_request): a new token or configuration
// needs an operator and kasd's tokens file (or GitLab, or the agent's flags) to change, so retrying every few seconds only adds load; the wait doubles from
// half a minute up to this.
const refusedTokenBackoff = 5 * time.Minute

// overloadedBackoff and overloadedBackoffMax bound the wait after kasd refused a connection as
// overloaded without a retry time (its gate before the TLS handshake answers a reconnect
// storm's excess with QUIC's CONNECTION_REFUSED, which carries none): jitter over the upper
// half of a window that starts at 2s and doubles per failed attempt, so a storm spreads itself
// out until the dials arrive at the rate kasd completes handshakes (docs/scale.md). The wait is
// at least a second: kasd counts the Initial packets one address sends within a second as one
// attempt.
const (
	overloadedBackoff    = 2 * time.Second
	overloadedBackoffMax = 32 * time.Second
)

// maxRetryHint caps the retry hint of every refusal (Error frame, close reason, or the
// reason phrase of a CONNECTION_REFUSED before TLS, which anyone who saw the dial could forge)
// at kasd's longest, its maxAdmissionRetry. The wire allows up to MaxInt64 ns: uncapped, a hint
// above MaxInt64/2 overflowed hint + jitter into a negative delay (the slot redialled in a
// tight loop), and one of years left the agent disconnected for good.
const maxRetryHint = 2 * time.Minute

// reconnectDelay is how long a slot waits before its next dial, after attempt failed attempts
// (refusedToken of them in a row refused the token; err is the last failure, nil after a
// connection ended):
//   - kasd refused with a retry hint (admission during a reconnect storm, draining): at least
//     the hint, plus full jitter over as much again, so refused agents arrive back spread over
//     the schedule kasd gave them; the hint is capped at maxRetryHint;
//   - a refused token: full jitter over the upper half of 30s·2^(refusedToken-1), at most
//     refusedTokenBackoff;
//   - kasd refused as overloaded without a hint (CONNECTION_REFUSED before the TLS
//     handshake): jitter over the upper half of 2s·2^attempt, at most overloadedBackoffMax;
//   - otherwise full jitter: uniformly in [0, b's delay for attempt without jitter).
//
// rnd returns values in [0, 1).
func reconnectDelay(b quic.Backoff, attempt, refusedToken int, err error, rnd func() float64) time.Duration {
	jitter := func(d time.Duration) time.Duration { return time.Duration(rnd() * float64(d)) }
	if refusedToken > 0 && permanent(err) {
		ceiling := min(30*time.Second<<min(refusedToken-1, 10), refusedTokenBackoff)
		return ceiling/2 + jitter(ceiling/2)
	}
	if hint := api.RetryAfterOf(err); hint > 0 {
		hint = min(hint, maxRetryHint) // then hint + jitter(hint) cannot overflow
		return hint + jitter(hint)
	}
	if api.CodeOf(err) == api.CodeOverloaded {
		// Refused without a hint: kasd's gate before the TLS handshake (CONNECTION_REFUSED).
		// Coming back within b's 100 ms would only be refused again.
		ceiling := min(overloadedBackoff<<min(attempt, 10), overloadedBackoffMax)
		return ceiling/2 + jitter(ceiling/2)
	}
	b.Jitter = -1 // the exponential ceiling; the jitter is ours
	return jitter(b.Delay(attempt))
}

// sleep waits d or until ctx ends (then it returns ctx.Err()).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// target is one resolved kasd address.
type target struct {
	addr       *net.UDPAddr
	serverName string
	// configured is the KasAddresses entry addr was resolved from; when resolving failed (no
	// addr), the entries that failed, so that the failure's log line names them.
	configured string
}

func (t target) String() string {
	if t.addr == nil {
		return t.configured
	}
	return t.addr.String()
}

// nextTarget resolves every configured address (a DNS name with several addresses counts as
// several) and returns the next one, round-robin, skipping addresses (and the kasd instances
// last seen behind them) that other slots are connected to while there is an alternative. A
// slot moving for balance (kasd's GoAway with Prefer) takes the address last seen answering as
// the preferred instance, else any other than the one it leaves; a slot whose kasd drains, any
// other than the draining one.
func (a *Agent) nextTarget(ctx context.Context, slot int) (target, int, error) {
	var all []target
	var errs []error
	var failed []string
	for _, addr := range a.cfg.KasAddresses {
		host, addrs, err := quic.ResolveAll(ctx, addr)
		if err != nil {
			errs = append(errs, err)
			failed = append(failed, addr)
			continue
		}
		name := host
		if a.cfg.TLS.ServerName != "" {
			name = a.cfg.TLS.ServerName
		}
		for _, ua := range addrs {
			all = append(all, target{addr: ua, serverName: name, configured: addr})
		}
	}
	if len(all) == 0 {
		return target{configured: strings.Join(failed, ",")}, 0, errors.Join(errs...)
	}
	held, heldInstances, seen, move := a.placementState(slot)
	start := int((a.nextAddr.Add(1) - 1) % uint64(len(all)))
	// Rank each address: 0 the preferred instance, 1 an instance nobody here holds (or not
	// known yet), 2 the instance being left, 3 an address another slot is connected to.
	best, bestRank := 0, 4
	for i := range all {
		k := (start + i) % len(all)
		addr := all[k].addr.String()
		inst, known := seen[addr]
		rank := 1
		switch {
		case held[addr]:
			rank = 3
		case known && heldInstances[inst]:
			rank = 3
		case known && move.prefer != "" && inst == move.prefer:
			rank = 0
		case known && move.avoid != "" && inst == move.avoid:
			rank = 2
		}
		if rank < bestRank {
			best, bestRank = k, rank
		}
	}
	return all[best], len(all), nil
}

// slotMove is what a slot moving for balance avoids (the instance that asked it to move) and
// prefers (the instance kasd named as the least loaded). A slot whose kasd drains (GoAway
// without Prefer) avoids that instance too, with draining set: it dials it only when nothing
// else is left, and a connection it accepts (a new process under the same instance id) is kept.
type slotMove struct {
	avoid, prefer string
	draining      bool
}

// placementState returns, under one lock, the addresses and instances other slots hold, the
// instance last seen at each address, and slot's move, if any.
func (a *Agent) placementState(slot int) (held, heldInstances map[string]bool, seen map[string]string, move slotMove) {
	a.mu.Lock()
	defer a.mu.Unlock()
	held, heldInstances = map[string]bool{}, map[string]bool{}
	for s, c := range a.slots {
		if s != slot {
			held[c.qc.RemoteAddr().String()] = true
			heldInstances[c.welcome.InstanceID] = true
		}
	}
	return held, heldInstances, maps.Clone(a.addrInstance), a.moves[slot]
}

// learnInstance records that instance answered at t's address. Bounded by the number of
// resolved addresses the agent dialled.
func (a *Agent) learnInstance(t target, instance string) {
	if t.addr == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.addrInstance) >= maxLearntAddrs {
		clear(a.addrInstance) // a DNS name that keeps changing: start over rather than grow
	}
	a.addrInstance[t.addr.String()] = instance
}

// maxLearntAddrs bounds the address → instance map.
const maxLearntAddrs = 1024

func (a *Agent) beginMove(slot int, m slotMove) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.moves[slot] = m
}

func (a *Agent) endMove(slot int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.moves, slot)
}

// endDrainingMove ends slot's move if it is only avoiding a draining kasd.
func (a *Agent) endDrainingMove(slot int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m, ok := a.moves[slot]; ok && m.draining {
		delete(a.moves, slot)
	}
}

// dropPreference forgets the instance slot's move prefers, keeping what it avoids.
func (a *Agent) dropPreference(slot int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m, ok := a.moves[slot]; ok && m.prefer != "" {
		m.prefer = ""
		a.moves[slot] = m
	}
}

// moveAvoids reports whether slot is moving away from instance.
func (a *Agent) moveAvoids(slot int, instance string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.moves[slot]
	return ok && !m.draining && m.avoid == instance
}

func (a *Agent) heldByOtherSlot(slot int, instance string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for s, c := range a.slots {
		if s != slot && c.welcome.InstanceID == instance {
			return true
		}
	}
	return false
}

func (a *Agent) setSlot(slot int, c *agentConn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c == nil {
		delete(a.slots, slot)
	} else {
		a.slots[slot] = c
	}
	a.m.connections.Set(float64(len(a.slots)))
}

// connect dials t and performs the Hello/Welcome exchange on the control stream.
func (a *Agent) connect(ctx context.Context, dialer *quic.Dialer, t target) (*agentConn, error) {
	if slots := a.cfg.ConnectSlots; slots != nil {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-slots }()
	}
	qc, err := a.dialKasd(ctx, dialer, t) // QUIC or TCP (transport.go)
	if err != nil {
		return nil, refusalFromClose(err)
	}
	set := a.svcs.Load()
	welcome, control, err := a.handshake(ctx, qc, set.names)
	if err != nil {
		_ = qc.CloseWithError(quic.ConnCodeRefused, "handshake failed")
		return nil, &helloError{err} // QUIC is up: a timeout now is kasd not answering (connerr.go)
	}
	c := a.startConn(qc, control, welcome)
	c.announced = set
	c.quicBack = a.backChan(qc)
	return c, nil
}

// welcomeWait is how long an agent connected over QUIC waits for kasd's Welcome after its Hello:
// twice the QUIC handshake timeout, 10s at the default, as long as kasd's own
// --handshake-timeout gives the agent for its Hello. A kasd that completed the QUIC handshake is
// alive, and a slow Welcome is a kasd busy admitting a reconnect storm: an agent that gave up
// after the handshake timeout (5s) dialled again and paid a new handshake and a new place in
// kasd's queue for a connection kasd was about to accept (in 10,000-agent restarts on 2 shared
// cores kasd accepted about 1,150 more connections than there were agents; docs/scale.md).
func welcomeWait(handshake time.Duration) time.Duration { return 2 * handshake }

func (a *Agent) handshake(ctx context.Context, qc *quicgo.Conn, services []string) (*api.Welcome, *quicgo.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, welcomeWait(a.cfg.QUIC.HandshakeTimeout))
	defer cancel()
	control, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = control.SetDeadline(deadline)
	hello := &api.Hello{
		Version:      api.ProtocolVersion,
		Token:        a.cfg.Token,
		AgentVersion: a.cfg.Version,
		Replica:      a.cfg.Replica,
		Process:      a.process,
		Services:     services,
		Features:     api.FeatureControlOnStreams,
	}
	if err := api.WriteFrame(control, hello); err != nil {
		return nil, nil, refusalFromClose(err)
	}
	m, err := api.ReadExpect(control, api.TypeWelcome)
	if err != nil {
		return nil, nil, refusalFromClose(err)
	}
	_ = control.SetDeadline(time.Time{})
	w := m.(*api.Welcome)
	if err := api.CheckVersion(w.Version); err != nil {
		return nil, nil, err
	}
	return w, control, nil
}

// refusalFromClose turns kasd's connection close reason ("<code>: <message>", with a retry hint
// when kasd sheds load: api.CloseReason) back into a typed error when the connection was closed
// before the Error frame could be read. A QUIC-level CONNECTION_REFUSED is kasd being
// overloaded too: its gate before the TLS handshake says so in the same format, with a retry
// hint (kasd/admission.go); quic-go's own refusals (its queue of handshaked connections was
// full) and a kasd without the quic-go patch send no reason, hence no hint.
func refusalFromClose(err error) error {
	var appErr *quicgo.ApplicationError
	if errors.As(err, &appErr) && appErr.Remote {
		if e, ok := api.ParseCloseReason(appErr.ErrorMessage); ok {
			e.Err = err
			return e
		}
	}
	var trErr *quicgo.TransportError
	if errors.As(err, &trErr) && trErr.Remote && trErr.ErrorCode == quicgo.ConnectionRefused {
		if e, ok := api.ParseCloseReason(trErr.ErrorMessage); ok && e.Code == api.CodeOverloaded {
			// Sent in an Initial packet, which anyone who saw the dial could forge: its hint is
			// capped, as every refusal's, by reconnectDelay (maxRetryHint).
			e.Err = err
			return e
		}
		return &api.Error{Code: api.CodeOverloaded, Message: "kasd refused the connection", Err: err}
	}
	return err
}

// permanent reports refusals that retrying soon will not fix.
func permanent(err error) bool {
	switch api.CodeOf(err) {
	case api.CodeUnauthenticated, api.CodeForbidden, api.CodeUnsupportedVersion,
		// kasd refused the Hello itself (a service name, replica or process it does not
		// accept): this agent's configuration must change first.
		api.CodeBadRequest:
		return true
	}
	return false
}

// reportSocket logs the UDP buffers the kernel granted the dialer's socket (a warning when less
// than asked: under load the kernel drops what does not fit) and exports them with the socket's
// drop count (agentd_udp_*).
func (a *Agent) reportSocket(d *quic.Dialer) {
	b, err := d.SocketBuffers()
	if err != nil {
		a.log.Debug().Err(err).Msg("cannot read the UDP socket's buffer sizes")
		return
	}
	want := a.cfg.QUIC.WithDefaults()
	ev := a.log.Debug()
	if (want.SocketReceiveBuffer > 0 && b.Receive < want.SocketReceiveBuffer) || (want.SocketSendBuffer > 0 && b.Send < want.SocketSendBuffer) {
		ev = a.log.Warn().Str("hint", "raise net.core.rmem_max and net.core.wmem_max, or grant CAP_NET_ADMIN (docs/scale.md)")
	}
	ev.Int("receive_buffer", b.Receive).Int("send_buffer", b.Send).Bool("forced", b.ReceiveForced || b.SendForced).
		Int("wanted", max(want.SocketReceiveBuffer, want.SocketSendBuffer)).Bool("gro", d.GRO()).Msg("UDP socket buffers")
	// An Agent runs once, so this registers once per registry.
	_ = a.cfg.Registerer.Register(quic.NewSocketCollector("agentd", map[string]quic.Socket{"kasd": d}))
}
