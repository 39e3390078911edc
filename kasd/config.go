package kasd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/tracing"
)

// AgentAuthenticator maps an agent token to an agent id. Implementations return an *api.Error:
// unauthenticated for a bad token, auth_unavailable when the answer cannot be had right now.
type AgentAuthenticator interface {
	Authenticate(ctx context.Context, token string) (agentID string, err error)
}

// Config configures a Server. WithDefaults fills in defaults; Validate checks the result.
type Config struct {
	// InstanceID names this kasd in Welcome messages, logs and the fleet registry.
	// Default: host name plus a random suffix.
	InstanceID string
	// Version is reported in Welcome and the registry. Default "dev".
	Version string
	// AgentAuth checks agent tokens. Required.
	AgentAuth AgentAuthenticator
	// ClientAuth verifies client JWTs on the HTTP API. Required.
	ClientAuth *auth.Verifier
	// Fleet joins this server to other kasd replicas through the etcd registry. nil: single kasd.
	Fleet *FleetConfig
	// Modules serves agent-to-GitLab requests (/modules/{module}/{path}) that agents open as
	// streams of kind gitlab; the agent token of the connection is in the request context
	// (gitlab.AgentTokenFrom). nil: such requests are refused with not_found.
	Modules http.Handler

	// HandshakeTimeout bounds an agent's Hello after its QUIC handshake. Default 10s.
	HandshakeTimeout time.Duration
	// RouteTimeout bounds how long a request waits for its agent to connect, counted from the
	// request's arrival: attempts on holders that failed before the request reached the agent
	// (a dead connection found dead) count. Default 5s.
	RouteTimeout time.Duration
	// ResponseHeaderTimeout bounds the time from sending a request to the agent until its
	// response header arrives, counted from the request body's last byte sent: waiting for the
	// client's next body bytes does not count (ClientStallTimeout bounds that), waiting for the
	// agent to take them does. The body may then stream for as long as it needs (watches, logs).
	// Default 60s.
	ResponseHeaderTimeout time.Duration
	// ClientStallTimeout bounds how long a client may keep its request waiting on it: one read
	// of the request body it announced, or one write of the response to it, that has not
	// returned for this long ends the request with client_timeout (408 before the response
	// started; stall.go). Waiting for the agent never counts, nor the silence of an upgraded
	// connection. Default DefaultClientStallTimeout (60s); negative: no limit.
	ClientStallTimeout time.Duration
	// ModuleStallTimeout is ClientStallTimeout for an agent's GitLab module requests: one read
	// of the request body the agent announced, or one write of GitLab's response to it, that
	// has not returned for this long ends the request with client_timeout (408 before the
	// response started, else the stream is reset), so a stalled agent does not hold a GitLab
	// connection. Waiting for GitLab never counts. Default DefaultClientStallTimeout (60s);
	// negative: no limit.
	ModuleStallTimeout time.Duration
	// UpgradeHalfCloseTimeout bounds an upgraded connection (WebSocket, SPDY, a raw upgrade) once
	// one direction has ended: the other must carry a byte this often or both are cut (HAProxy's
	// timeout client-fin/server-fin). A client that went away without a word (its FIN read as a
	// half-close) and a service that never closes its side held the tunnel, and its in-flight
	// slot, for as long as the service lived. Default DefaultUpgradeHalfCloseTimeout (60s);
	// negative: no limit.
	UpgradeHalfCloseTimeout time.Duration
	// MaxRequestTimeout caps the per-request timeout a client may ask for with the
	// Qkas-Timeout header. Default 1h.
	MaxRequestTimeout time.Duration
	// MaxPendingHandshakes limits agent connections that have not yet authenticated (waiting
	// for their control stream, Hello, or the authenticator's answer). Beyond it a new
	// connection is refused at once with overloaded, so unauthenticated peers cannot hold
	// unbounded connections and goroutines for HandshakeTimeout, nor spend the GitLab rate
	// limit with made-up tokens. Default 1000.
	MaxPendingHandshakes int
	// MaxAgentConnections limits agent connections to this kasd. Default 100000.
	MaxAgentConnections int
	// MaxConnectionsPerAgent limits connections (replicas) one agent id may hold. Default 64.
	MaxConnectionsPerAgent int
	// MaxInflightPerAgent limits concurrent proxied requests to one agent. Default 10000.
	MaxInflightPerAgent int
	// MaxInflightRequests limits the proxied requests this kasd's API serves at once, those
	// waiting for their agent to connect included (each holds a goroutine and its buffers; over
	// HTTP/2 a client may open hundreds per connection). The excess is answered 503 overloaded
	// at once. Requests forwarded in from peers are not counted: their origin admitted them.
	// Default 20000.
	MaxInflightRequests int
	// MaxStreamsFromAgent limits the streams one agent may have open towards kasd (GitLab
	// module requests) across all its connections; a stream beyond it is reset at once with
	// quic.StreamCodeRefused, before its head is read (modules.go). Each connection is also
	// limited by the agent listener's quic.Config.MaxIncomingStreams. Default 64.
	MaxStreamsFromAgent int
	// ModulesRatePerAgent is how many GitLab module requests per second one agent may make
	// (token bucket, burst ModulesBurstPerAgent); beyond it a request is answered overloaded
	// with a retry hint. Default 20; ModulesBurstPerAgent default 2×rate.
	ModulesRatePerAgent  float64
	ModulesBurstPerAgent int
	// AgentKeepAlivePeriod is the keep-alive period expected on agent connections (the agent
	// listener's quic.Config; the kasd command's listener leaves the PINGs to agents,
	// quic.Config.PeerKeepsAlive). An idle agent connection that receives nothing for a period
	// and a margin (at most 2s) is probed and, silent a second later, closed as dead
	// (liveness.go). Default quic.DefaultKeepAlivePeriod (2s); the kasd command's
	// --agent-keep-alive-period sets both (25s).
	AgentKeepAlivePeriod time.Duration
	// AgentBusySilence is how long an agent connection with requests in flight may receive
	// nothing before it is presumed dead: it is probed then, and closed if the probe is not
	// answered within half as long again (at most a second); its unacknowledged requests go to
	// another holder (route.go). A live agent acknowledges within milliseconds; the time is a
	// margin for an agent process that is not scheduled. Default 3s (package tests on
	// overloaded hosts); the kasd command's --agent-busy-silence sets 1s, for failover within 2s.
	AgentBusySilence time.Duration
	// ShutdownGrace bounds how long Shutdown waits for in-flight requests. Default 30s.
	ShutdownGrace time.Duration
	// ShutdownWaitsFor, if set, holds Shutdown's close (within the grace) while it reports
	// true. kasd's main passes "the client API server has not closed every client connection
	// yet": a request that arrives on a keep-alive connection after those in flight ended
	// must still find a Server to route it, not one closed under it (503 shutting_down).
	ShutdownWaitsFor func() bool

	// AccessLog configures the info line logged per proxied request (accesslog.go). Zero
	// value: every request is logged.
	AccessLog AccessLogConfig
	// WebApps lists the services served as web apps, exempt from the origin policy's sandbox
	// and keeping their cookies (origin.go): "agent/service" or "agent/*". Default none.
	WebApps []string
	webApps map[webAppKey]bool // WebApps compiled by WithDefaults

	// Log receives structured logs. Default: zerolog.Nop().
	Log *zerolog.Logger
	// Registerer receives metrics. Default: a private registry.
	Registerer prometheus.Registerer
	// Tracer starts a span per proxied request and per forwarded one (internal/tracing).
	// Default nil: tracing off, at no cost.
	Tracer *tracing.Tracer
}

