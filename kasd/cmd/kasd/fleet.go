package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/cliconfig"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// fleetOptions are the flags of the fleet: etcd, the registry and peer forwarding.
type fleetOptions struct {
	enabled            bool
	fleetID            string
	peerListen         string
	peerAdvertise      string
	peerSecretFile     string
	peerCAFile         string
	etcdEndpoints      cliconfig.StringList
	etcdCAFile         string
	etcdCertFile       string
	etcdKeyFile        string
	etcdUsername       string
	etcdPasswordFile   string
	etcdPrefix         string
	registryTTL        time.Duration
	embeddedListen     string
	embeddedPeerListen string
	rebalanceInterval  time.Duration
	rebalanceTolerance float64
	rebalanceMinAge    time.Duration
	peerIdleTimeout    time.Duration
}

func (o *fleetOptions) register(fs *flag.FlagSet) {
	fs.BoolVar(&o.enabled, "fleet", true, "join a fleet through etcd (false: a standalone kasd with no etcd and no peers)")
	fs.StringVar(&o.fleetID, "fleet-id", "", "this kasd's fleet (letters, digits, '.', '_', '-'): its registry keys in etcd live under --etcd-prefix + fleets/<id>/ and every peer handshake checks it, so fleets sharing one etcd never see or join each other; every replica of a fleet needs the same one. Default: derived from the peer secret (f-<16 hex digits>), so that replicas given one secret are one fleet and a kasd with another secret is another fleet, never a member its peers refuse")
	fs.StringVar(&o.peerListen, "peer-listen", ":8152", "UDP address for connections from other kasd replicas")
	fs.StringVar(&o.peerAdvertise, "peer-advertise-address", "", "host:port other replicas dial to reach this one (default: the --peer-listen host, else $POD_IP, else 127.0.0.1, with the --peer-listen port)")
	fs.StringVar(&o.peerSecretFile, "peer-secret-file", "", "base64 secret (>= 32 bytes decoded) shared by all replicas; default: generated once in --data-dir (then every replica must be given that file)")
	fs.StringVar(&o.peerCAFile, "peer-ca-file", "", "CA to verify peers' certificates (default: not verified; replicas authenticate each other with the peer secret bound to the TLS session); re-read on SIGHUP and when it changes")
	fs.Var(&o.etcdEndpoints, "etcd-endpoints", "etcd client URLs (repeatable, comma-separated); empty: run an embedded etcd in --data-dir")
	fs.StringVar(&o.etcdCAFile, "etcd-ca-file", "", "CA for etcd's TLS (reloaded on SIGHUP and file change)")
	fs.StringVar(&o.etcdCertFile, "etcd-cert-file", "", "client certificate for etcd (reloaded with --etcd-key-file on SIGHUP and file change)")
	fs.StringVar(&o.etcdKeyFile, "etcd-key-file", "", "client key for etcd")
	fs.StringVar(&o.etcdUsername, "etcd-username", "", "etcd user name")
	fs.StringVar(&o.etcdPasswordFile, "etcd-password-file", "", "file holding the etcd password")
	fs.StringVar(&o.etcdPrefix, "etcd-prefix", registry.DefaultPrefix, "key prefix for the registry in etcd: each fleet publishes under <prefix>fleets/<fleet-id>/")
	fs.DurationVar(&o.registryTTL, "registry-ttl", registry.DefaultTTL, "lease TTL: how long a dead kasd's entries outlive it")
	fs.StringVar(&o.embeddedListen, "embedded-etcd-listen", registry.DefaultEmbeddedClientAddr, "client address of the embedded etcd; other local kasd processes share it (if taken by an etcd, join it)")
	fs.StringVar(&o.embeddedPeerListen, "embedded-etcd-peer-listen", registry.DefaultEmbeddedPeerAddr, "peer address of the embedded etcd")
	fs.DurationVar(&o.rebalanceInterval, "rebalance-interval", time.Second, "how often this kasd compares its agent connections with the fleet's average and, holding too many, asks one agent connection to move to the least loaded kasd (jittered ±50%; 0 or negative: never rebalance)")
	fs.Float64Var(&o.rebalanceTolerance, "rebalance-tolerance", 0.1, "margin around the fleet's average connections per kasd, as a fraction of it, within which no connection is moved (0: no margin, connections move until every kasd is within one connection of another)")
	fs.DurationVar(&o.peerIdleTimeout, "peer-idle-timeout", time.Second, "a peer link that has received nothing for this long is dead (keep-alives every quarter of it) and its requests fail over; raise it where kasd may be starved of CPU for longer (a shared, overloaded host), at the cost of noticing a dead peer later")
	fs.DurationVar(&o.rebalanceMinAge, "rebalance-min-age", 5*time.Second, "a connection younger than this is never asked to move")
}

