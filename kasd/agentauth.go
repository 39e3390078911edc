package kasd

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/quic"
)

// TokenFileAuth authenticates agents against a tokens file (standalone mode): the token's
// sha256 must be listed.
type TokenFileAuth struct {
	Store *auth.TokenStore
}

// Authenticate implements AgentAuthenticator.
func (a TokenFileAuth) Authenticate(_ context.Context, token string) (string, error) {
	if id, ok := a.Store.Lookup(token); ok {
		return id, nil
	}
	return "", api.Errorf(api.CodeUnauthenticated, "agent token not recognized")
}

// stillValid implements revocableAuth: the token still names agentID in the file in use.
func (a TokenFileAuth) stillValid(token, agentID string) bool {
	id, ok := a.Store.Lookup(token)
	return ok && id == agentID
}

// onChange implements revocableAuth: f runs after each successful reload of the tokens file.
func (a TokenFileAuth) onChange(f func()) (stop func()) { return a.Store.OnReload(f) }

// revocableAuth is an AgentAuthenticator whose verdict on a token it admitted can change (a
// reloaded agent tokens file that no longer lists the token, or lists it for another agent).
// The Server checks every connection again after each change and closes those whose token
// is no longer valid for their agent (revokeAgents); a connection whose handshake raced the
// change is checked again once it is in the table, so none slips between the two.
type revocableAuth interface {
	stillValid(token, agentID string) bool
	onChange(f func()) (stop func())
}

// revokeAgents closes every agent connection whose token the authenticator no longer admits
// for its agent, at once: the agent's requests in flight on it end with an error (a revoked
// token is presumed leaked, so nothing more runs on its behalf), and its reconnections are
// refused (unauthenticated). Counted in kasd_agent_connections_total{result="revoked"}.
func (s *Server) revokeAgents() {
	for _, c := range s.table.all() {
		if s.revocable.stillValid(c.token, c.agentID) {
			continue
		}
		s.revoke(c, "its token is no longer valid for it (agent tokens file reloaded)")
	}
}

// revoke closes c, whose token is no longer valid for its agent, at once, once.
func (s *Server) revoke(c *agentConn, why string) {
	if c.revoked.Swap(true) {
		return
	}
	s.table.remove(c) // no new request is routed to it
	s.m.agentConnections.WithLabelValues("revoked").Inc()
	log := connLogger(s.log.With().Str("remote", c.qc.RemoteAddr().String()).Logger(), c)
	log.Warn().Msg("agent disconnected: " + why)
	_ = c.qc.CloseWithError(quic.ConnCodeRefused, api.CloseReason(api.Errorf(api.CodeUnauthenticated, "agent token revoked")))
}

type agentSourceKey struct{}

// WithAgentSource records in ctx the address an agent connection comes from (a *net.UDPAddr or
// *net.TCPAddr), for SourceLimitedAuth. The Server does it for every agent handshake.
func WithAgentSource(ctx context.Context, addr net.Addr) context.Context {
	return context.WithValue(ctx, agentSourceKey{}, addr)
}

// agentSource returns the source of an agent connection as a rate-limit key: the IPv4 address,
// or the /64 of an IPv6 address (one host usually holds a whole /64); false if ctx has none.
func agentSource(ctx context.Context) (netip.Prefix, bool) {
	addr, _ := ctx.Value(agentSourceKey{}).(net.Addr)
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	if !ip.IsValid() {
		return netip.Prefix{}, false
	}
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}

