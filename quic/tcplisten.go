package quic

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/internal/rawio"
)

// Limits of a TCPListener.
const (
	// DefaultMaxTCPConns bounds the TCP connections a TCPListener holds at once (TLS
	// handshakes included); more are closed at once, counted as max_connections.
	DefaultMaxTCPConns = 20000
	// tcpReceiveQueue is how many packets, from all TCP connections, wait for quic-go's read
	// loop. A full queue blocks the TCP readers (TCP flow control pushes back on the senders),
	// as a full UDP socket buffer would drop.
	tcpReceiveQueue = 1024
	// tcpSendQueue is how many packets wait to be written to one TCP connection. A full queue
	// drops the packet (send_queue_full): QUIC sees loss and slows down, and a slow connection
	// never blocks the writes to the others.
	tcpSendQueue = 512
	// tcpWriteTimeout closes a TCP connection whose peer stopped reading (write_timeout).
	tcpWriteTimeout = 15 * time.Second
	// tcpWriteBatch is how many bytes of queued frames are written with one Write (one TLS
	// record, one syscall).
	tcpWriteBatch = 16 << 10
)

// tcpReasons are the reason labels of TCPListener.Rejections: why TCP connections were refused
// or closed early, or packets dropped.
var tcpReasons = []string{
	"max_connections", "tls_handshake", "handshake_timeout", "alpn", "preamble", "frame_length",
	"idle_timeout", "write_timeout", "send_queue_full",
}

// TCPListener accepts QUIC connections carried over TLS/TCP (see "QUIC over TCP" in
// tcpframe.go). It owns a net.Listener and a multiplexing net.PacketConn fed by every TCP
// connection, served by one quicgo.Transport: each TCP connection is a peer with its own
// address, whose packets quic-go reads from the shared PacketConn and whose writes are queued
// for that connection alone.
//
// Goroutines: one accept loop, and a reader and a writer per TCP connection, all owned by the
// listener; Close waits for them. A QUIC connection accepted here is closed when its TCP
// connection ends, and its TCP connection is closed (after the queued packets are written)
// when it ends.
type TCPListener struct {
	mux *tcpMux
	tr  *quicgo.Transport
	ln  *quicgo.Listener

	closeOnce sync.Once
	closeErr  error // set by closeOnce
}

// ListenTCP opens a TCP listener on addr and serves QUIC over it. tlsConf is the QUIC
// listener's configuration (certificate, application ALPN); the outer TLS connection uses a
// clone of it with ALPN TCPALPN.
func ListenTCP(addr string, tlsConf *tls.Config, cfg Config) (*TCPListener, error) {
	if _, err := checkTLS(tlsConf); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("quic: listen tcp %s: %w", addr, err)
	}
	return ListenTCPOn(ln, tlsConf, cfg)
}

// ListenTCPOn serves QUIC over TCP connections accepted from ln, which the TCPListener owns
// from now on (closed even when an error is returned).
func ListenTCPOn(ln net.Listener, tlsConf *tls.Config, cfg Config) (*TCPListener, error) {
	tlsConf, err := checkTLS(tlsConf)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		ln.Close()
		return nil, err
	}
	cfg = cfg.WithDefaults()
	outer := tlsConf.Clone()
	outer.NextProtos = []string{TCPALPN}
	m := newTCPMux(ln, outer, cfg.HandshakeTimeout, cfg.MaxIdleTimeout+cfg.HandshakeTimeout, DefaultMaxTCPConns)
	tr := &quicgo.Transport{Conn: m, StatelessResetKey: cfg.StatelessResetKey}
	qln, err := tr.Listen(tlsConf, cfg.QUICConfig())
	if err != nil {
		tr.Close()
		m.Close()
		return nil, fmt.Errorf("quic: listen on tcp %s: %w", ln.Addr(), err)
	}
	m.start()
	return &TCPListener{mux: m, tr: tr, ln: qln}, nil
}

// Accept waits for the next QUIC connection whose handshake has completed over TCP.
func (l *TCPListener) Accept(ctx context.Context) (*quicgo.Conn, error) {
	qc, err := l.ln.Accept(ctx)
	if err != nil {
		return nil, err
	}
	l.mux.bind(qc)
	return qc, nil
}

// Addr is the local TCP address.
func (l *TCPListener) Addr() net.Addr { return l.mux.ln.Addr() }

// Conns is how many TCP connections the listener holds.
func (l *TCPListener) Conns() int { return int(l.mux.conns.Load()) }

// Rejections returns, by reason, how many TCP connections were refused or closed early and
// packets dropped: max_connections, tls_handshake, handshake_timeout, alpn, preamble,
// frame_length, idle_timeout, write_timeout (connections) and send_queue_full (packets).
func (l *TCPListener) Rejections() map[string]uint64 {
	out := make(map[string]uint64, len(tcpReasons))
	for i, r := range tcpReasons {
		out[r] = l.mux.rejections[i].Load()
	}
	return out
}

