package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/buildinfo"
	"github.com/qkas/qkas/internal/cliconfig"
	"github.com/qkas/qkas/internal/gcpercent"
	"github.com/qkas/qkas/internal/httpserve"
	"github.com/qkas/qkas/internal/procs"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/kasd/webui"
	"github.com/qkas/qkas/quic"
)

type options struct {
	gomaxprocs          procs.Setting     // --gomaxprocs, internal/procs
	gogc                gcpercent.Setting // --gogc, internal/gcpercent
	showVersion         bool              // --version: print the build and exit
	config              string
	agentListen         string
	agentListenTCP      string // transport.go
	apiListen           string
	observabilityListen string
	dataDir             string
	instanceID          string
	agentTokensFile     string
	apiJWTSecretFile    string
	apiJWTMaxValidity   time.Duration
	apiJWTIssuer        string        // --api-jwt-issuer
	apiJWTAudience      string        // --api-jwt-audience
	apiJWKSFile         string        // --api-jwks-file
	apiJWKSURL          string        // --api-jwks-url
	apiJWKSIssuer       string        // --api-jwks-issuer
	apiJWKSAudience     string        // --api-jwks-audience
	apiJWKSRefresh      time.Duration // --api-jwks-refresh
	apiAllowWildcard    bool          // --api-allow-wildcard
	allowSharedSecret   bool          // --allow-shared-secret
	apiTLSCertFile      string
	apiTLSKeyFile       string
	apiTLSAgentCert     bool
	tlsCertFile         string
	tlsKeyFile          string
	tlsHosts            cliconfig.StringList
	tlsResumption       bool // --tls-session-resumption
	routeTimeout        time.Duration
	responseHdrTimeout  time.Duration
	clientStallTimeout  time.Duration
	moduleStallTimeout  time.Duration
	upgradeHalfClose    time.Duration
	handshakeTimeout    time.Duration
	maxPendingHandshake int
	maxAgentConns       int
	maxConnsPerAgent    int
	maxInflightPerAgent int
	maxInflightRequests int
	maxIncomingStreams  int64
	budget              budgetOptions // --max-agent-streams-per-agent, --agent-*-window, --agent-auth-failure-*, ...
	shutdownGrace       time.Duration
	drainDelay          time.Duration
	webUI               bool
	accessLog           bool                 // --access-log
	accessLogSample     float64              // --access-log-sample
	webApps             cliconfig.StringList // --web-app
	logLevel            string
	logFormat           string
	logFlush            time.Duration
	apiHTTP             httpserve.Limits     // --api-read-header-timeout, --api-idle-timeout, ...
	obsHTTP             httpserve.Limits     // --observability-read-header-timeout, ...
	debug               httpserve.DebugFlags // --pprof, --pprof-listen
	gitlab              gitlabOptions        // --gitlab-* flags, see gitlab.go
	fleet               fleetOptions         // --peer-*, --etcd-*, --registry-* flags, see fleet.go
	scale               scaleOptions         // --agent-keep-alive-period, --udp-*-buffer, see scale.go
	otelEndpoint        string               // --otel-endpoint, see tracing.go
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("kasd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cliconfig.SetUsage(fs, envPrefix, "route-timeout")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	o.gomaxprocs = procs.Auto
	fs.Var(&o.gomaxprocs, "gomaxprocs", procs.Usage)
	o.gogc = gcpercent.Auto
	fs.Var(&o.gogc, "gogc", gcpercent.Usage)
	fs.StringVar(&o.config, "config", "", "YAML file whose keys are flag names; the command line and the environment win")
	fs.StringVar(&o.agentListen, "agent-listen", ":8150", "UDP address for agent QUIC connections; agents whose UDP is blocked connect over TCP on the same port number (see --agent-listen-tcp)")
	fs.StringVar(&o.agentListenTCP, "agent-listen-tcp", "", "TCP address for agents whose UDP is blocked (QUIC carried over TLS/TCP, docs/transport.md); default: the host and port number of --agent-listen; \"off\" disables")
	fs.StringVar(&o.apiListen, "api-listen", ":8151", "TCP address for the client HTTP API")
	fs.StringVar(&o.observabilityListen, "observability-listen", ":8153", "TCP address for /metrics, /healthz and /readyz")
	fs.StringVar(&o.dataDir, "data-dir", "./kasd-data", "directory for generated state: development CA and certificate, stateless reset key (derived from --peer-secret-file instead when one is given)")
	fs.StringVar(&o.instanceID, "instance-id", "", "this kasd's instance id (default: host name plus a random suffix)")
	fs.StringVar(&o.agentTokensFile, "agent-tokens-file", "", "YAML file 'agents: [{id, token_sha256}]' of accepted agent tokens (standalone mode)")
	fs.StringVar(&o.apiJWTSecretFile, "api-jwt-secret-file", "", "base64 secret (>= 32 bytes decoded) that signs client JWTs (HS256, aud gitlab-kas)")
	fs.DurationVar(&o.apiJWTMaxValidity, "api-jwt-max-validity", time.Hour, "refuse client JWTs valid for longer than this")
	fs.StringVar(&o.apiJWTIssuer, "api-jwt-issuer", auth.DefaultIssuer, "the iss every client JWT must carry (kasctl jwt --issuer writes it)")
	fs.StringVar(&o.apiJWTAudience, "api-jwt-audience", auth.DefaultAudience, "the aud every client JWT must carry")
	fs.StringVar(&o.apiJWKSFile, "api-jwks-file", "", "also accept client JWTs signed (RS256, ES256, EdDSA) by a key of this JWKS file (re-read every --api-jwks-refresh); needs --api-jwks-issuer")
	fs.StringVar(&o.apiJWKSURL, "api-jwks-url", "", "also accept client JWTs signed (RS256, ES256, EdDSA) by a key of the JWKS at this URL (an OIDC provider's jwks_uri; https unless loopback); needs --api-jwks-issuer")
	fs.StringVar(&o.apiJWKSIssuer, "api-jwks-issuer", "", "the iss every client JWT signed by a JWKS key must carry (the OIDC provider's issuer)")
	fs.StringVar(&o.apiJWKSAudience, "api-jwks-audience", "", "the aud every client JWT signed by a JWKS key must carry (default: --api-jwt-audience)")
	fs.DurationVar(&o.apiJWKSRefresh, "api-jwks-refresh", auth.DefaultJWKSRefresh, "re-read the JWKS this often (an unknown kid also re-reads it, at most every 30s); a failed read keeps the last good set")
	fs.BoolVar(&o.apiAllowWildcard, "api-allow-wildcard", false, `accept client JWTs whose agents claim is ["*"] (every agent); without it a token must list its agents`)
	fs.BoolVar(&o.allowSharedSecret, "allow-shared-secret", false, "start even when --api-jwt-secret-file and --gitlab-auth-secret-file hold the same secret (one leaked file would then open both directions of trust)")
	fs.StringVar(&o.apiTLSCertFile, "api-tls-cert-file", "", "serve the client API over HTTPS with this certificate (kubectl sends tokens only over TLS); re-read on SIGHUP and when it changes")
	fs.StringVar(&o.apiTLSKeyFile, "api-tls-key-file", "", "key for --api-tls-cert-file")
	fs.BoolVar(&o.apiTLSAgentCert, "api-tls-agent-cert", false, "serve the client API over HTTPS with the certificate agents see (--tls-cert-file, or the development certificate in --data-dir)")
	fs.StringVar(&o.tlsCertFile, "tls-cert-file", "", "TLS certificate for agents and peers (default: a development certificate in --data-dir); re-read on SIGHUP and when it changes, a bad file keeps the one in use")
	fs.StringVar(&o.tlsKeyFile, "tls-key-file", "", "TLS key for --tls-cert-file")
	fs.BoolVar(&o.tlsResumption, "tls-session-resumption", true, "let agents resume their TLS sessions (a reconnect skips the certificate and its signature, still with a fresh key exchange): tickets are encrypted under a key derived from the TLS key, so they survive a restart and every kasd with the same key accepts them; false sends no tickets")
	fs.Var(&o.tlsHosts, "tls-hosts", "extra host names or IPs for the development certificate (repeatable, comma-separated)")
	fs.DurationVar(&o.routeTimeout, "route-timeout", 5*time.Second, "how long a request waits for its agent to connect before 503, counted from its arrival")
	fs.DurationVar(&o.responseHdrTimeout, "response-header-timeout", 60*time.Second, "how long to wait for a response header from the agent, after the request body's last byte, before 504")
	fs.DurationVar(&o.clientStallTimeout, "client-stall-timeout", kasd.DefaultClientStallTimeout, "how long a client may leave one read of the request body it announced, or one write of its response, waiting before its request ends with 408 client_timeout (waiting for the agent never counts); 0: no limit")
	fs.DurationVar(&o.upgradeHalfClose, "upgrade-half-close-timeout", kasd.DefaultUpgradeHalfCloseTimeout, "once one side of an upgraded connection (WebSocket, SPDY) has closed, how long the other may stay silent before both are cut (kasd_limit_rejections_total{reason=\"upgrade_half_close\"}); 0: no limit")
	fs.DurationVar(&o.moduleStallTimeout, "module-stall-timeout", kasd.DefaultClientStallTimeout, "how long an agent may leave one read of the body of its GitLab module request, or one write of GitLab's response to it, waiting before the request ends with 408 client_timeout (waiting for GitLab never counts); 0: no limit")
	fs.DurationVar(&o.handshakeTimeout, "handshake-timeout", 10*time.Second, "how long an agent may take to send Hello")
	fs.IntVar(&o.maxPendingHandshake, "max-pending-handshakes", 1000, "maximum agent connections not yet authenticated, and separately of TLS handshakes in progress; the excess is refused at once: before TLS with CONNECTION_REFUSED, after it with overloaded and a retry-after hint")
	fs.IntVar(&o.maxAgentConns, "max-agent-connections", 100000, "maximum agent connections to this kasd")
	fs.IntVar(&o.maxConnsPerAgent, "max-connections-per-agent", 64, "maximum connections (replicas) per agent id")
	fs.IntVar(&o.maxInflightPerAgent, "max-inflight-per-agent", 10000, "maximum concurrent proxied requests per agent")
	fs.IntVar(&o.maxInflightRequests, "max-inflight-requests", 20000, "maximum concurrent proxied requests of this kasd's API clients, those waiting for their agent included (the excess: 503 overloaded)")
	fs.Int64Var(&o.maxIncomingStreams, "max-incoming-streams", 100, "maximum concurrent streams an agent may open on one connection (GitLab module requests; past it the agent waits for one to end)")
	o.budget.register(fs)
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 30*time.Second, "on SIGTERM, how long in-flight requests may finish")
	fs.DurationVar(&o.drainDelay, "drain-delay", 0, "on SIGTERM, how long /readyz fails while the client API keeps serving, before it stops taking connections (for a load balancer to notice; on Kubernetes a preStop sleep does the same)")
	fs.BoolVar(&o.webUI, "web-ui", true, "serve the read-only web page of the fleet at /ui/ on the client API listener (it asks for a client JWT, as the API does)")
	fs.BoolVar(&o.accessLog, "access-log", true, "log one info line per proxied request (request id, agent, service, method, path, status, code, bytes, duration, route, caller, impersonated user)")
	fs.Float64Var(&o.accessLogSample, "access-log-sample", 1, "fraction (0..1) of successful requests the access log records, chosen by a hash of the request id so every hop logs the same ones; errors are always logged")
	fs.Var(&o.webApps, "web-app", "agent/service (or agent/*) served as a web app: without the origin policy's Content-Security-Policy: sandbox, and keeping its cookies (Path rewritten under its prefix). Its scripts then run as kasd's origin: list only services you trust as much as kasd (repeatable, comma-separated)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")
	cliconfig.LogFlushFlag(fs, &o.logFlush)
	fs.StringVar(&o.otelEndpoint, "otel-endpoint", "", tracing.EndpointUsage)
	o.apiHTTP.RegisterFlags(fs, "api", "client API", httpserve.Limits{
		ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 1 << 20, MaxConnections: 10000,
	})
	o.obsHTTP.RegisterFlags(fs, "observability", "observability port", httpserve.Limits{MaxConnections: 64})
	o.debug.RegisterFlags(fs, "127.0.0.1:6060")
	o.fleet.register(fs)
	o.scale.register(fs)
	o.gitlab.register(fs)
	cliconfig.ExplainDurations(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := cliconfig.ApplyEnv(fs, envPrefix, os.LookupEnv); err != nil { // KASD_<FLAG>, see main.go
		return nil, err
	}
	if o.config != "" {
		if err := cliconfig.Apply(fs, o.config); err != nil {
			return nil, err
		}
	}
	// The libraries take a zero limit for their default: a 0 given here is refused, not
	// replaced in silence.
	if err := errors.Join(
		cliconfig.Positive(fs, "route-timeout", "response-header-timeout", "handshake-timeout", "shutdown-grace",
			"max-pending-handshakes", "max-agent-connections", "max-connections-per-agent", "max-inflight-per-agent", "max-inflight-requests",
			"max-incoming-streams", "max-agent-streams-per-agent", "modules-rate-per-agent",
			"agent-connection-window", "agent-stream-window",
			"agent-auth-failure-burst", "agent-auth-failure-rate", "agent-auth-max-sources",
			"api-jwt-max-validity", "api-jwks-refresh",
			"api-read-header-timeout", "api-idle-timeout", "api-max-header-bytes", "api-max-connections",
			"observability-read-header-timeout", "observability-idle-timeout", "observability-max-header-bytes", "observability-max-connections",
			"agent-keep-alive-period", "agent-idle-timeout", "agent-busy-silence", "registry-ttl", "rebalance-min-age", "peer-idle-timeout",
			"gitlab-cache-ttl", "gitlab-negative-cache-ttl", "gitlab-rate-limit"),
		cliconfig.NotNegative(fs, "drain-delay", "rebalance-tolerance", "client-stall-timeout", "module-stall-timeout", "upgrade-half-close-timeout"), // 0: none; --rebalance-tolerance 0: no margin
		cliconfig.NotZero(fs, "udp-receive-buffer", "udp-send-buffer"),                                                                                // negative: the system default
		o.fleet.validate(),
		listenAddressesSet(fs, "agent-listen", "api-listen", "observability-listen", "peer-listen"),
		o.jwksNeedsKeys(),
		o.tlsHostsValid(),
	); err != nil {
		return nil, err
	}
	return o, nil
}

// jwksNeedsKeys refuses --api-jwks-issuer or --api-jwks-audience without a key set to check
// tokens with: they were ignored, and the provider's tokens refused (401) with nothing saying why.
func (o *options) jwksNeedsKeys() error {
	if (o.apiJWKSIssuer != "" || o.apiJWKSAudience != "") && o.apiJWKSFile == "" && o.apiJWKSURL == "" {
		return errors.New("--api-jwks-issuer and --api-jwks-audience need --api-jwks-url or --api-jwks-file")
	}
	return nil
}

// tlsHostsValid refuses a --tls-hosts entry that cannot be a certificate's name (a URL, a
// host:port, a name with spaces: the certificate was issued with it and no agent could verify
// it), and --tls-hosts with a certificate of the operator's, which it does not change.
func (o *options) tlsHostsValid() error {
	if len(o.tlsHosts) > 0 && o.tlsCertFile != "" {
		return errors.New("--tls-hosts names the development certificate's hosts; with --tls-cert-file it has no effect (put the names in that certificate)")
	}
	var errs []error
	for _, h := range o.tlsHosts {
		if net.ParseIP(h) == nil && !validDNSName(h) {
			errs = append(errs, fmt.Errorf("--tls-hosts %q: want a host name or an IP address (no scheme, no port)", h))
		}
	}
	return errors.Join(errs...)
}

// validDNSName reports whether h is a DNS name a certificate can carry: dot-separated labels of
// letters, digits and hyphens (not at a label's ends), at most 63 bytes each and 253 in all,
// optionally under a leading "*." wildcard; no trailing dot (a certificate name with one matches
// no host name an agent dials).
func validDNSName(h string) bool {
	h = strings.TrimPrefix(h, "*.") // a trailing dot leaves an empty label: Go's x509 would not match it
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// listenAddressesSet refuses an empty listen address: net.Listen reads "" as a random port on
// every interface, which no agent, client, probe or peer would find (agentd's "empty disables"
// is not kasd's: every one of these listeners is needed). Port 0 still picks a free port.
func listenAddressesSet(fs *flag.FlagSet, names ...string) error {
	var errs []error
	for _, name := range names {
		if fs.Lookup(name).Value.String() == "" {
			errs = append(errs, fmt.Errorf("--%s must not be empty (host:port, or :port for every interface)", name))
		}
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, args []string) error {
	var usage bytes.Buffer
	o, err := parseFlags(args, &usage)
	cliconfig.ShowUsage(usage.Bytes(), err, os.Stdout, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if o.showVersion {
		fmt.Println(buildinfo.Get(version, revision).String("kasd"))
		return nil
	}
	log, logOut, err := cliconfig.NewLogger(o.logLevel, o.logFormat, o.logFlush)
	if err != nil {
		return err
	}
	defer logOut.Close() // the last batch of log lines
	if o.apiJWTSecretFile == "" {
		return errors.New("--api-jwt-secret-file is required (create one with 'kasctl secret -o FILE')")
	}
	jwtKey, err := auth.ReadSecretFile(o.apiJWTSecretFile)
	if err != nil {
		return err
	}
	if err := checkSecretsDiffer(o, jwtKey); err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	resetKey, err := statelessResetKey(o, log)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := buildinfo.Register(reg, "kasd", buildinfo.Get(version, revision)); err != nil {
		return err
	}
	procCtl, err := procs.New(procs.Config{Setting: o.gomaxprocs, Namespace: "kasd", Registerer: reg, Log: &log})
	if err != nil {
		return err
	}
	gcCtl, err := gcpercent.New(gcpercent.Config{Setting: o.gogc, Namespace: "kasd", Registerer: reg, Log: &log})
	if err != nil {
		return err
	}
	certs, err := loadCerts(o, reg, &log) // reloaded on SIGHUP and file change, tls.go
	if err != nil {
		return err
	}
	var jwks *auth.JWKS // client JWTs signed by an OIDC provider's keys
	if o.apiJWKSFile != "" || o.apiJWKSURL != "" {
		if jwks, err = auth.NewJWKS(ctx, auth.JWKSConfig{File: o.apiJWKSFile, URL: o.apiJWKSURL, Issuer: o.apiJWKSIssuer,
			Audience: o.apiJWKSAudience, RefreshInterval: o.apiJWKSRefresh, Registerer: reg}); err != nil {
			return fmt.Errorf("--api-jwks-file/--api-jwks-url: %w", err)
		}
	}
	httpMetrics, err := httpserve.NewMetrics(reg, "kasd")
	if err != nil {
		return err
	}
	agentAuthenticator, modules, gitlabClient, err := agentAuth(o, reg, log)
	if err != nil {
		return err
	}
	if gitlabClient != nil {
		// Unknown tokens cost GitLab calls: a source that keeps presenting them is slowed, then
		// refused before GitLab is asked (docs/security.md).
		if agentAuthenticator, err = kasd.NewSourceLimitedAuth(agentAuthenticator, o.budget.sourceLimits(), reg); err != nil {
			return err
		}
	}
	if gitlabClient != nil {
		defer gitlabClient.Close()
	}
	// Listeners first: the fleet registry publishes the addresses actually bound.
	agentLn, err := quic.Listen(o.agentListen, certs.serverTLS(api.ALPNAgent), o.scale.quic(quic.Config{
		StatelessResetKey:          resetKey,
		MaxIncomingStreams:         o.maxIncomingStreams,
		MaxConnectionReceiveWindow: o.budget.connectionWindow,
		MaxStreamReceiveWindow:     o.budget.streamWindow,
	}))
	if err != nil {
		return fmt.Errorf("--agent-listen: %w", err)
	}
	defer agentLn.Close()
	apiLn, err := net.Listen("tcp", o.apiListen)
	if err != nil {
		return fmt.Errorf("--api-listen: %w", err)
	}
	defer apiLn.Close()
	obsLn, err := net.Listen("tcp", o.observabilityListen)
	if err != nil {
		return fmt.Errorf("--observability-listen: %w", err)
	}
	defer obsLn.Close()
	var debugLn net.Listener
	if o.debug.Enabled {
		if debugLn, err = net.Listen("tcp", o.debug.Listen); err != nil {
			return fmt.Errorf("--pprof-listen: %w", err)
		}
		defer debugLn.Close()
	}
	// After the other TCP listeners: their explicit ports win over the TCP agent listener's
	// default (the port number of --agent-listen), which only warns when it is taken.
	agentTCPLn, err := listenAgentTCP(o, agentLn.Addr(), certs.serverTLS(api.ALPNAgent), o.scale.quic(quic.Config{
		StatelessResetKey:          resetKey,
		MaxIncomingStreams:         o.maxIncomingStreams,
		MaxConnectionReceiveWindow: o.budget.connectionWindow,
		MaxStreamReceiveWindow:     o.budget.streamWindow,
	}), &log)
	if err != nil {
		return fmt.Errorf("--agent-listen-tcp: %w", err)
	}
	if agentTCPLn != nil {
		defer agentTCPLn.Close()
		reg.MustRegister(agentTCPLn.Collector("kasd_agent"))
	}

	instanceID := o.instanceID
	if instanceID == "" {
		instanceID = kasd.NewInstanceID()
	}
	var fleet *fleetParts
	if o.fleet.enabled {
		if fleet, err = startFleet(o, &o.fleet, instanceID, certs, apiLn.Addr().String(), log, reg); err != nil {
			return err
		}
	}
	tracer, stopTracing, err := tracing.Start(o.otelEndpoint, tracing.Config{ServiceName: "kasd", InstanceID: instanceID, Version: version}, &log)
	if err != nil {
		return err
	}
	defer stopTracing()
	var fleetCfg *kasd.FleetConfig
	if fleet != nil {
		fleetCfg = fleet.cfg
	}
	apiDone := make(chan struct{}) // closed once the API server's Shutdown returned
	srv, err := kasd.New(kasd.Config{
		InstanceID:              instanceID,
		Version:                 version,
		AgentAuth:               agentAuthenticator,
		Modules:                 modules,
		Fleet:                   fleetCfg,
		ClientAuth:              clientVerifier(o, jwtKey, jwks),
		HandshakeTimeout:        o.handshakeTimeout,
		RouteTimeout:            o.routeTimeout,
		ResponseHeaderTimeout:   o.responseHdrTimeout,
		ClientStallTimeout:      stallLimit(o.clientStallTimeout),
		ModuleStallTimeout:      stallLimit(o.moduleStallTimeout),
		UpgradeHalfCloseTimeout: stallLimit(o.upgradeHalfClose),
		MaxPendingHandshakes:    o.maxPendingHandshake,
		MaxAgentConnections:     o.maxAgentConns,
		MaxConnectionsPerAgent:  o.maxConnsPerAgent,
		MaxInflightPerAgent:     o.maxInflightPerAgent,
		MaxInflightRequests:     o.maxInflightRequests,
		MaxStreamsFromAgent:     o.budget.streamsPerAgent,
		ModulesRatePerAgent:     o.budget.modulesRate,
		AgentKeepAlivePeriod:    o.scale.keepAlive,
		AgentBusySilence:        o.scale.busySilence,
		ShutdownGrace:           o.shutdownGrace,
		// The Server closes only once the API server closed its client connections (within
		// the grace): no request reaches it closed.
		ShutdownWaitsFor: func() bool {
			select {
			case <-apiDone:
				return false
			default:
				return true
			}
		},
		AccessLog:  kasd.AccessLogConfig{Off: !o.accessLog, Sample: o.accessLogSample, ErrorsOnly: o.accessLogSample == 0},
		WebApps:    o.webApps,
		Log:        &log,
		Registerer: reg,
		Tracer:     tracer,
	})
	if err != nil {
		if fleet != nil {
			fleet.close(context.Background(), true)
		}
		return err
	}
	apiHandler := srv.Handler()
	if o.webUI {
		ui, err := webui.New(webui.Config{Status: srv.StatusFor})
		if err != nil {
			return err
		}
		apiHandler = webui.Mount(ui, apiHandler) // the page under /ui/, same JWT as the API
	}
	apiSrv, err := httpserve.New("api", apiHandler, o.apiHTTP, httpMetrics)
	if err != nil {
		return fmt.Errorf("--api-*: %w", err)
	}
	apiSrv.TLSConfig = certs.apiTLS(o)
	apiSrv.ErrorLog = httpserve.ErrorLog(log) // TLS handshake errors and the like: JSON, debug
	obsSrv, err := httpserve.New("observability", srv.ObservabilityHandler(reg), o.obsHTTP, httpMetrics)
	if err != nil {
		return fmt.Errorf("--observability-*: %w", err)
	}
	debugSrv, err := httpserve.New("pprof", httpserve.DebugHandler(), httpserve.DebugLimits, httpMetrics)
	if err != nil {
		return err
	}
	log.Info().Str("instance", srv.InstanceID()).Str("agent_listen", agentLn.Addr().String()).
		Str("api_listen", apiLn.Addr().String()).Str("observability_listen", obsLn.Addr().String()).
		Str("ca_file", certs.caFile).Str("version", version).Msg("kasd started")

	sockets := map[string]quic.Socket{"agent": agentLn}
	if fleet != nil {
		sockets["peer"] = fleet.peerLn
	}
	if err := o.scale.reportSockets(log, reg, sockets); err != nil { // scale.go
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return procCtl.Run(gctx) })    // GOMAXPROCS follows the load (--gomaxprocs)
	g.Go(func() error { return gcCtl.Run(gctx) })      // GOGC follows the allocation rate (--gogc)
	watchTokens(gctx, g, agentAuthenticator, log, reg) // SIGHUP and file changes, scale.go
	certs.watch(gctx, g, &log)                         // SIGHUP and file changes, tls.go
	if jwks != nil {
		g.Go(func() error { return jwks.Run(gctx) })
	}
	// The accept loops outlive the signal: while it drains, kasd answers a new agent or peer
	// connection at once (refused as shutting_down, so an agent dials another kasd), where a
	// listener nobody accepted from would complete QUIC handshakes and leave them unanswered
	// for the agent's whole handshake timeout. They stop once the server is closed.
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g.Go(func() error { return srv.ServeAgents(serveCtx, agentLn) })
	if agentTCPLn != nil {
		log.Info().Str("agent_listen_tcp", agentTCPLn.Addr().String()).Msg("accepting agents over TCP too")
		g.Go(func() error { return srv.ServeAgentsTCP(serveCtx, agentTCPLn) })
	}
	if fleet != nil {
		g.Go(func() error { return srv.ServePeers(serveCtx, fleet.peerLn) })
	}
	g.Go(func() error { return apiSrv.Serve(apiLn) })
	g.Go(func() error { return obsSrv.Serve(obsLn) })
	if debugLn != nil {
		log.Warn().Str("pprof_listen", debugLn.Addr().String()).Msg("serving /debug/pprof/")
		g.Go(func() error { return debugSrv.Serve(debugLn) })
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info().Dur("drain_delay", o.drainDelay).Msg("draining")
		// /readyz fails, peers stop forwarding here, agents move (make before break); client
		// requests are still served while a load balancer takes this instance out.
		srv.BeginDrain()
		if o.drainDelay > 0 {
			time.Sleep(o.drainDelay)
		}
		sctx, cancel := context.WithTimeout(context.Background(), o.shutdownGrace+5*time.Second)
		defer cancel()
		// Drain: /readyz fails at once (Shutdown sets draining); agents get GoAway; the API
		// server stops taking requests while those in flight finish, both within the grace.
		go func() { // owned here: waited for below
			defer close(apiDone)
			_ = apiSrv.Shutdown(sctx)
		}()
		err := srv.Shutdown(sctx)
		stopServing()
		_ = agentLn.Close()
		if agentTCPLn != nil {
			_ = agentTCPLn.Close()
		}
		<-apiDone
		if fleet != nil {
			// Delete this instance's keys and revoke its lease, so peers stop routing here now
			// rather than when the lease expires.
			fleet.close(sctx, true)
		}
		_ = obsSrv.Shutdown(sctx)
		_ = debugSrv.Close()
		if err != nil {
			log.Warn().Err(err).Msg("drain incomplete")
		}
		return nil
	})
	err = g.Wait()
	log.Info().Msg("kasd stopped")
	return err
}

// clientVerifier checks client JWTs: HS256 with the secret, and RS256/ES256/EdDSA with the keys
// of the JWKS if one is configured.
func clientVerifier(o *options, jwtKey []byte, jwks *auth.JWKS) *auth.Verifier {
	v := &auth.Verifier{Key: jwtKey, MaxValidity: o.apiJWTMaxValidity, Issuer: o.apiJWTIssuer, Audience: o.apiJWTAudience,
		AllowAnyAgent: o.apiAllowWildcard, Cache: &auth.VerifiedCache{}}
	if jwks != nil {
		v.Keys = jwks // a nil *JWKS in the interface would not be nil
	}
	return v
}

// checkSecretsDiffer refuses to start when the client API secret is also the GitLab secret,
// unless --allow-shared-secret: a client JWT and GitLab's Gitlab-Kas-Api-Request JWT differ in
// audience, so this is defence in depth, but one leaked file should not open both directions.
func checkSecretsDiffer(o *options, apiKey []byte) error {
	if o.gitlab.authSecretFile == "" || o.allowSharedSecret {
		return nil
	}
	gitlabKey, err := auth.ReadSecretFile(o.gitlab.authSecretFile)
	if err != nil {
		return fmt.Errorf("--gitlab-auth-secret-file: %w", err)
	}
	if auth.SameSecret(apiKey, gitlabKey) {
		return errors.New("--api-jwt-secret-file and --gitlab-auth-secret-file hold the same secret: " +
			"give the client API its own (kasctl secret -o FILE), or pass --allow-shared-secret to accept the risk")
	}
	return nil
}

// statelessResetKey is the key of kasd's agent listeners. In a fleet whose replicas share a
// --peer-secret-file it is derived from that secret, so every replica resets the connections of
// the others (an agent whose kasd died is reset by the replica its packets reach next, and
// reconnects at once); otherwise it is generated once in --data-dir and kept across restarts.
func statelessResetKey(o *options, log zerolog.Logger) (*quicgo.StatelessResetKey, error) {
	if o.fleet.enabled && o.fleet.peerSecretFile != "" {
		secret, err := auth.ReadSecretFile(o.fleet.peerSecretFile)
		if err != nil {
			return nil, fmt.Errorf("--peer-secret-file: %w", err)
		}
		log.Debug().Msg("stateless reset key derived from --peer-secret-file: shared by the fleet's replicas")
		return quic.DeriveStatelessResetKey(secret)
	}
	return quic.LoadOrCreateStatelessResetKey(filepath.Join(o.dataDir, "stateless-reset.key"))
}

// stallLimit is --client-stall-timeout (or --module-stall-timeout) for kasd.Config, where 0 takes the default: the flag's 0
// (no limit) is a negative limit there.
func stallLimit(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
