package certreload

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/internal/filewatch"
)

// Reload results, the values of the result label.
const (
	ResultOK        = "ok"
	ResultUnchanged = "unchanged"
	ResultError     = "error"
)

// Metrics are the reload counters and expiry gauges of one process.
type Metrics struct {
	reloads *prometheus.CounterVec
	expiry  *prometheus.GaugeVec
}

// NewMetrics registers <namespace>_tls_reloads_total{cert,result} and
// <namespace>_tls_cert_expiry_timestamp_seconds{cert} with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer, namespace string) (*Metrics, error) {
	m := &Metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_tls_reloads_total",
			Help: "Reloads of TLS certificates, keys and CA bundles, by cert and result (error: the previous material stays in use).",
		}, []string{"cert", "result"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: namespace + "_tls_cert_expiry_timestamp_seconds",
			Help: "NotAfter of the certificate in use (for a CA bundle: of its first certificate to expire), as a Unix time.",
		}, []string{"cert"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.reloads, m.expiry} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("certreload: %w", err)
			}
		}
	}
	return m, nil
}

// init creates name's series at zero, so that rates and alerts see them before a reload.
func (m *Metrics) init(name string) {
	if m != nil {
		for _, r := range []string{ResultOK, ResultUnchanged, ResultError} {
			m.reloads.WithLabelValues(name, r)
		}
	}
}

func (m *Metrics) count(name, result string) {
	if m != nil {
		m.reloads.WithLabelValues(name, result).Inc()
	}
}

func (m *Metrics) setExpiry(name string, t time.Time) {
	if m != nil {
		m.expiry.WithLabelValues(name).Set(float64(t.Unix()))
	}
}

// KeyPairConfig configures a KeyPair.
type KeyPairConfig struct {
	// Name labels the metrics and logs: "agent", "api". Required.
	Name string
	// CertFile and KeyFile are the PEM certificate chain and its key. Watch watches them.
	CertFile, KeyFile string
	// Load, if not nil, produces the pair instead of reading CertFile and KeyFile (kasd's
	// development certificate, re-issued when near expiry); CertFile and KeyFile are then only
	// watched.
	Load func() (tls.Certificate, error)
	// Metrics counts reloads; nil counts nothing.
	Metrics *Metrics
	// Log, if not nil, gets one line per reload.
	Log *zerolog.Logger
	// Now is the clock that judges expiry. Default time.Now.
	Now func() time.Time
}

// KeyPair is a certificate and key re-read on Reload. Safe for concurrent use.
type KeyPair struct {
	cfg KeyPairConfig
	cur atomic.Pointer[tls.Certificate]
	mu  sync.Mutex // serialises Reload
}

// NewKeyPair loads the pair once; an error here (unreadable, key not matching, expired, or not
// valid for more than 5 minutes yet) is an error at start.
func NewKeyPair(cfg KeyPairConfig) (*KeyPair, error) {
	if cfg.Name == "" {
		return nil, errors.New("certreload: KeyPairConfig.Name is required")
	}
	if cfg.Load == nil {
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, errors.New("certreload: a certificate file and a key file are required")
		}
		certFile, keyFile := cfg.CertFile, cfg.KeyFile
		cfg.Load = func() (tls.Certificate, error) { return tls.LoadX509KeyPair(certFile, keyFile) }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	k := &KeyPair{cfg: cfg}
	c, err := k.load()
	if err == nil {
		// As on Reload: a daemon started on an expired certificate was ready, and every
		// peer's handshake failed while it logged nothing.
		err = k.checkValidity(c)
	}
	if err != nil {
		return nil, err
	}
	k.cur.Store(c)
	cfg.Metrics.init(cfg.Name)
	cfg.Metrics.setExpiry(cfg.Name, c.Leaf.NotAfter)
	return k, nil
}

func (k *KeyPair) load() (*tls.Certificate, error) {
	c, err := k.cfg.Load()
	if err != nil {
		return nil, fmt.Errorf("%s certificate: %w", k.cfg.Name, err)
	}
	if c.Leaf == nil && len(c.Certificate) > 0 {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%s certificate: %w", k.cfg.Name, err)
		}
	}
	if c.Leaf == nil {
		return nil, fmt.Errorf("%s certificate: no certificate", k.cfg.Name)
	}
	return &c, nil
}

// notBeforeSkew is how far in the future a certificate's NotBefore may be (clocks of the issuer
// and this host apart) before the certificate is refused as not yet valid.
const notBeforeSkew = 5 * time.Minute

