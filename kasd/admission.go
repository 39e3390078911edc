package kasd

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/api"
)

// Admission of agent connections (docs/scale.md).
//
// After a kasd restart every agent reconnects at once. Each new connection holds an admission
// slot from its acceptance until its token has been checked (control stream, Hello, the
// authenticator: a tokens-file lookup or a GitLab round trip); Config.MaxPendingHandshakes
// slots exist. A connection that finds none is refused at once with overloaded and a
// RetryAfter hint in its close reason (api.CloseReason), and agentd waits at least that long,
// plus full jitter over as much again, before it dials again.
//
// The hints form a schedule: each refusal is given the next free place on a timeline that
// advances by the time one admission takes at the rate kasd has been admitting (connections
// whose token check finished, per second: the best full second of the last rateWindow; before
// any was measured, initialAdmissionRate), so refused agents come back spread at about the
// rate kasd admits them instead of all at once: most get in at their second attempt. The rate is the measured one,
// not a floor above it: with a floor of one admission per slot per second (1,000/s by
// default) a kasd that admitted 100/s during a storm sent refused agents back ten times too
// early, and each needed 10.6 attempts on average (10,000 agents, make bench-scale).

// The QUIC/TLS handshake comes first, and it is the expensive part (a key exchange and a
// signature, several packets): quic-go completes it before a connection is accepted. So a
// second gate sits before it (Server.agentHandshakeGate, installed on the agent listener with
// quic.Listener.SetHandshakeGate): at most Config.MaxPendingHandshakes connections may be in
// their QUIC handshake, counted from their first Initial packet until they are accepted or
// fail; an Initial beyond that is answered with QUIC's CONNECTION_REFUSED, before any TLS work
// and without connection state, counted as kasd_limit_rejections_total{reason="max_tls_handshakes"}
// and kasd_agent_connections_total{result="overloaded"}. The refusal carries its retry time in
// its reason phrase (api.CloseReason, sent by the carried quic-go patch), booked on the same
// timeline as the slot refusals below, at least refusalDedup ahead; agentd waits that long plus
// full jitter over as much again. (From a kasd without the patch the phrase is empty, and agentd
// backs off on its own: jitter over the upper half of a window that starts at 2s and doubles;
// agentd/agent.go, reconnectDelay.)
// Without the gate a burst of 10,000 reconnecting agents started 10,000 handshakes at once;
// on a CPU-short kasd they all took longer than the handshake timeout, failed, and were dialled
// again: no progress at all (docs/scale.md).

// Bounds of the RetryAfter hint given to refused agents. agentd caps every hint at
// maxAdmissionRetry (agentd/agent.go, maxRetryHint): raising it here needs raising it there.
const (
	minAdmissionRetry = 500 * time.Millisecond
	maxAdmissionRetry = 2 * time.Minute
)

// initialAdmissionRate is the admission rate the retry schedule assumes while none has been
// measured yet (the first second of a storm, when every slot is held by a handshake still in
// progress): per second, at most one per slot.
const initialAdmissionRate = 50

// rateWindow is how many one-second buckets of admissions the retry schedule's rate looks at.
const rateWindow = 10

// admission bounds concurrent agent handshakes and schedules refused agents' retries.
type admission struct {
	slots chan struct{}
	now   func() time.Time

	inProgress atomic.Int64

	tlsLimit int64        // QUIC/TLS handshakes allowed in progress (beginTLS)
	tls      atomic.Int64 // QUIC/TLS handshakes in progress

	mu     sync.Mutex // guards the fields below
	second time.Time  // start of the current one-second bucket
	done   int        // admissions finished in the current bucket
	// recent holds the admissions finished in each of the last len(recent) full seconds,
	// the newest at recent[0] (rollLocked).
	recent  [rateWindow]int
	horizon time.Time // the latest retry time handed out
	// refused remembers when each address was last refused by the gate before TLS, and the
	// retry time it was given (refuseTLS); swept of refusals that no longer hold
	// (tlsRefusal.holds) at most once per refusalDedup.
	refused      map[netip.AddrPort]tlsRefusal
	refusedSwept time.Time
}

