package main

import (
	"flag"
	"fmt"
	"net/url"
	"time"

	"golang.org/x/net/http/httpproxy"

	"github.com/qkas/qkas/agentd"
)

// transportOptions are the flags that choose how agentd reaches kasd (docs/transport.md).
type transportOptions struct {
	mode          string
	fallbackAfter time.Duration
	probeInterval time.Duration
	proxyURL      string
	tcpPort       int
}

func (t *transportOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&t.mode, "transport", agentd.TransportAuto, "how to reach kasd: auto (QUIC; TCP when UDP is blocked, back to QUIC by itself), quic (never TCP) or tcp (never QUIC)")
	fs.DurationVar(&t.fallbackAfter, "quic-fallback-after", agentd.DefaultFallbackAfter, "auto transport: dial TCP when no QUIC handshake completes within this time")
	fs.DurationVar(&t.probeInterval, "quic-probe-interval", agentd.DefaultProbeInterval, "auto transport: while on TCP, try QUIC this often (±25% jitter) and move back when it works")
	fs.StringVar(&t.proxyURL, "proxy-url", "", "HTTP CONNECT proxy for the TCP transport (http://[user:password@]host:port); default: $HTTPS_PROXY (NO_PROXY applies either way); QUIC never uses a proxy")
	fs.IntVar(&t.tcpPort, "kas-tcp-port", 0, "TCP port of kasd's agent listener (default: the port of --kas-address; kasd listens on both)")
}

// config builds the agent's TransportConfig: the proxy is --proxy-url, else HTTPS_PROXY
// (https_proxy), and NO_PROXY (no_proxy) exempts addresses either way.
func (t *transportOptions) config() (agentd.TransportConfig, error) {
	c := agentd.TransportConfig{Mode: t.mode, FallbackAfter: t.fallbackAfter, ProbeInterval: t.probeInterval, TCPPort: t.tcpPort}
	env := httpproxy.FromEnvironment()
	pc := httpproxy.Config{HTTPSProxy: env.HTTPSProxy, NoProxy: env.NoProxy}
	if t.proxyURL != "" {
		u, err := url.Parse(t.proxyURL)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return c, fmt.Errorf("--proxy-url %q: want http://[user:password@]host:port", t.proxyURL)
		}
		pc.HTTPSProxy = t.proxyURL
	}
	if pc.HTTPSProxy != "" {
		proxy := pc.ProxyFunc()
		c.Proxy = func(u *url.URL) (*url.URL, error) { return proxy(u) }
	}
	return c, nil
}