// validate checks what the flags' types do not. --peer-advertise-address is published for the
// other replicas to dial: without a usable port every request they forward here would fail
// (502, logged only by them), while this kasd looks healthy.
func (o *fleetOptions) validate() error {
	if o.peerAdvertise == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(o.peerAdvertise)
	if err != nil {
		return fmt.Errorf("--peer-advertise-address %q: want host:port (an IPv6 address in brackets): %w", o.peerAdvertise, err)
	}
	if host == "" {
		return fmt.Errorf("--peer-advertise-address %q: no host (other replicas dial it)", o.peerAdvertise)
	}
	// Looked up as the dial does: a number, or a service name.
	if n, err := net.LookupPort("udp", port); err != nil || n < 1 {
		return fmt.Errorf("--peer-advertise-address %q: port must be 1..65535 or a known service name", o.peerAdvertise)
	}
	return nil
}

// fleetParts are the running pieces of the fleet; close stops them in order.
type fleetParts struct {
	cfg      *kasd.FleetConfig
	peerLn   *quic.Listener
	reg      *registry.Registry
	client   *clientv3.Client
	embedded *registry.Embedded
}

// startFleet starts (or joins) etcd, the registry and the peer listener.
func startFleet(o *options, f *fleetOptions, instanceID string, certs *kasdCerts, apiAddr string, log zerolog.Logger, reg prometheus.Registerer) (_ *fleetParts, err error) {
	p := &fleetParts{}
	defer func() {
		if err != nil {
			p.close(context.Background(), false)
		}
	}()
	secret, err := peerSecret(o.dataDir, f.peerSecretFile, log)
	if err != nil {
		return nil, err
	}
	fleetID, derived := f.fleetID, false
	if fleetID == "" {
		// A safe default without configuration: one secret, one fleet (see --fleet-id).
		fleetID, derived = auth.DeriveFleetID(secret), true
	}
	if err := registry.ValidateFleetID(fleetID); err != nil {
		return nil, fmt.Errorf("--fleet-id: %w", err)
	}
	var peerTLS *tls.Config
	peerQUIC := quic.Config{NoUDPGRO: !o.scale.gro, MaxIdleTimeout: f.peerIdleTimeout, KeepAlivePeriod: f.peerIdleTimeout / 4}
	if f.peerCAFile != "" {
		if peerTLS, err = quic.ClientTLSConfig(f.peerCAFile, ""); err != nil {
			return nil, fmt.Errorf("--peer-ca-file: %w", err)
		}
		// Reloaded with the certificates (tls.go): new peer links verify with the bundle in use.
		if peerQUIC.RootCAs, err = certs.peerCA(f.peerCAFile); err != nil {
			return nil, err
		}
	}
	// Both ends of a link: QUIC takes the smaller idle timeout of the two.
	p.peerLn, err = quic.Listen(f.peerListen, certs.serverTLS(api.ALPNPeer), quic.Config{NoUDPGRO: !o.scale.gro,
		MaxIdleTimeout: f.peerIdleTimeout, KeepAlivePeriod: f.peerIdleTimeout / 4})
	if err != nil {
		return nil, fmt.Errorf("--peer-listen: %w", err)
	}
	endpoints := []string(f.etcdEndpoints)
	if len(endpoints) == 0 {
		p.embedded, err = registry.StartEmbedded(registry.EmbeddedConfig{
			Dir:        filepath.Join(o.dataDir, "etcd"),
			ClientAddr: f.embeddedListen,
			PeerAddr:   f.embeddedPeerListen,
			Log:        log,
		})
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: %w", err)
		}
		endpoints = p.embedded.Endpoints()
		log.Info().Strs("endpoints", endpoints).Bool("joined", p.embedded.Joined()).Msg("embedded etcd")
	}
	password := ""
	if f.etcdPasswordFile != "" {
		b, err := os.ReadFile(f.etcdPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-password-file: %w", err)
		}
		password = strings.TrimSpace(string(b))
	}
	etcdCfg := registry.ClientConfig{Endpoints: endpoints, Username: f.etcdUsername, Password: password, Log: log}
	// TLS material reloaded on SIGHUP and file change, like kasd's own certificates (tls.go).
	if err := certs.etcdTLS(&etcdCfg, f.etcdCAFile, f.etcdCertFile, f.etcdKeyFile); err != nil {
		return nil, err
	}
	p.client, err = registry.NewClient(etcdCfg)
	if err != nil {
		return nil, err
	}
	self := registry.Instance{
		ID:       instanceID,
		PeerAddr: advertise(f.peerAdvertise, p.peerLn.Addr().String(), f.peerListen),
		APIAddr:  advertise("", apiAddr, o.apiListen),
		Version:  version,
		// Lets a kasd given another secret for this fleet id refuse to join (below).
		FleetCheck: auth.FleetSecretCheck(secret, fleetID),
	}
	rcfg := registry.Config{Prefix: f.etcdPrefix, FleetID: fleetID, TTL: f.registryTTL}
	p.reg, err = registry.New(p.client, rcfg, self, log, reg)
	if err != nil {
		return nil, err
	}
	log.Info().Str("fleet", fleetID).Bool("fleet_id_derived", derived).Str("etcd_root", rcfg.WithDefaults().Root()).
		Str("peer_addr", self.PeerAddr).Str("peer_listen", p.peerLn.Addr().String()).Msg("fleet registry started")
	if err := checkFleetSecret(p.reg, secret, f.registryTTL, log); err != nil {
		// Revoke at once: the instance key published meanwhile must not outlive this refusal.
		sctx, cancel := context.WithTimeout(context.Background(), f.registryTTL)
		_ = p.reg.Shutdown(sctx)
		cancel()
		return nil, err
	}
	p.cfg = &kasd.FleetConfig{Registry: p.reg, PeerSecret: secret, PeerTLS: peerTLS, PeerQUIC: peerQUIC}
	f.rebalance(p.cfg)
	return p, nil
}