// Collector exports the listener's figures:
//
//	<namespace>_tcp_connections             TCP connections held
//	<namespace>_tcp_rejections_total{reason} connections refused or closed early, packets dropped
func (l *TCPListener) Collector(namespace string) prometheus.Collector {
	return &tcpCollector{l: l,
		conns: prometheus.NewDesc(namespace+"_tcp_connections", "TCP connections carrying QUIC (the TCP fallback) held by the listener.", nil, nil),
		rej: prometheus.NewDesc(namespace+"_tcp_rejections_total",
			"TCP connections carrying QUIC refused or closed early, by reason (max_connections, tls_handshake, handshake_timeout, alpn, preamble, frame_length, idle_timeout, write_timeout), and packets dropped (send_queue_full).", []string{"reason"}, nil),
	}
}

type tcpCollector struct {
	l          *TCPListener
	conns, rej *prometheus.Desc
}

func (c *tcpCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.conns; ch <- c.rej }

func (c *tcpCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(c.l.Conns()))
	for r, n := range c.l.Rejections() {
		ch <- prometheus.MustNewConstMetric(c.rej, prometheus.CounterValue, float64(n), r)
	}
}

// Close stops accepting, closes the transport (destroying the QUIC connections without
// CONNECTION_CLOSE, as Listener.Close does), then every TCP connection, and waits for the
// listener's goroutines. Idempotent.
func (l *TCPListener) Close() error {
	l.closeOnce.Do(func() {
		errLn := l.ln.Close()
		errTr := l.tr.Close()
		errMux := l.mux.Close()
		l.closeErr = errors.Join(ignoreClosed(errLn), ignoreClosed(errTr), ignoreClosed(errMux))
	})
	return l.closeErr
}

// tcpPacket is one received packet waiting for quic-go.
type tcpPacket struct {
	buf  *[MaxTCPPacket]byte
	n    int
	from *net.TCPAddr
}

var tcpBufPool = sync.Pool{New: func() any { return new([MaxTCPPacket]byte) }}

// tcpMux is the net.PacketConn handed to quic-go: ReadFrom returns the packets of every TCP
// connection with that connection's remote address; WriteTo queues a packet for the connection
// with that address.
type tcpMux struct {
	ln               net.Listener
	tlsConf          *tls.Config
	handshakeTimeout time.Duration
	idleTimeout      time.Duration
	maxConns         int64

	in         chan tcpPacket
	closed     chan struct{}
	ctx        context.Context // ends when closed is closed
	cancel     context.CancelFunc
	closeOnce  sync.Once
	wg         sync.WaitGroup // accept loop, per-connection readers and writers
	conns      atomic.Int64
	rejections []atomic.Uint64 // by index in tcpReasons

	dlMu     sync.Mutex // guards deadline
	deadline time.Time
	kick     chan struct{} // signalled when the read deadline changes

	mu    sync.RWMutex // guards peers
	peers map[netip.AddrPort]*tcpPeer
}

func newTCPMux(ln net.Listener, tlsConf *tls.Config, handshakeTimeout, idleTimeout time.Duration, maxConns int) *tcpMux {
	ctx, cancel := context.WithCancel(context.Background())
	return &tcpMux{
		ctx: ctx, cancel: cancel,
		ln: ln, tlsConf: tlsConf, handshakeTimeout: handshakeTimeout, idleTimeout: idleTimeout, maxConns: int64(maxConns),
		in:         make(chan tcpPacket, tcpReceiveQueue),
		closed:     make(chan struct{}),
		rejections: make([]atomic.Uint64, len(tcpReasons)),
		kick:       make(chan struct{}, 1),
		peers:      map[netip.AddrPort]*tcpPeer{},
	}
}

func (m *tcpMux) reject(reason string) {
	for i, r := range tcpReasons {
		if r == reason {
			m.rejections[i].Add(1)
			return
		}
	}
	panic("quic: tcp: unknown reason " + reason)
}

func (m *tcpMux) start() { m.wg.Go(m.acceptLoop) }

func (m *tcpMux) acceptLoop() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			select {
			case <-m.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait a little instead of spinning.
			t := time.NewTimer(50 * time.Millisecond)
			select {
			case <-m.closed:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		if m.conns.Add(1) > m.maxConns {
			m.conns.Add(-1)
			m.reject("max_connections")
			c.Close()
			continue
		}
		addr, _ := c.RemoteAddr().(*net.TCPAddr)
		if addr == nil {
			m.conns.Add(-1)
			c.Close()
			continue
		}
		p := &tcpPeer{m: m, raw: c, addr: addr, key: addr.AddrPort(),
			out: make(chan *tcpOut, tcpSendQueue), done: make(chan struct{}), closing: make(chan struct{})}
		m.wg.Go(p.serve)
	}
}

