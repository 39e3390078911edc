package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/qkas/qkas/internal/certreload"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// kasdCerts are the certificates kasd serves, each reloaded without a restart (README
// "Reloading TLS certificates"): agent is served on the agent and peer listeners (and on the
// client API with --api-tls-agent-cert), api on the client API with --api-tls-cert-file.
type kasdCerts struct {
	agent  *certreload.KeyPair
	api    *certreload.KeyPair // nil: none of its own
	caFile string              // the development CA agents trust, "" with --tls-cert-file
	// peer verifies peers' certificates (--peer-ca-file), nil without it. Set by startFleet
	// before watch.
	peer *certreload.CAPool
	// etcdCA and etcdClient are the etcd client's --etcd-ca-file and --etcd-cert-file/
	// --etcd-key-file, nil without them. Set by startFleet before watch.
	etcdCA     *certreload.CAPool
	etcdClient *certreload.KeyPair
	metrics    *certreload.Metrics
	log        *zerolog.Logger
	// tickets: the QUIC listeners issue and accept TLS session tickets under a key derived
	// from the agent certificate's key and the listener's ALPN (--tls-session-resumption).
	tickets bool
}

// loadCerts loads the certificates kasd serves: --tls-cert-file/--tls-key-file, or (once) a
// development CA and certificate in --data-dir whose CA agents trust with --ca-file; and
// --api-tls-cert-file/--api-tls-key-file.
func loadCerts(o *options, reg prometheus.Registerer, log *zerolog.Logger) (*kasdCerts, error) {
	m, err := certreload.NewMetrics(reg, "kasd")
	if err != nil {
		return nil, err
	}
	c := &kasdCerts{metrics: m, log: log}
	agentCfg := certreload.KeyPairConfig{Name: "agent", CertFile: o.tlsCertFile, KeyFile: o.tlsKeyFile, Metrics: m, Log: log}
	switch {
	case o.tlsCertFile != "" || o.tlsKeyFile != "":
		if o.tlsCertFile == "" || o.tlsKeyFile == "" {
			return nil, errors.New("--tls-cert-file and --tls-key-file go together")
		}
	default:
		hosts := append([]string(nil), o.tlsHosts...)
		if h, _, err := net.SplitHostPort(o.agentListen); err == nil && h != "" && !strings.Contains(h, "*") {
			hosts = append(hosts, h)
		}
		// Reloading re-runs DevCertificate, which re-issues the certificate 30 days before it
		// expires: a long-running development kasd renews it on SIGHUP.
		agentCfg.CertFile = filepath.Join(o.dataDir, quic.DevServerFile)
		agentCfg.KeyFile = filepath.Join(o.dataDir, quic.DevServerKeyFile)
		agentCfg.Load = func() (tls.Certificate, error) {
			cert, _, err := quic.DevCertificate(o.dataDir, hosts)
			return cert, err
		}
		c.caFile = filepath.Join(o.dataDir, quic.DevCAFile)
	}
	if c.agent, err = certreload.NewKeyPair(agentCfg); err != nil {
		return nil, fmt.Errorf("--tls-cert-file: %w", err)
	}
	if c.tickets = o.tlsResumption; c.tickets {
		if _, ok := quic.TicketKey(c.agent.Current(), ""); !ok {
			log.Warn().Msg("the TLS key cannot be exported: session tickets resume only with this process (a restart means full handshakes)")
		}
	}
	if o.apiTLSCertFile != "" || o.apiTLSKeyFile != "" {
		if o.apiTLSCertFile == "" || o.apiTLSKeyFile == "" || o.apiTLSAgentCert {
			return nil, errors.New("--api-tls-cert-file and --api-tls-key-file go together, without --api-tls-agent-cert")
		}
		if c.api, err = certreload.NewKeyPair(certreload.KeyPairConfig{Name: "api", CertFile: o.apiTLSCertFile,
			KeyFile: o.apiTLSKeyFile, Metrics: m, Log: log}); err != nil {
			return nil, fmt.Errorf("--api-tls-cert-file: %w", err)
		}
	}
	return c, nil
}

// peerCA loads --peer-ca-file as a CA bundle reloaded with the certificates.
func (c *kasdCerts) peerCA(file string) (*certreload.CAPool, error) {
	p, err := certreload.NewCAPool(certreload.CAPoolConfig{Name: "peer_ca", File: file, Metrics: c.metrics, Log: c.log})
	if err != nil {
		return nil, fmt.Errorf("--peer-ca-file: %w", err)
	}
	c.peer = p
	return p, nil
}

// etcdTLS loads the etcd client's CA bundle and certificate (each optional) as material
// reloaded with the certificates, and sets them in cfg.
func (c *kasdCerts) etcdTLS(cfg *registry.ClientConfig, caFile, certFile, keyFile string) error {
	if caFile != "" {
		p, err := certreload.NewCAPool(certreload.CAPoolConfig{Name: "etcd_ca", File: caFile, Metrics: c.metrics, Log: c.log})
		if err != nil {
			return fmt.Errorf("--etcd-ca-file: %w", err)
		}
		c.etcdCA, cfg.RootCAs = p, p.Pool
	}
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return errors.New("--etcd-cert-file and --etcd-key-file go together")
		}
		k, err := certreload.NewKeyPair(certreload.KeyPairConfig{Name: "etcd_client", CertFile: certFile, KeyFile: keyFile, Metrics: c.metrics, Log: c.log})
		if err != nil {
			return fmt.Errorf("--etcd-cert-file: %w", err)
		}
		c.etcdClient, cfg.ClientCert = k, k.Current
	}
	return nil
}

// apiTLS returns the client API's TLS configuration: nil (plain HTTP) unless a certificate was
// given, or --api-tls-agent-cert asks for the agents' certificate.
func (c *kasdCerts) apiTLS(o *options) *tls.Config {
	pair := c.api
	if pair == nil && o.apiTLSAgentCert {
		pair = c.agent
	}
	if pair == nil {
		return nil
	}
	return pair.ServerConfig(&tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
}

// serverTLS is the TLS configuration of a QUIC listener offering alpn with the agent
// certificate in use at each handshake, issuing session tickets with --tls-session-resumption.
func (c *kasdCerts) serverTLS(alpn string) *tls.Config {
	conf := c.agent.ServerConfig(quic.ServerTLSConfig(tls.Certificate{}, alpn))
	if c.tickets {
		quic.NewSessionTickets(c.agent.Current, alpn).Enable(conf)
	} else {
		conf.SessionTicketsDisabled = true
	}
	return conf
}

// watch reloads the certificates on SIGHUP and when their files change, in a goroutine of g
// that ends with ctx. A bad file keeps the certificate in use (logged, counted in
// kasd_tls_reloads_total{result="error"}).
func (c *kasdCerts) watch(ctx context.Context, g *errgroup.Group, log *zerolog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	rs := []certreload.Reloader{c.agent}
	if c.api != nil {
		rs = append(rs, c.api)
	}
	if c.peer != nil {
		rs = append(rs, c.peer)
	}
	if c.etcdCA != nil {
		rs = append(rs, c.etcdCA)
	}
	if c.etcdClient != nil {
		rs = append(rs, c.etcdClient)
	}
	g.Go(func() error {
		defer signal.Stop(hup)
		return certreload.Watch(ctx, hup, log, rs...)
	})
}
