package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/internal/buildinfo"
	"github.com/qkas/qkas/internal/cliconfig"
	"github.com/qkas/qkas/internal/httpserve"
	"github.com/qkas/qkas/internal/procs"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/quic"
)

type options struct {
	gomaxprocs          procs.Setting // --gomaxprocs, internal/procs
	showVersion         bool          // --version: print the build and exit
	config              string
	kasAddresses        cliconfig.StringList
	tokenFile           string
	caFile              string
	serverName          string
	services            cliconfig.StringList
	observabilityListen string
	replica             string
	connections         int
	maxIdlePerService   int
	drainTimeout        time.Duration
	accessLog           bool    // --access-log
	accessLogSample     float64 // --access-log-sample
	logLevel            string
	logFormat           string
	logFlush            time.Duration
	otelEndpoint        string // --otel-endpoint, see tracing.go
	kubernetes          kubernetesOptions
	gitlabProxyListen   string
	gitlabProxyHTTP     httpserve.Limits // --gitlab-proxy-read-header-timeout, ...
	gitlabHeaderTimeout time.Duration
	obsHTTP             httpserve.Limits     // --observability-read-header-timeout, ...
	debug               httpserve.DebugFlags // --pprof, --pprof-listen
	scale               scaleOptions         // --keep-alive-period, --idle-timeout, --udp-*-buffer, see scale.go
	transport           transportOptions     // --transport, --quic-fallback-after, --proxy-url, ..., see transport.go
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("agentd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cliconfig.SetUsage(fs, envPrefix, "kas-address")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	o.gomaxprocs = procs.Auto
	fs.Var(&o.gomaxprocs, "gomaxprocs", procs.Usage)
	fs.StringVar(&o.config, "config", "", "YAML file whose keys are flag names (services: {NAME: URL} or service: ...); the command line and the environment win; services are reloaded when it changes and on SIGHUP")
	fs.Var(&o.kasAddresses, "kas-address", "kasd agent address host:port (repeatable, comma-separated)")
	o.transport.register(fs) // transport.go
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding this agent's token")
	fs.StringVar(&o.caFile, "ca-file", "", "CA certificate(s) to verify kasd (default: system roots); re-read on SIGHUP and when it changes, for new connections")
	fs.StringVar(&o.serverName, "server-name", "", "TLS server name to verify (default: the host of --kas-address)")
	fs.Var(&o.services, "service", "NAME=URL of a service this agent exposes (repeatable; reloaded on SIGHUP and when --config changes)")
	// Config files say "services: {NAME: URL}"; the flag is singular. Same list.
	fs.Var(&o.services, "services", "alias of --service, for config files (services: {NAME: URL})")
	fs.StringVar(&o.observabilityListen, "observability-listen", ":8154", "TCP address for /metrics, /healthz, /readyz; empty disables")
	fs.StringVar(&o.replica, "replica", os.Getenv("POD_NAME"), "name of this agent replica (default: $POD_NAME, else the host name)")
	fs.IntVar(&o.connections, "kas-connections", 2, "connections to keep to kasd, preferring distinct kasd instances so that one dying leaves the agent reachable")
	fs.IntVar(&o.maxIdlePerService, "max-idle-conns-per-service", 256, "idle connections kept to each service; size it for the concurrency served")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "how long in-flight requests may finish on a connection being replaced or at shutdown (after a draining kasd's GoAway, kasd's --shutdown-grace bounds them)")
	o.scale.register(fs)
	fs.BoolVar(&o.accessLog, "access-log", true, "log one info line per request (request id, service, method, path, status, code, bytes, duration, impersonated user)")
	fs.Float64Var(&o.accessLogSample, "access-log-sample", 1, "fraction (0..1) of successful requests the access log records, chosen by a hash of the request id as kasd does; errors and impersonated (Kubernetes audit) requests are always logged")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")
	cliconfig.LogFlushFlag(fs, &o.logFlush)
	fs.StringVar(&o.otelEndpoint, "otel-endpoint", "", tracing.EndpointUsage)
	o.kubernetes.register(fs)
	fs.StringVar(&o.gitlabProxyListen, "gitlab-proxy-listen", "127.0.0.1:8155", "TCP address where in-cluster components reach GitLab through kasd at /modules/{module}/{path}; empty disables")
	fs.DurationVar(&o.gitlabHeaderTimeout, "gitlab-response-header-timeout", agentd.DefaultGitLabResponseHeaderTimeout, "how long a module request waits for GitLab's answer through kasd, counted from its body's last byte; then 504 deadline_exceeded")
	o.gitlabProxyHTTP.RegisterFlags(fs, "gitlab-proxy", "GitLab proxy", httpserve.Limits{
		ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 1 << 20,
	})
	o.obsHTTP.RegisterFlags(fs, "observability", "observability port", httpserve.Limits{MaxConnections: 64})
	o.debug.RegisterFlags(fs, "127.0.0.1:6061")
	cliconfig.ExplainDurations(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := cliconfig.ApplyEnv(fs, envPrefix, os.LookupEnv); err != nil { // AGENTD_<FLAG>, see main.go
		return nil, err
	}
	if o.config != "" {
		if err := cliconfig.Apply(fs, o.config); err != nil {
			return nil, err
		}
	}
	// agentd.Config takes 0 for its defaults: a 0 given here is refused, not replaced in silence.
	if o.connections < 1 || o.connections > 16 {
		return nil, fmt.Errorf("--kas-connections must be 1..16, got %d", o.connections)
	}
	if err := errors.Join(
		cliconfig.Positive(fs, "max-idle-conns-per-service", "drain-timeout", "keep-alive-period", "idle-timeout",
			"quic-fallback-after", "quic-probe-interval",
			"gitlab-response-header-timeout", "gitlab-proxy-read-header-timeout", "gitlab-proxy-idle-timeout", "gitlab-proxy-max-header-bytes", "gitlab-proxy-max-connections",
			"observability-read-header-timeout", "observability-idle-timeout", "observability-max-header-bytes", "observability-max-connections"),
		cliconfig.NotZero(fs, "udp-receive-buffer", "udp-send-buffer"), // negative: the system default
	); err != nil {
		return nil, err
	}
	return o, nil
}

func parseServices(list []string) (map[string]*url.URL, error) {
	out := map[string]*url.URL{}
	for _, s := range list {
		name, raw, ok := strings.Cut(s, "=")
		if !ok || name == "" || raw == "" {
			return nil, fmt.Errorf("--service %q: want NAME=URL", s)
		}
		u, err := url.Parse(raw)
		if err != nil {
			// "127.0.0.1:9090" without a scheme gets Go's "first path segment in URL cannot
			// contain colon": say what is wanted instead.
			return nil, fmt.Errorf("--service %s: %q is not a URL: want http(s)://host[:port][/path]", name, raw)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--service %s given twice", name)
		}
		out[name] = u
	}
	if len(out) > api.MaxServices {
		return nil, fmt.Errorf("--service: %d services, kasd accepts at most %d", len(out), api.MaxServices)
	}
	return out, nil
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
		fmt.Println(buildinfo.Get(version, revision).String("agentd"))
		return nil
	}
	log, logOut, err := cliconfig.NewLogger(o.logLevel, o.logFormat, o.logFlush)
	if err != nil {
		return err
	}
	defer logOut.Close() // the last batch of log lines
	if o.tokenFile == "" {
		return errors.New("--token-file is required")
	}
	tok, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	services, err := parseServices(o.services)
	if err != nil {
		return err
	}
	tlsConf, err := quic.ClientTLSConfig(o.caFile, o.serverName)
	if err != nil {
		return fmt.Errorf("--ca-file: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := buildinfo.Register(reg, "agentd", buildinfo.Get(version, revision)); err != nil {
		return err
	}
	procCtl, err := procs.New(procs.Config{Setting: o.gomaxprocs, Namespace: "agentd", Registerer: reg, Log: &log})
	if err != nil {
		return err
	}
	httpMetrics, err := httpserve.NewMetrics(reg, "agentd")
	if err != nil {
		return err
	}
	ca, err := loadCA(o, reg, &log) // reloaded on SIGHUP and file change, tls.go
	if err != nil {
		return err
	}
	quicConf := o.scale.quic()
	if ca != nil {
		quicConf.RootCAs = ca
	}
	transportConf, err := o.transport.config()
	if err != nil {
		return err
	}
	tracer, stopTracing, err := tracing.Start(o.otelEndpoint, tracing.Config{ServiceName: "agentd", InstanceID: o.replica, Version: version}, &log)
	if err != nil {
		return err
	}
	defer stopTracing()
	handlers, closeHandlers, err := o.kubernetes.handlers(reg, &log)
	if err != nil {
		return err
	}
	defer closeHandlers()
	if n := len(services) + len(handlers); n > api.MaxServices {
		return fmt.Errorf("--service: %d services with the built-in ones (--kubernetes), kasd accepts at most %d", n, api.MaxServices)
	}
	agent, err := agentd.New(agentd.Config{
		KasAddresses:                o.kasAddresses,
		Token:                       strings.TrimSpace(string(tok)),
		TLS:                         tlsConf,
		Services:                    services,
		Handlers:                    handlers,
		Connections:                 o.connections,
		Replica:                     o.replica,
		Version:                     version,
		MaxIdleConnsPerService:      o.maxIdlePerService,
		DrainTimeout:                o.drainTimeout,
		GitLabResponseHeaderTimeout: o.gitlabHeaderTimeout,
		AccessLog:                   agentd.AccessLogConfig{Off: !o.accessLog, Sample: o.accessLogSample, ErrorsOnly: o.accessLogSample == 0},
		QUIC:                        quicConf,
		Transport:                   transportConf,
		Log:                         &log,
		Registerer:                  reg,
		Tracer:                      tracer,
	})
	if err != nil {
		return err
	}
	// Every listener first, so that a bad address fails before anything runs.
	var gitlabLn, obsLn, debugLn net.Listener
	if o.gitlabProxyListen != "" {
		if gitlabLn, err = net.Listen("tcp", o.gitlabProxyListen); err != nil {
			return fmt.Errorf("--gitlab-proxy-listen: %w", err)
		}
		defer gitlabLn.Close()
	}
	if o.observabilityListen != "" {
		if obsLn, err = net.Listen("tcp", o.observabilityListen); err != nil {
			return fmt.Errorf("--observability-listen: %w", err)
		}
		defer obsLn.Close()
	}
	if o.debug.Enabled {
		if debugLn, err = net.Listen("tcp", o.debug.Listen); err != nil {
			return fmt.Errorf("--pprof-listen: %w", err)
		}
		defer debugLn.Close()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return procCtl.Run(gctx) }) // GOMAXPROCS follows the load (--gomaxprocs)
	g.Go(func() error { return agent.Run(gctx) })
	// Services are reloaded on SIGHUP and when --config changes (README "Reloading agentd's
	// services"): flags, environment and file are read again as at start; only the URL
	// services change; a bad file keeps the running ones.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloadServices := func() {
		_ = agent.ReloadServices(func() (map[string]*url.URL, error) {
			o, err := parseFlags(args, io.Discard)
			if err != nil {
				return nil, err
			}
			return parseServices(o.services)
		})
	}
	g.Go(func() error { return agentd.WatchConfig(gctx, o.config, hup, reloadServices, &log) })
	watchCA(gctx, g, ca, &log)
	if gitlabLn != nil {
		// GitLab's modules endpoint, through kasd (agentd/gitlab.go).
		srv, err := httpserve.New("gitlab-proxy", agent.GitLabHandler(), o.gitlabProxyHTTP, httpMetrics)
		if err != nil {
			return fmt.Errorf("--gitlab-proxy-*: %w", err)
		}
		srv.ErrorLog = httpserve.ErrorLog(log)
		g.Go(func() error {
			if err := srv.Serve(gitlabLn); err != nil {
				return fmt.Errorf("--gitlab-proxy-listen: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), o.drainTimeout)
			defer cancel()
			if srv.Shutdown(sctx) != nil {
				_ = srv.Close()
			}
			return nil
		})
	}
	if obsLn != nil {
		srv, err := httpserve.New("observability", observabilityHandler(reg, agent.Connected), o.obsHTTP, httpMetrics)
		if err != nil {
			return fmt.Errorf("--observability-*: %w", err)
		}
		g.Go(func() error { return srv.Serve(obsLn) })
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	if debugLn != nil {
		srv, err := httpserve.New("pprof", httpserve.DebugHandler(), httpserve.DebugLimits, httpMetrics)
		if err != nil {
			return err
		}
		log.Warn().Str("pprof_listen", debugLn.Addr().String()).Msg("serving /debug/pprof/")
		g.Go(func() error { return srv.Serve(debugLn) })
		g.Go(func() error {
			<-gctx.Done()
			return srv.Close()
		})
	}
	log.Info().Strs("kas_addresses", o.kasAddresses).Int("services", len(services)).Msg("agentd started")
	err = g.Wait()
	log.Info().Msg("agentd stopped")
	return err
}

// observabilityHandler serves /metrics from g, /healthz, and /readyz (200 once connected to a
// kasd). Never /debug/pprof/: that is --pprof's own listener.
func observabilityHandler(g prometheus.Gatherer, connected func() int) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if connected() == 0 {
			http.Error(w, "not connected to kasd", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