// ReadFrom returns the next packet of any TCP connection.
func (m *tcpMux) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		m.dlMu.Lock()
		dl := m.deadline
		m.dlMu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		select {
		case p := <-m.in:
			stopTimer(t)
			n := copy(b, p.buf[:p.n])
			tcpBufPool.Put(p.buf)
			return n, p.from, nil
		case <-m.closed:
			stopTimer(t)
			return 0, nil, net.ErrClosed
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-m.kick:
			stopTimer(t)
		}
	}
}

// WriteTo queues b for the TCP connection whose remote address is addr. It never blocks: a
// full queue drops the packet (QUIC treats it as loss), and a packet for a connection that is
// gone is dropped too.
func (m *tcpMux) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-m.closed:
		return 0, net.ErrClosed
	default:
	}
	ta, ok := addr.(*net.TCPAddr)
	if !ok || len(b) == 0 || len(b) > MaxTCPPacket {
		return len(b), nil // not ours to send; dropped like an undeliverable datagram
	}
	m.mu.RLock()
	p := m.peers[ta.AddrPort()]
	m.mu.RUnlock()
	if p == nil {
		return len(b), nil
	}
	o := &tcpOut{buf: tcpBufPool.Get().(*[MaxTCPPacket]byte), n: len(b)}
	copy(o.buf[:], b)
	select {
	case p.out <- o:
	default:
		tcpBufPool.Put(o.buf)
		m.reject("send_queue_full")
	}
	return len(b), nil
}

// Close closes the TCP listener and every TCP connection and waits for the goroutines.
func (m *tcpMux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		m.cancel()
		err = m.ln.Close()
		m.mu.RLock()
		peers := make([]*tcpPeer, 0, len(m.peers))
		for _, p := range m.peers {
			peers = append(peers, p)
		}
		m.mu.RUnlock()
		for _, p := range peers {
			p.end("")
		}
		m.wg.Wait()
		for {
			select {
			case p := <-m.in:
				tcpBufPool.Put(p.buf)
				continue
			default:
			}
			break
		}
	})
	return err
}

func (m *tcpMux) LocalAddr() net.Addr { return m.ln.Addr() }

func (m *tcpMux) SetDeadline(t time.Time) error { return m.SetReadDeadline(t) }

func (m *tcpMux) SetReadDeadline(t time.Time) error {
	m.dlMu.Lock()
	m.deadline = t
	m.dlMu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
	return nil
}

func (m *tcpMux) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer and SetWriteBuffer are accepted and ignored: quic-go asks for large UDP
// buffers, which mean nothing here (and without them it logs a warning).
func (m *tcpMux) SetReadBuffer(int) error  { return nil }
func (m *tcpMux) SetWriteBuffer(int) error { return nil }

// bind ties an accepted QUIC connection to its TCP connection: each ends the other.
func (m *tcpMux) bind(qc *quicgo.Conn) {
	ta, _ := qc.RemoteAddr().(*net.TCPAddr)
	var p *tcpPeer
	if ta != nil {
		m.mu.RLock()
		p = m.peers[ta.AddrPort()]
		m.mu.RUnlock()
	}
	if p == nil || !p.setQUIC(qc) {
		_ = qc.CloseWithError(ConnCodeNoError, "tcp connection closed")
		return
	}
	// Runs once, briefly, when the QUIC connection ends: its CONNECTION_CLOSE is queued by
	// then, and the writer flushes the queue before closing the TCP connection.
	context.AfterFunc(qc.Context(), p.closeGracefully)
}

// tcpOut is one packet queued for a TCP connection.
type tcpOut struct {
	buf *[MaxTCPPacket]byte
	n   int
}

// tcpPeer is one TCP connection of a tcpMux: a reader (TLS handshake, preamble, frames) and a
// writer goroutine, both owned by the mux.
type tcpPeer struct {
	m    *tcpMux
	raw  net.Conn
	addr *net.TCPAddr
	key  netip.AddrPort
	out  chan *tcpOut

	done      chan struct{} // closed by end
	endOnce   sync.Once
	closing   chan struct{} // closed by closeGracefully: flush, then end
	closeOnce sync.Once

	qmu   sync.Mutex // guards the fields below
	qc    *quicgo.Conn
	ended bool
}

