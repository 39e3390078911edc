package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

// DefaultDialTimeout is ClientConfig.DialTimeout's default.
const DefaultDialTimeout = 5 * time.Second

// ClientConfig is how kasd's flags (--etcd-endpoints, TLS, user/password) describe the etcd
// client.
type ClientConfig struct {
	// Endpoints are etcd client URLs, e.g. "http://127.0.0.1:2379". Required.
	Endpoints []string
	// CAFile verifies the server certificate (default: the system roots, when TLS is used).
	// CertFile and KeyFile are a client certificate; both or neither. Setting any of the three
	// turns TLS on.
	CAFile, CertFile, KeyFile string
	// ClientCert and RootCAs, if set, are asked at every TLS handshake instead of reading
	// CertFile/KeyFile and CAFile once: kasd passes certificates it reloads without a restart
	// (internal/certreload). Either turns TLS on.
	ClientCert func() *tls.Certificate
	RootCAs    func() *x509.CertPool
	// Username and Password authenticate to etcd when Username is set.
	Username, Password string
	// DialTimeout bounds connection attempts. Default 5s.
	DialTimeout time.Duration
	// Log receives the etcd client's own logs at error level and above (default: none).
	Log zerolog.Logger
}

// reconnectBackoff replaces gRPC's default reconnect backoff (1 s growing to 120 s): after an
// etcd outage the registry must re-grant its lease within a fraction of the TTL, not minutes.
var reconnectBackoff = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff: grpcbackoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   time.Second,
	},
	MinConnectTimeout: DefaultDialTimeout,
})

// NewClient builds an etcd client. It does not wait for etcd to be reachable.
func NewClient(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("registry: no etcd endpoints")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("registry: etcd client certificate and key must be given together")
	}
	tlsCfg, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	dialOptions := []grpc.DialOption{reconnectBackoff}
	if cfg.RootCAs != nil {
		// After clientv3's own TLS credentials, so these win.
		dialOptions = append(dialOptions, grpc.WithTransportCredentials(&reloadingTLS{base: tlsCfg, roots: cfg.RootCAs}))
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Logger:      newZapLogger(cfg.Log),
		// Pings notice a silently dead connection (no RST), which would otherwise leave the
		// watch, and so the view, stale for as long as the OS keeps the socket. etcd's server
		// refuses pings more often than every 5 s.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		DialOptions:          dialOptions,
	})
	if err != nil {
		return nil, fmt.Errorf("registry: etcd client: %w", err)
	}
	return c, nil
}

// clientTLS is the etcd client's TLS configuration, nil for plain connections.
func clientTLS(cfg ClientConfig) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.ClientCert == nil && cfg.RootCAs == nil {
		return nil, nil
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case cfg.RootCAs != nil:
		// Set per handshake by reloadingTLS (NewClient); this pool is the one at start.
		tlsCfg.RootCAs = cfg.RootCAs()
	case cfg.CAFile != "":
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry: reading etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("registry: no certificate found in etcd CA file %s", cfg.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	switch {
	case cfg.ClientCert != nil:
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cfg.ClientCert(), nil }
	case cfg.CertFile != "":
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("registry: loading etcd client certificate: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	return tlsCfg, nil
}

// reloadingTLS is gRPC's TLS transport credentials with the root CAs in use at each handshake
// (ClientConfig.RootCAs): a clone of base with the current pool, verified by crypto/tls as
// usual (chain and the endpoint's name, which gRPC sets from the address it dials).
type reloadingTLS struct {
	base  *tls.Config
	roots func() *x509.CertPool
}

func (r *reloadingTLS) current() credentials.TransportCredentials {
	cfg := r.base.Clone()
	cfg.RootCAs = r.roots()
	return credentials.NewTLS(cfg)
}

func (r *reloadingTLS) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return r.current().ClientHandshake(ctx, authority, raw)
}

func (r *reloadingTLS) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("registry: client-side credentials only")
}

func (r *reloadingTLS) Info() credentials.ProtocolInfo { return credentials.NewTLS(r.base).Info() }

func (r *reloadingTLS) Clone() credentials.TransportCredentials {
	return &reloadingTLS{base: r.base.Clone(), roots: r.roots}
}

func (r *reloadingTLS) OverrideServerName(name string) error {
	r.base.ServerName = name
	return nil
}