// SourceLimits bound the failed agent authentications one source address may cause (see
// SourceLimitedAuth). Zero fields take their defaults.
type SourceLimits struct {
	// Burst is how many failed authentications a source may cause before it is limited.
	// Default 20.
	Burst int
	// Rate is how many failed authentications per second a source earns back, up to Burst: a
	// source that used its burst gets one attempt every 1/Rate seconds. Default 0.2 (one
	// attempt every 5 s).
	Rate float64
	// MaxSources bounds the sources remembered; beyond it the least recently limited one is
	// forgotten. Default 65536 (about 10 MiB).
	MaxSources int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (l SourceLimits) withDefaults() SourceLimits {
	if l.Burst == 0 {
		l.Burst = 20
	}
	if l.Rate == 0 {
		l.Rate = 0.2
	}
	if l.MaxSources == 0 {
		l.MaxSources = 65536
	}
	if l.Now == nil {
		l.Now = time.Now
	}
	return l
}

// SourceLimitedAuth puts a token bucket per source address in front of another
// AgentAuthenticator (GitLab's agent_info, which costs a call to GitLab and its rate limit),
// so that a source presenting unknown tokens cannot spend GitLab's budget and starve real
// agents. Each attempt takes one token from its source's bucket before the inner
// authenticator is asked; it is given back unless the inner authenticator refused the token
// (unauthenticated or forbidden): admissions and GitLab being unavailable cost the source
// nothing. A source whose bucket is empty is refused at once with overloaded and a retry
// hint, without asking the inner authenticator: after its burst, a source gets one attempt
// every 1/Rate seconds (slowed) and every other attempt is refused. Attempts without a source
// in their context (not from an agent connection) pass unlimited.
//
// Sources that share an address (agents behind one NAT) share a bucket: one of them retrying
// a revoked token slows the others' new connections (agentd retries with backoff; connections
// already admitted are not affected). Raise Burst for such sites.
//
// Safe for concurrent use; it starts no goroutines.
type SourceLimitedAuth struct {
	next AgentAuthenticator
	lim  SourceLimits

	refusals  prometheus.Counter
	failures  prometheus.Counter
	evictions prometheus.Counter

	mu      sync.Mutex // guards the fields below
	sources map[netip.Prefix]*list.Element
	lru     list.List // of *sourceBucket, least recently touched first
}

type sourceBucket struct {
	src    netip.Prefix
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// NewSourceLimitedAuth wraps next; its metrics go to reg.
func NewSourceLimitedAuth(next AgentAuthenticator, lim SourceLimits, reg prometheus.Registerer) (*SourceLimitedAuth, error) {
	lim = lim.withDefaults()
	switch {
	case next == nil:
		return nil, errors.New("source limited auth: no authenticator to wrap")
	case lim.Burst < 1 || lim.MaxSources < 1 || !(lim.Rate > 0) || math.IsInf(lim.Rate, 0):
		return nil, fmt.Errorf("source limited auth: burst (%d), rate (%v) and max sources (%d) must be positive", lim.Burst, lim.Rate, lim.MaxSources)
	}
	a := &SourceLimitedAuth{next: next, lim: lim, sources: map[netip.Prefix]*list.Element{}}
	a.refusals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_agent_auth_source_refusals_total",
		Help: "Agent authentications refused before the authenticator (GitLab) was asked, because their source address had too many failed ones (--agent-auth-failure-burst, --agent-auth-failure-rate).",
	})
	a.failures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_agent_auth_failures_total",
		Help: "Agent tokens the authenticator refused (unauthenticated or forbidden), each counted against its source address.",
	})
	a.evictions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kasd_agent_auth_source_evictions_total",
		Help: "Source addresses forgotten by the failed-authentication limiter because it tracked its maximum (--agent-auth-max-sources).",
	})
	sources := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kasd_agent_auth_sources",
		Help: "Source addresses the failed-authentication limiter tracks.",
	}, func() float64 { a.mu.Lock(); defer a.mu.Unlock(); return float64(len(a.sources)) })
	for _, c := range []prometheus.Collector{a.refusals, a.failures, a.evictions, sources} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("source limited auth: %w", err)
		}
	}
	return a, nil
}

// Authenticate implements AgentAuthenticator.
// reverifyAfter implements reverifiedAuth when the wrapped authenticator does; 0 otherwise.
func (a *SourceLimitedAuth) reverifyAfter() time.Duration {
	if r, ok := a.next.(reverifiedAuth); ok {
		return r.reverifyAfter()
	}
	return 0
}

// reverify implements reverifiedAuth: the wrapped authenticator's, outside the source budget
// (a check of a connection in use is not a new connection from its source).
func (a *SourceLimitedAuth) reverify(ctx context.Context, token string) (string, error) {
	if r, ok := a.next.(reverifiedAuth); ok {
		return r.reverify(ctx, token)
	}
	return a.next.Authenticate(ctx, token)
}

func (a *SourceLimitedAuth) Authenticate(ctx context.Context, token string) (string, error) {
	src, ok := agentSource(ctx)
	if !ok {
		return a.next.Authenticate(ctx, token)
	}
	if wait, ok := a.take(src); !ok {
		a.refusals.Inc()
		return "", &api.Error{Code: api.CodeOverloaded, RetryAfter: wait,
			Message: fmt.Sprintf("too many failed agent authentications from this address; retry in %v", (wait + time.Second - 1).Truncate(time.Second))}
	}
	id, err := a.next.Authenticate(ctx, token)
	if code := api.CodeOf(err); err != nil && (code == api.CodeUnauthenticated || code == api.CodeForbidden) {
		a.failures.Inc()
		return id, err
	}
	a.giveBack(src)
	return id, err
}

// take takes one token from src's bucket; if it has none, it says how long until it has one.
func (a *SourceLimitedAuth) take(src netip.Prefix) (wait time.Duration, ok bool) {
	now := a.lim.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.bucketLocked(src, now)
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) / a.lim.Rate * float64(time.Second)), false
	}
	b.tokens--
	return 0, true
}

// giveBack returns the token take took; a bucket that is full again is forgotten (a fresh
// one is the same).
func (a *SourceLimitedAuth) giveBack(src netip.Prefix) {
	now := a.lim.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.bucketLocked(src, now)
	b.tokens = min(b.tokens+1, float64(a.lim.Burst))
	if b.tokens >= float64(a.lim.Burst) {
		a.lru.Remove(a.sources[src])
		delete(a.sources, src)
	}
}

// bucketLocked returns src's bucket brought up to date (a new, full one if src is unknown) and
// marks it most recently used, forgetting the least recently used one when full.
func (a *SourceLimitedAuth) bucketLocked(src netip.Prefix, now time.Time) *sourceBucket {
	if e, ok := a.sources[src]; ok {
		b := e.Value.(*sourceBucket)
		if d := now.Sub(b.at); d > 0 {
			b.tokens = min(float64(a.lim.Burst), b.tokens+d.Seconds()*a.lim.Rate)
			b.at = now
		}
		a.lru.MoveToBack(e)
		return b
	}
	if len(a.sources) >= a.lim.MaxSources {
		oldest := a.lru.Front()
		delete(a.sources, oldest.Value.(*sourceBucket).src)
		a.lru.Remove(oldest)
		a.evictions.Inc()
	}
	b := &sourceBucket{src: src, tokens: float64(a.lim.Burst), at: now}
	a.sources[src] = a.lru.PushBack(b)
	return b
}