// rebalance sets the rebalancing fields of c from the flags. FleetConfig takes 0 for its
// defaults, so a 0 the operator gave is passed on as FleetConfig's negative value of the same
// meaning: --rebalance-interval 0 never rebalances, --rebalance-tolerance 0 keeps no margin.
func (f *fleetOptions) rebalance(c *kasd.FleetConfig) {
	c.RebalanceInterval, c.RebalanceTolerance, c.RebalanceMinAge = f.rebalanceInterval, f.rebalanceTolerance, f.rebalanceMinAge
	if f.rebalanceInterval <= 0 {
		c.RebalanceInterval = -1
	}
	if f.rebalanceTolerance == 0 {
		c.RebalanceTolerance = -1
	}
}

// checkFleetSecret refuses to join a fleet whose running instances were given another peer
// secret (kasd.CheckFleetSecret): joining would make every request between them fail. An etcd
// that does not answer within wait is no reason not to start (kasd serves its own agents
// without etcd): the peer handshake then refuses such peers by name.
func checkFleetSecret(reg *registry.Registry, secret []byte, wait time.Duration, log zerolog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := kasd.CheckFleetSecret(ctx, reg, secret)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kasd.ErrPeerSecretMismatch):
		return fmt.Errorf("refusing to join: %w", err)
	default:
		log.Warn().Err(err).Dur("waited", wait).Msg("could not check the fleet's peer secret before joining; peers with another secret will be refused at the handshake")
		return nil
	}
}

// close stops the fleet pieces. graceful deletes this instance's keys and revokes its lease
// (a drain); otherwise the lease is left to expire.
func (p *fleetParts) close(ctx context.Context, graceful bool) {
	if p.reg != nil {
		if graceful {
			_ = p.reg.Shutdown(ctx)
		} else {
			_ = p.reg.Close()
		}
	}
	if p.peerLn != nil {
		_ = p.peerLn.Close()
	}
	if p.client != nil {
		_ = p.client.Close()
	}
	if p.embedded != nil {
		_ = p.embedded.Close()
	}
}

// peerSecret reads --peer-secret-file or, without one, creates a secret once in the data dir.
func peerSecret(dataDir, file string, log zerolog.Logger) ([]byte, error) {
	if file == "" {
		file = filepath.Join(dataDir, "peer.secret")
		if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(file, []byte(auth.NewSecret()+"\n"), 0o600); err != nil {
				return nil, fmt.Errorf("creating %s: %w", file, err)
			}
			log.Warn().Str("file", file).Msg("generated a peer secret; give this file to every replica with --peer-secret-file")
		}
	}
	return auth.ReadSecretFile(file)
}

// advertise picks the address other replicas use: explicit, else the listen host if it is a
// specific address, else $POD_IP, else 127.0.0.1; with the port actually bound.
func advertise(explicit, bound, listen string) string {
	if explicit != "" {
		return explicit
	}
	_, port, _ := net.SplitHostPort(bound)
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = os.Getenv("POD_IP")
		if host == "" {
			host = "127.0.0.1"
		}
	}
	return net.JoinHostPort(host, port)
}