// serve runs the TLS handshake and the preamble, registers the peer, starts its writer and
// reads frames until the connection ends.
func (p *tcpPeer) serve() {
	m := p.m
	defer m.conns.Add(-1)
	tc := tls.Server(rawio.Conn(p.raw), m.tlsConf) // raw reads and writes: internal/rawio
	_ = p.raw.SetDeadline(time.Now().Add(m.handshakeTimeout))
	// Close ends the handshake if the mux closes meanwhile.
	stop := context.AfterFunc(m.ctx, func() { p.raw.Close() })
	err := tc.Handshake()
	var br *bufio.Reader
	if err == nil {
		if tc.ConnectionState().NegotiatedProtocol != TCPALPN {
			err = errors.New("alpn")
			m.reject("alpn")
		} else {
			br = bufio.NewReaderSize(tc, 32<<10)
			if err = ReadTCPPreamble(br); err != nil {
				if errors.Is(err, ErrTCPPreamble) {
					m.reject("preamble")
				} else {
					m.rejectTimeoutOr(err, "handshake_timeout", "preamble")
				}
			}
		}
	} else {
		m.rejectTimeoutOr(err, "handshake_timeout", "tls_handshake")
	}
	stop()
	if err != nil {
		p.raw.Close()
		return
	}
	_ = p.raw.SetDeadline(time.Time{})
	m.mu.Lock()
	select {
	case <-m.closed:
		m.mu.Unlock()
		p.raw.Close()
		return
	default:
	}
	if old := m.peers[p.key]; old != nil {
		// The same address again (the old connection's end not yet noticed): the new one wins.
		m.mu.Unlock()
		old.end("")
		m.mu.Lock()
	}
	m.peers[p.key] = p
	m.mu.Unlock()
	m.wg.Go(func() { p.write(tc) })
	defer p.end("")
	for {
		_ = p.raw.SetReadDeadline(time.Now().Add(m.idleTimeout))
		buf := tcpBufPool.Get().(*[MaxTCPPacket]byte)
		n, err := ReadTCPFrame(br, buf[:])
		if err != nil {
			tcpBufPool.Put(buf)
			switch {
			case errors.Is(err, ErrTCPFrameLength):
				m.reject("frame_length")
			case isTimeoutErr(err):
				select {
				case <-p.done:
				default:
					m.reject("idle_timeout")
				}
			}
			return
		}
		select {
		case m.in <- tcpPacket{buf: buf, n: n, from: p.addr}:
		case <-p.done:
			tcpBufPool.Put(buf)
			return
		case <-m.closed:
			tcpBufPool.Put(buf)
			return
		}
	}
}

func (m *tcpMux) rejectTimeoutOr(err error, timeout, other string) {
	if isTimeoutErr(err) {
		m.reject(timeout)
	} else {
		m.reject(other)
	}
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// write writes queued packets, batched, until the peer ends; after closeGracefully it writes
// what is queued, then ends the peer.
func (p *tcpPeer) write(tc *tls.Conn) {
	batch := make([]byte, 0, tcpWriteBatch+MaxTCPPacket+2)
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		_ = tc.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
		_, err := tc.Write(batch)
		batch = batch[:0]
		if err != nil {
			if isTimeoutErr(err) {
				p.m.reject("write_timeout")
			}
			p.end("")
			return false
		}
		return true
	}
	add := func(o *tcpOut) {
		batch = AppendTCPFrame(batch, o.buf[:o.n])
		tcpBufPool.Put(o.buf)
	}
	for {
		select {
		case o := <-p.out:
			add(o)
		drain:
			for len(batch) < tcpWriteBatch {
				select {
				case o := <-p.out:
					add(o)
				default:
					break drain
				}
			}
			if !flush() {
				return
			}
		case <-p.closing:
			for {
				select {
				case o := <-p.out:
					add(o)
					if len(batch) >= tcpWriteBatch && !flush() {
						return
					}
					continue
				default:
				}
				break
			}
			if flush() {
				_ = tc.SetWriteDeadline(time.Now().Add(time.Second))
				_ = tc.CloseWrite()
			}
			p.end("")
			return
		case <-p.done:
			return
		}
	}
}

// setQUIC records the QUIC connection carried by p; false if p has already ended.
func (p *tcpPeer) setQUIC(qc *quicgo.Conn) bool {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	if p.ended {
		return false
	}
	p.qc = qc
	return true
}

func (p *tcpPeer) closeGracefully() { p.closeOnce.Do(func() { close(p.closing) }) }

// end closes the TCP connection, forgets the peer and closes its QUIC connection. Idempotent.
func (p *tcpPeer) end(string) {
	p.endOnce.Do(func() {
		close(p.done)
		p.raw.Close()
		p.m.mu.Lock()
		if p.m.peers[p.key] == p {
			delete(p.m.peers, p.key)
		}
		p.m.mu.Unlock()
		p.qmu.Lock()
		p.ended = true
		qc := p.qc
		p.qmu.Unlock()
		if qc != nil {
			// Its packets have nowhere to go: end it now rather than at its idle timeout.
			_ = qc.CloseWithError(ConnCodeNoError, "tcp connection closed")
		}
		for {
			select {
			case o := <-p.out:
				tcpBufPool.Put(o.buf)
				continue
			default:
			}
			break
		}
	})
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}
