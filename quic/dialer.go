package quic

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	quicgo "github.com/quic-go/quic-go"
)

// Dialer dials QUIC connections from ONE UDP socket (one quicgo.Transport) shared by all of
// them, so that one process can hold thousands of connections without thousands of sockets.
// The zero value is not usable; use NewDialer. Safe for concurrent use.
type Dialer struct {
	tlsConf *tls.Config // cloned, TLS 1.3 minimum; never modified
	cfg     Config      // defaults applied
	pc      net.PacketConn
	tr      *quicgo.Transport

	closeOnce sync.Once
	closeErr  error // set by closeOnce
}

// NewDialer opens the Dialer's UDP socket (all interfaces, IPv4 and IPv6, random port).
// tlsConf.NextProtos must be non-empty; tlsConf is cloned and its MinVersion raised to TLS 1.3.
func NewDialer(tlsConf *tls.Config, cfg Config) (*Dialer, error) {
	tlsConf, err := checkTLS(tlsConf)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		return nil, fmt.Errorf("quic: dialer socket: %w", err)
	}
	sizeSocket(pc, cfg)
	if cfg.StatelessResetKey == nil {
		// A key for this socket's lifetime: a peer that still sends on a connection this side
		// has closed (it was paused past the idle timeout, say) gets a stateless reset at its
		// next packet and learns at once that the connection is gone.
		var k quicgo.StatelessResetKey
		if _, err := rand.Read(k[:]); err != nil {
			pc.Close()
			return nil, fmt.Errorf("quic: stateless reset key: %w", err)
		}
		cfg.StatelessResetKey = &k
	}
	return &Dialer{
		tlsConf: tlsConf,
		cfg:     cfg.WithDefaults(),
		pc:      pc,
		tr:      &quicgo.Transport{Conn: newLossyUDPConn(pc, cfg.NoUDPGRO), StatelessResetKey: cfg.StatelessResetKey},
	}, nil
}

// Dial resolves addr ("host:port", UDP) and dials it, bounded by ctx and
// Config.HandshakeTimeout. If the tls.Config has no ServerName, the host part of addr is used
// (on a clone). ctx bounds the dial only: the connection outlives it. The caller owns the
// connection and closes it with CloseWithError.
func (d *Dialer) Dial(ctx context.Context, addr string) (*quicgo.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	udpAddr, tlsConf, err := resolve(ctx, addr, d.tlsConf)
	if err != nil {
		return nil, err
	}
	tlsConf = withRootCAs(tlsConf, d.cfg)
	conn, err := d.tr.Dial(ctx, udpAddr, tlsConf, d.cfg.QUICConfig())
	if err != nil {
		return nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	return conn, nil
}

// DialUDP dials an already resolved address. serverName, if not empty, is the TLS server name to
// verify (the DNS name the address was resolved from); otherwise the tls.Config's ServerName or
// the IP is used.
func (d *Dialer) DialUDP(ctx context.Context, addr *net.UDPAddr, serverName string) (*quicgo.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	tlsConf := d.tlsConf
	if serverName != "" || tlsConf.ServerName == "" {
		tlsConf = tlsConf.Clone()
		if serverName == "" {
			serverName = addr.IP.String()
		}
		tlsConf.ServerName = serverName
	}
	tlsConf = withRootCAs(tlsConf, d.cfg)
	conn, err := d.tr.Dial(ctx, addr, tlsConf, d.cfg.QUICConfig())
	if err != nil {
		return nil, fmt.Errorf("quic: dial %s (%s): %w", addr, serverName, err)
	}
	return conn, nil
}

// ResolveAll returns every UDP address that addr ("host:port") resolves to, and the host, so
// that a DNS name with several addresses can be dialed as several peers.
func ResolveAll(ctx context.Context, addr string) (host string, addrs []*net.UDPAddr, err error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", nil, fmt.Errorf("quic: resolve %s: %w", addr, err)
	}
	port, err := net.DefaultResolver.LookupPort(ctx, "udp", portStr)
	if err != nil {
		return "", nil, fmt.Errorf("quic: resolve %s: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return host, []*net.UDPAddr{net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, uint16(port)))}, nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return "", nil, fmt.Errorf("quic: resolve %s: %w", addr, err)
	}
	for _, ip := range ips {
		addrs = append(addrs, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip.Unmap(), uint16(port))))
	}
	if len(addrs) == 0 {
		return "", nil, fmt.Errorf("quic: resolve %s: no address for %q", addr, host)
	}
	return host, addrs, nil
}

// LocalAddr is the address of the Dialer's shared socket.
func (d *Dialer) LocalAddr() net.Addr { return d.pc.LocalAddr() }

// Close closes the shared transport and socket. Like Listener.Close, it destroys every
// connection still open on this Dialer without notifying the peers, and returns when their
// goroutines are gone. Idempotent: later calls return the first call's result.
func (d *Dialer) Close() error {
	d.closeOnce.Do(func() {
		errTr := d.tr.Close()
		errPc := d.pc.Close()
		d.closeErr = errors.Join(ignoreClosed(errTr), ignoreClosed(errPc))
	})
	return d.closeErr
}

// Dial is a one-shot dial on a socket of its own. quic-go closes the transport when the
// connection ends, and a function registered with context.AfterFunc on conn.Context() then
// closes the socket: the caller must close the connection to release it. Prefer a Dialer
// when dialing more than once.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, cfg Config) (*quicgo.Conn, error) {
	tlsConf, err := checkTLS(tlsConf)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	udpAddr, tlsConf, err := resolve(ctx, addr, tlsConf)
	if err != nil {
		return nil, err
	}
	tlsConf = withRootCAs(tlsConf, cfg)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		return nil, fmt.Errorf("quic: dial socket: %w", err)
	}
	// quicgo.Dial makes a single-use transport: it is closed when the connection ends (or on a
	// failed dial), but it does not close a socket it did not create.
	conn, err := quicgo.Dial(ctx, newLossyUDPConn(pc, cfg.NoUDPGRO), udpAddr, tlsConf, cfg.QUICConfig())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	context.AfterFunc(conn.Context(), func() { pc.Close() })
	return conn, nil
}

// resolve turns "host:port" into a UDP address and returns tlsConf, cloned with ServerName
// set to host when it was empty.
func resolve(ctx context.Context, addr string, tlsConf *tls.Config) (*net.UDPAddr, *tls.Config, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	port, err := net.DefaultResolver.LookupPort(ctx, "udp", portStr)
	if err != nil {
		return nil, nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if lerr != nil {
			return nil, nil, fmt.Errorf("quic: dial %s: %w", addr, lerr)
		}
		if len(ips) == 0 {
			return nil, nil, fmt.Errorf("quic: dial %s: no address for %q", addr, host)
		}
		ip = ips[0]
	}
	if tlsConf.ServerName == "" {
		tlsConf = tlsConf.Clone()
		tlsConf.ServerName = host
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip.Unmap(), uint16(port))), tlsConf, nil
}

// withRootCAs returns tlsConf with the roots of cfg.RootCAs, on a clone, when that is set.
func withRootCAs(tlsConf *tls.Config, cfg Config) *tls.Config {
	if cfg.RootCAs == nil {
		return tlsConf
	}
	if pool := cfg.RootCAs.Pool(); pool != nil {
		tlsConf = tlsConf.Clone()
		tlsConf.RootCAs = pool
	}
	return tlsConf
}
