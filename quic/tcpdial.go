package quic

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/internal/rawio"
)

// TCPDialer dials QUIC connections carried over TLS/TCP (see "QUIC over TCP" in tcpframe.go),
// one TCP connection and one quicgo.Transport per QUIC connection. The zero value is not
// usable; use NewTCPDialer. Safe for concurrent use.
//
// Goroutines: each connection's transport runs quic-go's read loop on its TCP connection. When
// the QUIC connection ends, a function registered with context.AfterFunc closes the TCP
// connection and the transport; when the TCP connection ends, the transport (and with it the
// QUIC connection) ends at once. Close ends every connection still open and waits for them.
type TCPDialer struct {
	tlsConf *tls.Config // the QUIC handshake's: cloned, TLS 1.3 minimum
	cfg     Config      // defaults applied

	mu     sync.Mutex // guards the fields below
	closed bool
	conns  map[*tcpClientConn]struct{}
	wg     sync.WaitGroup // the AfterFunc cleanups
}

// NewTCPDialer checks tlsConf (the QUIC connection's: application ALPN, server CA) and cfg.
func NewTCPDialer(tlsConf *tls.Config, cfg Config) (*TCPDialer, error) {
	tlsConf, err := checkTLS(tlsConf)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &TCPDialer{tlsConf: tlsConf, cfg: cfg.WithDefaults(), conns: map[*tcpClientConn]struct{}{}}, nil
}

// Dial opens a QUIC connection to addr over TCP, bounded by ctx and Config.HandshakeTimeout.
// serverName, if not empty, is the TLS name to verify (else the tls.Config's, else addr's IP).
// dial opens the TCP connection (through an HTTP proxy, say); nil dials addr directly. addr
// is the connection's RemoteAddr either way. The caller owns the connection and closes it
// with CloseWithError.
func (d *TCPDialer) Dial(ctx context.Context, addr *net.TCPAddr, serverName string, dial func(context.Context) (net.Conn, error)) (*quicgo.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	tlsConf := d.tlsConf.Clone()
	if serverName != "" {
		tlsConf.ServerName = serverName
	} else if tlsConf.ServerName == "" {
		tlsConf.ServerName = addr.IP.String()
	}
	tlsConf = withRootCAs(tlsConf, d.cfg)
	if dial == nil {
		dial = func(ctx context.Context) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "tcp", addr.String())
		}
	}
	raw, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("quic: dial tcp %s: %w", addr, err)
	}
	outer := tlsConf.Clone()
	outer.NextProtos = []string{TCPALPN}
	tc := tls.Client(rawio.Conn(raw), outer) // raw reads and writes: internal/rawio
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("quic: dial tcp %s: tls: %w", addr, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != TCPALPN {
		raw.Close()
		return nil, fmt.Errorf("quic: dial tcp %s: the server does not speak %s (ALPN %q)", addr, TCPALPN, p)
	}
	pc := &tcpClientConn{tc: tc, br: bufio.NewReaderSize(tc, 32<<10), remote: addr,
		wbuf: AppendTCPPreamble(make([]byte, 0, MaxTCPPacket+len(tcpPreamble)+2))}
	tr := &quicgo.Transport{Conn: pc}
	if !d.track(pc) {
		tc.Close()
		return nil, fmt.Errorf("quic: dial tcp %s: %w", addr, net.ErrClosed)
	}
	qc, err := tr.Dial(ctx, addr, tlsConf, d.cfg.QUICConfig())
	if err != nil {
		pc.Close()
		tr.Close()
		d.untrack(pc)
		return nil, fmt.Errorf("quic: dial tcp %s (%s): %w", addr, tlsConf.ServerName, err)
	}
	d.mu.Lock()
	if d.closed { // Close is waiting (or has waited) for wg: this connection is not its to wait for
		d.mu.Unlock()
		pc.Close()
		tr.Close()
		d.untrack(pc)
		return nil, fmt.Errorf("quic: dial tcp %s: %w", addr, net.ErrClosed)
	}
	d.wg.Add(1)
	d.mu.Unlock()
	context.AfterFunc(qc.Context(), func() {
		defer d.wg.Done()
		// The CONNECTION_CLOSE, if any, was written before the context ended (writes are
		// synchronous): close the TCP connection, then the transport.
		pc.Close()
		tr.Close()
		d.untrack(pc)
	})
	return qc, nil
}

func (d *TCPDialer) track(c *tcpClientConn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conns[c] = struct{}{}
	return true
}

func (d *TCPDialer) untrack(c *tcpClientConn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.conns, c)
}

// Close ends every connection still open on the dialer (their TCP connections close; the QUIC
// connections end without CONNECTION_CLOSE) and waits until their goroutines are gone. Later
// dials fail. Idempotent.
func (d *TCPDialer) Close() error {
	d.mu.Lock()
	d.closed = true
	conns := make([]*tcpClientConn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	d.wg.Wait()
	return nil
}

// tcpClientConn is the net.PacketConn a TCPDialer hands to quic-go: one TLS connection to one
// peer. Writes go straight to the connection (quic-go writes from the connection's run loop;
// a full TCP send buffer pushes back on it). The first read error ends it for good: a stream
// cut in the middle of a frame cannot be resynchronised.
type tcpClientConn struct {
	tc     *tls.Conn
	br     *bufio.Reader // read only by quic-go's read loop
	remote *net.TCPAddr

	wmu  sync.Mutex // guards wbuf and writes
	wbuf []byte     // starts with the preamble, sent with the first packet

	closeOnce sync.Once
}

func (c *tcpClientConn) ReadFrom(b []byte) (int, net.Addr, error) {
	var buf [MaxTCPPacket]byte
	n, err := ReadTCPFrame(c.br, buf[:])
	if err != nil {
		c.Close()
		if isTimeoutErr(err) {
			// quic-go's Transport.Close sets a deadline to stop the read loop.
			return 0, nil, net.ErrClosed
		}
		return 0, nil, err
	}
	return copy(b, buf[:n]), c.remote, nil
}

func (c *tcpClientConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	if len(b) == 0 || len(b) > MaxTCPPacket {
		return len(b), nil // cannot be framed: dropped like an oversize datagram
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = AppendTCPFrame(c.wbuf, b)
	_ = c.tc.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
	_, err := c.tc.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if err != nil {
		c.Close() // Close does not take wmu
		return 0, err
	}
	return len(b), nil
}

func (c *tcpClientConn) Close() error {
	c.closeOnce.Do(func() {
		// Close the raw connection without a TLS close_notify: that write could block behind
		// a stuck peer.
		_ = c.tc.NetConn().Close()
	})
	return nil
}

func (c *tcpClientConn) LocalAddr() net.Addr                { return c.tc.LocalAddr() }
func (c *tcpClientConn) SetDeadline(t time.Time) error      { return c.tc.SetReadDeadline(t) }
func (c *tcpClientConn) SetReadDeadline(t time.Time) error  { return c.tc.SetReadDeadline(t) }
func (c *tcpClientConn) SetWriteDeadline(t time.Time) error { return nil }
func (c *tcpClientConn) SetReadBuffer(int) error            { return nil }
func (c *tcpClientConn) SetWriteBuffer(int) error           { return nil }
