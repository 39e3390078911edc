package agentd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/quic"
)

// Config configures an Agent. Defaults are applied by WithDefaults; Validate checks the result.
type Config struct {
	// KasAddresses are the kasd agent endpoints ("host:port", port 1..65535; a DNS name is
	// resolved at each dial). Required. Connection slots are spread over them.
	KasAddresses []string
	// Token is the agent token sent in Hello. Required.
	Token string
	// TLS is the client TLS configuration (CA, server name). Required; its NextProtos are set to
	// api.ALPNAgent by the agent.
	TLS *tls.Config
	// QUIC tunes the transport. Zero values take quic.Config's defaults.
	QUIC quic.Config
	// Services maps a service name to its base URL (http or https). Agent.ReloadServices
	// replaces them while the agent runs.
	Services map[string]*url.URL
	// Handlers maps a service name to an in-process handler (the Kubernetes API proxy, say).
	// Services and Handlers together must offer at least one service; names must not repeat.
	Handlers map[string]ServiceHandler
	// Connections is how many connections the agent keeps to kasd. Default 1.
	Connections int
	// Replica names this agent process (its pod name), at most api.MaxReplicaLen bytes (kasd
	// refuses a longer one). Default: the host name.
	Replica string
	// Version is reported to kasd. Default "dev".
	Version string
	// MaxIdleConnsPerService sizes the pool of idle connections kept to each service. It should
	// be at least the concurrency the agent serves, or busy agents re-dial their services.
	// Default 256.
	MaxIdleConnsPerService int
	// ServiceDialTimeout bounds dialling a service. Default 5s.
	ServiceDialTimeout time.Duration
	// RequestHeaderTimeout bounds reading a stream's Request frame and HTTP request header.
	// Default 30s.
	RequestHeaderTimeout time.Duration
	// GitLabResponseHeaderTimeout bounds GitLabHandler's wait for kasd's answer to a module
	// request (kasd's Result and GitLab's response head), counted from the request body's last
	// byte. Default DefaultGitLabResponseHeaderTimeout (60s).
	GitLabResponseHeaderTimeout time.Duration
	// AccessLog configures the info line logged per request (accesslog.go). Zero value: every
	// request is logged.
	AccessLog AccessLogConfig
	// DrainTimeout bounds how long in-flight requests (kasd's, and the GitLab module requests
	// this agent sent) may continue on a connection being drained: after a services reload or a
	// move (kasd's GoAway with Prefer), or after Run's context ended. After the GoAway of a
	// draining kasd, kasd's grace bounds them (it closes the connection at its end), and
	// DrainTimeout applies only from when Run's context ends. Default 30s.
	DrainTimeout time.Duration
	// Transport chooses QUIC, TCP, or QUIC falling back to TCP and back (transport.go). Zero
	// value: auto, fallback after 3s, probe every 5m, no proxy.
	Transport TransportConfig
	// ConnectSlots, when set, is shared by agents that run in one process (the fleet simulator,
	// benchmarks/fleetsim): a connect — the dial, the QUIC and TLS handshakes, Hello and Welcome —
	// holds one of its cap() slots, and waits for one before it dials. It models agents that each
	// have a CPU of their own: thousands of handshakes at once in one process starve each other
	// past their timeouts, which separate agents would not. A wait for a slot is not an attempt.
	// nil (agentd's default): no limit.
	ConnectSlots chan struct{}
	// Backoff paces reconnects. Zero value: quic.Backoff defaults (100ms doubling to 10s, ±20%).
	Backoff quic.Backoff
	// Log receives structured logs. Default: zerolog.Nop().
	Log *zerolog.Logger
	// Registerer receives the agent's metrics. Default: a private registry (metrics unexported).
	Registerer prometheus.Registerer
	// Tracer starts a span per request served (internal/tracing). Default nil: tracing off,
	// at no cost.
	Tracer *tracing.Tracer
}

// validateKasAddress checks that addr is host:port with a host (an IP or a DNS name, resolved
// at each dial) and a numeric port 1..65535: a malformed one could only fail every dial.
func validateKasAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("kas address (--kas-address) %q: want host:port: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("kas address (--kas-address) %q: no host", addr)
	}
	// A service name ("https") is looked up as the dial does (quic.ResolveAll).
	if n, err := net.LookupPort("udp", port); err != nil || n < 1 {
		return fmt.Errorf("kas address (--kas-address) %q: port must be 1..65535 or a known service name", addr)
	}
	return nil
}

var serviceNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// WithDefaults returns c with defaults filled in.
func (c Config) WithDefaults() Config {
	if c.Connections == 0 {
		c.Connections = 1
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.MaxIdleConnsPerService == 0 {
		c.MaxIdleConnsPerService = 256
	}
	if c.ServiceDialTimeout == 0 {
		c.ServiceDialTimeout = 5 * time.Second
	}
	if c.GitLabResponseHeaderTimeout == 0 {
		c.GitLabResponseHeaderTimeout = DefaultGitLabResponseHeaderTimeout
	}
	if c.RequestHeaderTimeout == 0 {
		c.RequestHeaderTimeout = 30 * time.Second
	}
	c.AccessLog = c.AccessLog.withDefaults()
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.Log == nil {
		l := zerolog.Nop()
		c.Log = &l
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	c.QUIC = c.QUIC.WithDefaults()
	c.Transport = c.Transport.withDefaults()
	return c
}

// Validate reports the first problem with c (after WithDefaults).
func (c Config) Validate() error {
	var errs []error
	if len(c.KasAddresses) == 0 {
		errs = append(errs, errors.New("at least one kas address is required (--kas-address)"))
	}
	for _, addr := range c.KasAddresses {
		if err := validateKasAddress(addr); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Token == "" {
		errs = append(errs, errors.New("an agent token is required (--token-file)"))
	}
	if c.TLS == nil {
		errs = append(errs, errors.New("a TLS configuration is required"))
	}
	errs = append(errs, validateServices(c.Services, c.Handlers)...) // reload.go: reloads check the same
	if len(c.Replica) > api.MaxReplicaLen {
		// kasd refuses such a Hello (bad_request): the agent would retry for ever.
		errs = append(errs, fmt.Errorf("replica (--replica) is %d bytes, kasd accepts at most %d", len(c.Replica), api.MaxReplicaLen))
	}
	if c.Connections < 1 || c.Connections > 16 {
		errs = append(errs, fmt.Errorf("connections must be 1..16, got %d", c.Connections))
	}
	if s := c.AccessLog.Sample; !(s >= 0 && s <= 1) {
		errs = append(errs, fmt.Errorf("access log sample must be in [0, 1], got %v", s))
	}
	if c.MaxIdleConnsPerService < 1 {
		errs = append(errs, errors.New("max idle connections per service must be positive"))
	}
	errs = append(errs, c.Transport.validate()...) // transport.go
	if err := c.QUIC.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