// tlsRefusal is one address's last refusal by the gate before TLS.
type tlsRefusal struct {
	at      time.Time // when
	retryAt time.Time // the retry time it was given
}

func newAdmission(limit int, reg prometheus.Registerer) *admission {
	a := &admission{slots: make(chan struct{}, limit), now: time.Now, tlsLimit: int64(limit)}
	if reg != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasd_admission_tls_handshakes",
			Help: "Agent connections in their QUIC/TLS handshake (from their first Initial packet until accepted or failed; at most --max-pending-handshakes, the excess is refused with CONNECTION_REFUSED before any TLS work).",
		}, func() float64 { return float64(a.tls.Load()) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasd_admission_handshakes",
			Help: "Agent connections accepted whose token has not been checked yet (each holds an admission slot; at most --max-pending-handshakes).",
		}, func() float64 { return float64(a.inProgress.Load()) }))
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kasd_admission_retry_horizon_seconds",
			Help: "How far ahead the latest retry time given to a refused agent is: the backlog of refused agents, in seconds of admission.",
		}, func() float64 { return a.backlog().Seconds() }))
	}
	return a
}

// tryAcquire takes a slot if one is free. release gives it back; admitted says whether the
// connection got through (its token was checked), which counts towards the admission rate.
// Calls after the first do nothing.
func (a *admission) tryAcquire() (release func(admitted bool), ok bool) {
	select {
	case a.slots <- struct{}{}:
	default:
		return nil, false
	}
	a.inProgress.Add(1)
	var once sync.Once
	return func(admitted bool) {
		once.Do(func() {
			<-a.slots
			a.inProgress.Add(-1)
			if admitted {
				a.mu.Lock()
				a.rollLocked(a.now())
				a.done++
				a.mu.Unlock()
			}
		})
	}, true
}

// beginTLS takes a place among the QUIC/TLS handshakes in progress if one is free; end gives
// it back.
func (a *admission) beginTLS() (end func(), ok bool) {
	if a.tls.Add(1) > a.tlsLimit {
		a.tls.Add(-1)
		return nil, false
	}
	return a.endTLS, true
}

func (a *admission) endTLS() { a.tls.Add(-1) }

// agentHandshakeGate is the agent listener's quic.HandshakeGate: it refuses, before the TLS
// handshake, a new connection beyond Config.MaxPendingHandshakes handshakes in progress.
//
// An address refused a moment ago stays refused until the retry time it was given, even when a
// place is free: its dial is over (or about to be, once a refusal reaches it), and what arrives
// from it meanwhile is the rest of that dial's first flight or its retransmission. Admitted, such
// a packet starts a connection from a fragment of a ClientHello whose client has gone: a
// handshake that never completes and holds its place until quic-go's handshake timeout. In a
// reconnect storm that is most of the places (first flights come in pairs of Initial packets:
// a place freed between the two went to the second), and admissions fell to a few a second
// with every place held (docs/scale.md "Refused dials").
func (s *Server) agentHandshakeGate(remote net.Addr) (end func(), reason string, ok bool) {
	if !s.admit.refusedUntilRetry(remote) {
		if end, ok := s.admit.beginTLS(); ok {
			return end, "", true
		}
	}
	retry, first := s.admit.refuseTLS(remote)
	if first {
		s.m.limitRejections.WithLabelValues("max_tls_handshakes").Inc()
		s.m.agentConnections.WithLabelValues("overloaded").Inc()
	}
	return nil, api.CloseReason(&api.Error{Code: api.CodeOverloaded, Message: "kasd is at its maximum of TLS handshakes", RetryAfter: retry}), false
}

// refusalDedup: Initial packets refused from one address within this long count as one
// connection attempt. The gate sees packets, not dials: a client's first flight is two Initial
// packets (its ClientHello with a post-quantum key share does not fit in one), and under a
// storm quic-go drops refusals it cannot send fast enough, so clients retransmit their Initials
// a few hundred milliseconds later. agentd waits at least this long before dialling again
// after such a refusal (agentd/agent.go, overloadedBackoff).
const refusalDedup = time.Second

// maxRefusedAddrs bounds the addresses remembered for refusalDedup (about 40 bytes each);
// beyond it refusals are counted once per packet.
const maxRefusedAddrs = 1 << 16

