package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// Embedded etcd defaults and bounds.
const (
	DefaultEmbeddedClientAddr = "127.0.0.1:2379"
	DefaultEmbeddedPeerAddr   = "127.0.0.1:2380"
	DefaultEmbeddedName       = "qkas"
	// embeddedStartTimeout bounds how long StartEmbedded waits for the server to be ready.
	embeddedStartTimeout = 30 * time.Second
	// joinProbeTimeout bounds the Status call that decides whether an address that is
	// already in use is served by an etcd we can join.
	joinProbeTimeout = 2 * time.Second
)

// EmbeddedConfig configures StartEmbedded.
type EmbeddedConfig struct {
	// Dir is the data directory. Required.
	Dir string
	// ClientAddr is the host:port etcd serves clients on. Default "127.0.0.1:2379". Port 0
	// picks a free port (see Embedded.ClientAddr).
	ClientAddr string
	// PeerAddr is the host:port for etcd's peer protocol (only this member uses it).
	// Default "127.0.0.1:2380". Port 0 picks a free port.
	PeerAddr string
	// Name is the member name. Default "qkas".
	Name string
	// Log receives etcd's own logs at error level and above (default: none).
	Log zerolog.Logger
}

// Embedded is an etcd server started by StartEmbedded, or, when another process already
// serves etcd on the client address, a handle that only joins it.
type Embedded struct {
	clientAddr, peerAddr string
	joined               bool
	etcd                 *embed.Etcd // nil when joined
	// closing is set when Close begins: etcd's errors about its listeners closing are then
	// logged at debug (newZapLoggerClosing).
	closing *atomic.Bool

	closeOnce sync.Once
}

// StartEmbedded starts an etcd server in cfg.Dir and waits until it is ready (at most 30s).
// If ClientAddr is already in use and an etcd answers there (a Status call with a short
// timeout), it returns an Embedded that only joins it: Joined() is true and Close leaves that
// server alone. If something else holds the address, it fails.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("registry: embedded etcd needs a data dir")
	}
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = DefaultEmbeddedClientAddr
	}
	if cfg.PeerAddr == "" {
		cfg.PeerAddr = DefaultEmbeddedPeerAddr
	}
	if cfg.Name == "" {
		cfg.Name = DefaultEmbeddedName
	}

	clientAddr, err := resolveListenAddr(cfg.ClientAddr)
	if errors.Is(err, syscall.EADDRINUSE) {
		if perr := probeEtcd(cfg.ClientAddr, cfg.Log); perr != nil {
			return nil, fmt.Errorf("registry: etcd client address %s is in use and no etcd answers there: %w", cfg.ClientAddr, perr)
		}
		return &Embedded{clientAddr: cfg.ClientAddr, joined: true}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry: etcd client address: %w", err)
	}
	peerAddr, err := resolveListenAddr(cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("registry: etcd peer address: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	curl := url.URL{Scheme: "http", Host: clientAddr}
	purl := url.URL{Scheme: "http", Host: peerAddr}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	ec.Logger = "zap"
	closing := new(atomic.Bool)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newZapLoggerClosing(cfg.Log, closing))

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("registry: starting embedded etcd: %w", err)
	}
	timer := time.NewTimer(embeddedStartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("registry: embedded etcd failed while starting: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("registry: embedded etcd not ready after %v", embeddedStartTimeout)
	}
	return &Embedded{clientAddr: clientAddr, peerAddr: peerAddr, etcd: e, closing: closing}, nil
}

// Endpoints returns the client URLs to give NewClient.
func (e *Embedded) Endpoints() []string { return []string{"http://" + e.clientAddr} }

// ClientAddr returns the host:port clients use (with a port 0 resolved to the real port).
func (e *Embedded) ClientAddr() string { return e.clientAddr }

// PeerAddr returns the peer host:port ("" when joined).
func (e *Embedded) PeerAddr() string { return e.peerAddr }

// Joined reports whether another process's etcd was joined instead of starting one.
func (e *Embedded) Joined() bool { return e.joined }

// Close stops the server (if this Embedded started it) and waits for it. Clients still
// connected with open watches make it wait for etcd's graceful-stop timeout (about 7 s), so
// close them first. Idempotent.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		if e.etcd != nil {
			e.closing.Store(true)
			e.etcd.Close()
		}
	})
	return nil
}

// resolveListenAddr checks that addr can be listened on, resolving port 0 to a free port.
// The port is released again before etcd binds it; the window is short and, if another
// process takes the port meanwhile, etcd fails to start with a clear error.
func resolveListenAddr(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// probeEtcd reports whether an etcd answers a Status call at addr.
func probeEtcd(addr string, log zerolog.Logger) error {
	ep := "http://" + addr
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{ep},
		DialTimeout: joinProbeTimeout,
		Logger:      newZapLogger(log),
	})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), joinProbeTimeout)
	defer cancel()
	_, err = c.Status(ctx, ep)
	return err
}