// checkValidity refuses a certificate that has expired or is not valid yet.
func (k *KeyPair) checkValidity(c *tls.Certificate) error {
	now := k.cfg.Now()
	if !now.Before(c.Leaf.NotAfter) {
		return fmt.Errorf("%s certificate: expired at %s", k.cfg.Name, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if c.Leaf.NotBefore.After(now.Add(notBeforeSkew)) {
		return fmt.Errorf("%s certificate: not valid before %s", k.cfg.Name, c.Leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// Current returns the pair in use.
func (k *KeyPair) Current() *tls.Certificate { return k.cur.Load() }

// GetCertificate is a tls.Config.GetCertificate returning the pair in use.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.cur.Load(), nil
}

// ServerConfig returns a clone of base that serves the pair in use at each handshake.
func (k *KeyPair) ServerConfig(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.Certificates = nil
	c.GetCertificate = k.GetCertificate
	return c
}

// Files returns the files Watch watches.
func (k *KeyPair) Files() []string { return []string{k.cfg.CertFile, k.cfg.KeyFile} }

// Reload re-reads the pair. On error (unreadable, key not matching, expired) the previous pair
// stays in use and the error is returned; every outcome is logged and counted.
func (k *KeyPair) Reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.load()
	if err == nil {
		err = k.checkValidity(c)
	}
	old := k.cur.Load()
	if err != nil {
		k.cfg.Metrics.count(k.cfg.Name, ResultError)
		if k.cfg.Log != nil {
			k.cfg.Log.Error().Err(err).Str("cert", k.cfg.Name).Str("error_code", "tls_reload_failed").
				Str("serial", old.Leaf.SerialNumber.Text(16)).Time("not_after", old.Leaf.NotAfter).
				Msg("TLS certificate not reloaded: keeping the one in use")
		}
		return err
	}
	if slices.EqualFunc(old.Certificate, c.Certificate, bytes.Equal) {
		k.cfg.Metrics.count(k.cfg.Name, ResultUnchanged)
		return nil
	}
	k.cur.Store(c)
	k.cfg.Metrics.setExpiry(k.cfg.Name, c.Leaf.NotAfter)
	k.cfg.Metrics.count(k.cfg.Name, ResultOK)
	if k.cfg.Log != nil {
		k.cfg.Log.Info().Str("cert", k.cfg.Name).Str("serial", c.Leaf.SerialNumber.Text(16)).
			Str("previous_serial", old.Leaf.SerialNumber.Text(16)).Time("not_after", c.Leaf.NotAfter).
			Msg("TLS certificate reloaded: new handshakes use it, connections up keep theirs")
	}
	return nil
}

// CAPoolConfig configures a CAPool.
type CAPoolConfig struct {
	// Name labels the metrics and logs: "ca". Required.
	Name string
	// File holds the PEM CA certificates. Required.
	File string
	// Metrics counts reloads; nil counts nothing.
	Metrics *Metrics
	// Log, if not nil, gets one line per reload.
	Log *zerolog.Logger
}

// CAPool is a CA bundle re-read on Reload. Safe for concurrent use.
type CAPool struct {
	cfg CAPoolConfig
	mu  sync.Mutex // serialises Reload; guards raw
	raw []byte     // the file's bytes in use
	cur atomic.Pointer[x509.CertPool]
}

// NewCAPool loads the bundle once; an error here is an error at start.
func NewCAPool(cfg CAPoolConfig) (*CAPool, error) {
	if cfg.Name == "" || cfg.File == "" {
		return nil, errors.New("certreload: CAPoolConfig.Name and File are required")
	}
	p := &CAPool{cfg: cfg}
	raw, pool, notAfter, err := p.load()
	if err != nil {
		return nil, err
	}
	p.raw = raw
	p.cur.Store(pool)
	cfg.Metrics.init(cfg.Name)
	cfg.Metrics.setExpiry(cfg.Name, notAfter)
	return p, nil
}

func (p *CAPool) load() ([]byte, *x509.CertPool, time.Time, error) {
	raw, err := os.ReadFile(p.cfg.File)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("%s bundle: %w", p.cfg.Name, err)
	}
	pool := x509.NewCertPool()
	var notAfter time.Time
	n := 0
	for rest := raw; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, nil, time.Time{}, fmt.Errorf("%s bundle %s: %w", p.cfg.Name, p.cfg.File, err)
		}
		pool.AddCert(c)
		if n == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
		n++
	}
	if n == 0 {
		return nil, nil, time.Time{}, fmt.Errorf("%s bundle: no PEM certificate in %s", p.cfg.Name, p.cfg.File)
	}
	return raw, pool, notAfter, nil
}

// Pool returns the pool in use.
func (p *CAPool) Pool() *x509.CertPool { return p.cur.Load() }

// Files returns the file Watch watches.
func (p *CAPool) Files() []string { return []string{p.cfg.File} }

// Reload re-reads the bundle. On error the previous pool stays in use and the error is
// returned; every outcome is logged and counted.
func (p *CAPool) Reload() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	raw, pool, notAfter, err := p.load()
	if err != nil {
		p.cfg.Metrics.count(p.cfg.Name, ResultError)
		if p.cfg.Log != nil {
			p.cfg.Log.Error().Err(err).Str("cert", p.cfg.Name).Str("error_code", "tls_reload_failed").
				Msg("CA bundle not reloaded: keeping the one in use")
		}
		return err
	}
	if bytes.Equal(raw, p.raw) {
		p.cfg.Metrics.count(p.cfg.Name, ResultUnchanged)
		return nil
	}
	p.raw = raw
	p.cur.Store(pool)
	p.cfg.Metrics.setExpiry(p.cfg.Name, notAfter)
	p.cfg.Metrics.count(p.cfg.Name, ResultOK)
	if p.cfg.Log != nil {
		p.cfg.Log.Info().Str("cert", p.cfg.Name).Str("file", p.cfg.File).
			Msg("CA bundle reloaded: new connections verify with it")
	}
	return nil
}

// Reloader is a KeyPair or a CAPool.
type Reloader interface {
	Reload() error
	Files() []string
}

// Watch reloads every r on each value of signals (SIGHUP) and when one of their files
// changes, until ctx ends; then it returns nil. Errors are logged and counted by Reload.
func Watch(ctx context.Context, signals <-chan os.Signal, log *zerolog.Logger, rs ...Reloader) error {
	var files []string
	for _, r := range rs {
		files = append(files, r.Files()...)
	}
	return filewatch.Watch(ctx, filewatch.Config{
		Paths:   files,
		Signals: signals,
		WatchError: func(err error) {
			if log != nil {
				log.Warn().Err(err).Msg("watching TLS files; SIGHUP still reloads them")
			}
		},
	}, func(t filewatch.Trigger) {
		if log != nil {
			log.Debug().Str("trigger", string(t)).Msg("reloading TLS files")
		}
		for _, r := range rs {
			_ = r.Reload() // logged and counted
		}
	})
}