// refusedUntilRetry reports whether remote was refused by the gate before TLS and has not
// reached its retry time yet (nor refusalDedup since the refusal).
func (a *admission) refusedUntilRetry(remote net.Addr) bool {
	ua, ok := remote.(*net.UDPAddr)
	if !ok {
		return false
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.refused[ua.AddrPort()]
	return ok && r.holds(now)
}

// holds reports whether the refusal still stands at now: before its retry time, or within
// refusalDedup of it.
func (r tlsRefusal) holds(now time.Time) bool {
	return now.Before(r.retryAt) || now.Sub(r.at) < refusalDedup
}

// refuseTLS books a retry time for remote, refused by the gate before TLS, and returns how far
// ahead it is (at least refusalDedup). first is false while remote's last refusal holds
// (tlsRefusal.holds): the same dial's other Initial packets and its retransmissions, which get
// the retry time already booked for it instead of another place on the timeline.
func (a *admission) refuseTLS(remote net.Addr) (retry time.Duration, first bool) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	ua, ok := remote.(*net.UDPAddr)
	if !ok {
		return a.bookLocked(now, refusalDedup), true
	}
	addr := ua.AddrPort()
	if now.Sub(a.refusedSwept) > refusalDedup {
		for k, r := range a.refused {
			if !r.holds(now) {
				delete(a.refused, k)
			}
		}
		a.refusedSwept = now
	}
	if r, ok := a.refused[addr]; ok && r.holds(now) {
		// The same dial's other Initial, or a retransmission: its client was told retryAt (or
		// will be, when this refusal reaches it), and a refusal it never hears must not book a
		// later place it would be held to.
		return max(r.retryAt.Sub(now), minAdmissionRetry), false
	}
	retry = a.bookLocked(now, refusalDedup)
	if a.refused == nil {
		a.refused = map[netip.AddrPort]tlsRefusal{}
	}
	if len(a.refused) < maxRefusedAddrs {
		a.refused[addr] = tlsRefusal{at: now, retryAt: now.Add(retry)}
	}
	return retry, true
}

// rollLocked moves the one-second buckets forward to now.
func (a *admission) rollLocked(now time.Time) {
	d := now.Sub(a.second)
	if d < time.Second {
		return
	}
	if d >= rateWindow*time.Second {
		a.second, a.done, a.recent = now, 0, [rateWindow]int{}
		return
	}
	for ; d >= time.Second; d -= time.Second {
		copy(a.recent[1:], a.recent[:rateWindow-1])
		a.recent[0], a.done = a.done, 0
		a.second = a.second.Add(time.Second)
	}
}

// rateLocked is the admission rate the retry schedule runs at: the most admissions kasd
// finished in one second over the last rateWindow seconds. Not the last second alone: while
// handshakes pile up in a storm, a second's admissions fall to a tenth of what kasd managed a
// few seconds before and manages again a few seconds later, and every refusal booked at that
// rate pushed the schedule towards its 2-minute cap while kasd then sat idle (10,000 agents,
// make bench-scale, docs/scale.md).
func (a *admission) rateLocked() int {
	return slices.Max(a.recent[:])
}

// retryAfter books the next place on the retry timeline for a refused agent and returns how
// long from now it is, within [minAdmissionRetry, maxAdmissionRetry].
func (a *admission) retryAfter() time.Duration {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bookLocked(now, minAdmissionRetry)
}

// bookLocked books the next place on the retry timeline, at least least ahead of now.
func (a *admission) bookLocked(now time.Time, least time.Duration) time.Duration {
	a.rollLocked(now)
	rate := a.rateLocked() // admissions per second, the best second of the last rateWindow
	if rate == 0 {
		rate = min(initialAdmissionRate, cap(a.slots))
	}
	step := time.Second / time.Duration(rate)
	a.horizon = later(a.horizon, now.Add(least)).Add(step)
	if max := now.Add(maxAdmissionRetry); a.horizon.After(max) {
		a.horizon = max
	}
	return a.horizon.Sub(now)
}

// backlog is how far ahead of now the retry timeline reaches.
func (a *admission) backlog() time.Duration {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	return max(a.horizon.Sub(now), 0)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