// WithDefaults returns c with defaults filled in.
func (c Config) WithDefaults() Config {
	if c.InstanceID == "" && c.Fleet != nil && c.Fleet.Registry != nil {
		c.InstanceID = c.Fleet.Registry.Self().ID
	}
	if c.InstanceID == "" {
		c.InstanceID = NewInstanceID()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.RouteTimeout == 0 {
		c.RouteTimeout = 5 * time.Second
	}
	if c.AgentBusySilence == 0 {
		c.AgentBusySilence = defaultBusySilence
	}
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = 60 * time.Second
	}
	if c.UpgradeHalfCloseTimeout == 0 {
		c.UpgradeHalfCloseTimeout = DefaultUpgradeHalfCloseTimeout
	}
	if c.ClientStallTimeout == 0 {
		c.ClientStallTimeout = DefaultClientStallTimeout
	}
	if c.ModuleStallTimeout == 0 {
		c.ModuleStallTimeout = DefaultClientStallTimeout
	}
	if c.MaxRequestTimeout == 0 {
		c.MaxRequestTimeout = time.Hour
	}
	if c.MaxPendingHandshakes == 0 {
		c.MaxPendingHandshakes = 1000
	}
	if c.MaxAgentConnections == 0 {
		c.MaxAgentConnections = 100000
	}
	if c.MaxConnectionsPerAgent == 0 {
		c.MaxConnectionsPerAgent = 64
	}
	if c.MaxInflightPerAgent == 0 {
		c.MaxInflightPerAgent = 10000
	}
	if c.MaxInflightRequests == 0 {
		c.MaxInflightRequests = 20000
	}
	if c.MaxStreamsFromAgent == 0 {
		c.MaxStreamsFromAgent = 64
	}
	if c.ModulesRatePerAgent == 0 {
		c.ModulesRatePerAgent = 20
	}
	if c.ModulesBurstPerAgent == 0 {
		c.ModulesBurstPerAgent = max(1, int(2*c.ModulesRatePerAgent))
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	c.AccessLog = c.AccessLog.withDefaults()
	c.webApps, _ = parseWebApps(c.WebApps) // Validate reports a bad entry
	if c.Log == nil {
		l := zerolog.Nop()
		c.Log = &l
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Fleet != nil {
		c.Fleet = c.Fleet.withDefaults()
	}
	return c
}

// Validate reports every problem with c (after WithDefaults).
func (c Config) Validate() error {
	var errs []error
	if c.AgentAuth == nil {
		errs = append(errs, errors.New("an agent authenticator (tokens file or GitLab) is required"))
	}
	if c.ClientAuth == nil || len(c.ClientAuth.Key) < 32 {
		errs = append(errs, errors.New("a client JWT verifier with a key of at least 32 bytes is required"))
	}
	for name, d := range map[string]time.Duration{
		"handshake timeout": c.HandshakeTimeout, "route timeout": c.RouteTimeout,
		"response header timeout": c.ResponseHeaderTimeout, "max request timeout": c.MaxRequestTimeout,
		"shutdown grace": c.ShutdownGrace,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", name))
		}
	}
	for name, n := range map[string]int{
		"max agent connections": c.MaxAgentConnections, "max connections per agent": c.MaxConnectionsPerAgent,
		"max inflight per agent": c.MaxInflightPerAgent, "max pending handshakes": c.MaxPendingHandshakes,
		"max inflight requests":  c.MaxInflightRequests,
		"max streams from agent": c.MaxStreamsFromAgent, "modules burst per agent": c.ModulesBurstPerAgent,
	} {
		if n < 1 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	if !(c.ModulesRatePerAgent > 0) {
		errs = append(errs, errors.New("modules rate per agent must be positive"))
	}
	if c.Fleet != nil {
		if err := c.Fleet.validate(c.InstanceID); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := parseWebApps(c.WebApps); err != nil {
		errs = append(errs, err)
	}
	if s := c.AccessLog.Sample; !(s >= 0 && s <= 1) {
		errs = append(errs, fmt.Errorf("access log sample must be in [0, 1], got %v", s))
	}
	return errors.Join(errs...)
}

// NewInstanceID returns a fresh instance id: the host name and a random suffix.
func NewInstanceID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "kasd"
	}
	return fmt.Sprintf("%s-%s", host, randomID(4))
}
