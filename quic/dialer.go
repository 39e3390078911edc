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
// them, so that one process can hold thousands of connections without thousands of sockets; or,
// with Config.SocketPerConnection, each from a socket of its own, closed with its connection.
// The zero value is not usable; use NewDialer. Safe for concurrent use.
type Dialer struct {
	tlsConf *tls.Config  // cloned, TLS 1.3 minimum; never modified
	cfg     Config       // defaults applied
	pc      *net.UDPConn // the shared socket; nil with SocketPerConnection
	tr      *quicgo.Transport

	// With SocketPerConnection: what the first socket was granted, for SocketBuffers and GRO
	// before (and between) connections.
	buffers SocketBuffers
	gro     bool

	releasing sync.WaitGroup // releases of per-connection sockets in progress: Close waits

	mu          sync.Mutex // guards the fields below
	own         map[*ownSocket]struct{}
	closedDrops uint64 // datagrams dropped for per-connection sockets since closed
	closed      bool

	closeOnce sync.Once
	closeErr  error // set by closeOnce
}

// ownSocket is one connection's socket (Config.SocketPerConnection).
type ownSocket struct {
	pc *net.UDPConn
	tr *quicgo.Transport
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
	if cfg.StatelessResetKey == nil {
		// A key for this Dialer's lifetime: a peer that still sends on a connection this side
		// has closed (it was paused past the idle timeout, say) gets a stateless reset at its
		// next packet and learns at once that the connection is gone.
		var k quicgo.StatelessResetKey
		if _, err := rand.Read(k[:]); err != nil {
			return nil, fmt.Errorf("quic: stateless reset key: %w", err)
		}
		cfg.StatelessResetKey = &k
	}
	d := &Dialer{tlsConf: tlsConf, cfg: cfg.WithDefaults(), own: map[*ownSocket]struct{}{}}
	pc, tr, err := d.openSocket()
	if err != nil {
		return nil, fmt.Errorf("quic: dialer socket: %w", err)
	}
	if !cfg.SocketPerConnection {
		d.pc, d.tr = pc, tr
		return d, nil
	}
	// Sockets come with connections; this first one only tells what the kernel grants.
	d.buffers, _ = socketBuffersOf(pc)
	d.gro = groOf(tr.Conn)
	_ = pc.Close()
	return d, nil
}

// openSocket opens and sizes a UDP socket, with the transport that will serve it.
func (d *Dialer) openSocket() (*net.UDPConn, *quicgo.Transport, error) {
	var pc *net.UDPConn
	var err error
	if d.cfg.Sockets != nil {
		pc, err = d.cfg.Sockets.ListenUDP()
	} else {
		pc, err = net.ListenUDP("udp", &net.UDPAddr{})
	}
	if err != nil {
		return nil, nil, err
	}
	sizeSocket(pc, d.cfg)
	return pc, &quicgo.Transport{Conn: newLossyUDPConn(pc, d.cfg.NoUDPGRO), StatelessResetKey: d.cfg.StatelessResetKey}, nil
}

// dial dials addr on the shared transport, or on a socket of its own that the connection's end
// closes.
func (d *Dialer) dial(ctx context.Context, addr *net.UDPAddr, tlsConf *tls.Config) (*quicgo.Conn, error) {
	if d.tr != nil {
		return d.tr.Dial(ctx, addr, tlsConf, d.cfg.QUICConfig())
	}
	pc, tr, err := d.openSocket()
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	s := &ownSocket{pc: pc, tr: tr}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = pc.Close()
		return nil, net.ErrClosed
	}
	d.own[s] = struct{}{}
	d.mu.Unlock()
	conn, err := tr.Dial(ctx, addr, tlsConf, d.cfg.QUICConfig())
	if err != nil {
		d.release(s)
		return nil, err
	}
	// As quic-go does for its one-shot Dial: the transport goes with the connection.
	context.AfterFunc(conn.Context(), func() { d.release(s) })
	return conn, nil
}

// release closes a per-connection socket once (its connection's end, a failed dial, or Close),
// keeping its drop count.
func (d *Dialer) release(s *ownSocket) {
	d.mu.Lock()
	if _, ok := d.own[s]; !ok {
		d.mu.Unlock()
		return
	}
	delete(d.own, s)
	drops, _ := socketDropsOf(s.pc)
	d.closedDrops += drops
	d.releasing.Add(1)
	d.mu.Unlock()
	defer d.releasing.Done()
	_ = s.tr.Close()
	_ = s.pc.Close()
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
	conn, err := d.dial(ctx, udpAddr, tlsConf)
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
	conn, err := d.dial(ctx, addr, tlsConf)
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

// Close closes the Dialer's sockets and transports. Like Listener.Close, it destroys every
// connection still open on this Dialer without notifying the peers, and returns when their
// goroutines are gone. Idempotent: later calls return the first call's result.
func (d *Dialer) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		own := make([]*ownSocket, 0, len(d.own))
		for s := range d.own {
			own = append(own, s)
		}
		d.mu.Unlock()
		for _, s := range own {
			d.release(s)
		}
		d.releasing.Wait() // those a connection's end began before Close took the set
		if d.tr != nil {
			errTr := d.tr.Close()
			errPc := d.pc.Close()
			d.closeErr = errors.Join(ignoreClosed(errTr), ignoreClosed(errPc))
		}
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
