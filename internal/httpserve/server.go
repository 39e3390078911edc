package httpserve

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/internal/rawio"
)

// Server is an http.Server whose Limits are applied and counted. Set TLSConfig on the embedded
// http.Server to serve HTTPS. Close is http.Server's; Shutdown is http.Server's without its
// keep-alive race (see Shutdown).
type Server struct {
	*http.Server
	name    string // the server label
	limits  Limits
	metrics *Metrics
	now     func() time.Time

	shuttingDown atomic.Bool // set by Shutdown before it closes the listeners

	mu        sync.Mutex // guards the fields below
	listeners []*limitListener
	conns     map[*conn]struct{} // open connections
}

// New returns a server named name (the metrics' server label) for h with limits l (zero fields
// take their defaults) counted in m (nil: not counted).
func New(name string, h http.Handler, l Limits, m *Metrics) (*Server, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	l = l.WithDefaults()
	s := &Server{name: name, limits: l, metrics: m, now: time.Now, conns: map[*conn]struct{}{}}
	s.Server = &http.Server{
		Handler:           closeAmbiguous(h),
		ConnContext:       connContext,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ConnState:         s.connState,
	}
	return s, nil
}

// Serve serves ln, wrapped in the connection cap (and in TLS when TLSConfig is set), until
// Shutdown or Close; it returns nil then, or the error that stopped it.
func (s *Server) Serve(ln net.Listener) error {
	ln = s.Listener(ln)
	if s.TLSConfig != nil {
		ln.(*limitListener).tls = true
		ln = tls.NewListener(ln, s.TLSConfig)
	}
	err := s.Server.Serve(ln)
	if err == nil || errors.Is(err, http.ErrServerClosed) || s.shuttingDown.Load() && errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server gracefully, as http.Server.Shutdown does, but without closing a
// keep-alive connection on which a client has just sent its next request. http.Server closes
// every connection that is idle at that moment, and a connection stays "idle" until the server
// has read the whole head of the next request: a request sent a moment before (or one whose
// bytes wait in the socket while a loaded machine has not yet run the server's goroutine) is cut,
// and a client cannot tell whether it was executed. Here the listeners close first (new
// connections are refused, which a client may safely retry elsewhere); then, until none is
// left or ctx ends, an HTTP/1.1 connection is closed only while it is idle (or new, and accepted
// at least newConnGrace ago), nothing has arrived on it since its last response, and a
// non-blocking peek finds its socket empty. A connection
// serving a request is closed once the response is written and it is quiet (kasd's API also
// answers with Connection: close while draining). HTTP/2 connections and whatever is left when
// ctx ends are http.Server.Shutdown's (GOAWAY, then close).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shuttingDown.Store(true)
	s.mu.Lock()
	lns := s.listeners
	s.mu.Unlock()
	for _, l := range lns {
		_ = l.Close()
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for s.closeQuiet() > 0 {
		select {
		case <-ctx.Done():
			return s.Server.Shutdown(ctx)
		case <-t.C:
		}
	}
	return s.Server.Shutdown(ctx)
}

// closeQuiet closes the quiet idle HTTP/1.1 connections and returns how many HTTP/1.1
// connections are left open.
func (s *Server) closeQuiet() int {
	s.mu.Lock()
	var open []*conn
	for c := range s.conns {
		if !c.h2.Load() {
			open = append(open, c)
		}
	}
	s.mu.Unlock()
	left := 0
	now := s.now().UnixNano()
	for _, c := range open {
		st := http.ConnState(c.state.Load())
		if st == http.StateNew && now-c.accepted < int64(newConnGrace) {
			// A client connects to send a request: one accepted a moment before the listeners
			// closed is given newConnGrace for it (its first response says Connection: close).
			// Closing it at once, empty, cut the requests its client was writing (with a
			// draining kasd answering Connection: close, every request of a busy client comes on
			// a new connection: dozens of POSTs cut at each rolling restart).
			left++
			continue
		}
		// The socket is peeked before the flag is read, and a connection is closed only when it
		// was found quiet by two looks a tick apart: a read that takes the next request's
		// bytes out of the socket sets readSinceIdle only after it returns, and a single look
		// between the two closed a connection whose request was already read (a flaky-test
		// hunt under load: 1 in 3 runs of TestShutdownServesRequestWaitingOnIdleConnection).
		if (st == http.StateIdle || st == http.StateNew) && socketEmpty(c.Conn) && !c.readSinceIdle.Load() {
			if c.quietSeen.Swap(true) {
				_ = c.Close()
				continue
			}
		} else {
			c.quietSeen.Store(false)
		}
		left++
	}
	return left
}

// newConnGrace is how long Shutdown waits for the first request of a connection accepted just
// before the listeners closed.
const newConnGrace = time.Second

// socketEmpty reports whether nothing is waiting to be read on nc (a non-blocking peek); a
// connection it cannot peek at counts as empty.
func socketEmpty(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	empty := true
	// Control, not Read: the server's goroutine is blocked in a read on the connection, and
	// Read would queue behind it. MSG_DONTWAIT makes the peek non-blocking by itself.
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		empty = n <= 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
	})
	return empty
}

// Listener wraps ln in s's connection cap and the accounting of its limits. Serve does this;
// it is exported for servers that need their own listener chain.
func (s *Server) Listener(ln net.Listener) net.Listener {
	l := &limitListener{
		Listener: ln,
		srv:      s,
		sem:      make(chan struct{}, s.limits.MaxConnections),
		done:     make(chan struct{}),
		open:     s.metrics.connections(s.name),
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	return l
}

// connState tracks each connection's HTTP state in its wrapper, and counts idle connections the
// server closes for IdleTimeout (HTTP/1.1 and HTTP/2 alike: both move Idle → Closed).
func (s *Server) connState(nc net.Conn, st http.ConnState) {
	orig := nc
	c := unwrap(nc)
	if c == nil {
		return
	}
	prev := http.ConnState(c.state.Swap(int32(st)))
	if st != http.StateNew && !c.protoChecked.Swap(true) {
		// Past StateNew the TLS handshake is done. HTTP/2 reports its states from its own
		// server (net/http skips the hooks when it hands a connection over).
		if tc, ok := orig.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			c.h2.Store(true) // Shutdown leaves it to http.Server (GOAWAY)
		}
	}
	switch st {
	case http.StateIdle:
		c.readSinceIdle.Store(false)
		c.idleSince.Store(s.now().UnixNano())
		c.readSinceServed.Store(0)
		c.served.Store(false)
		c.wrote431.Store(false)
	case http.StateClosed:
		if c.tooLargeUnderTLS(prev) {
			s.metrics.hit(s.name, ReasonMaxHeaderBytes)
		}
		// A client closing an idle connection, or Shutdown closing it, does so before the
		// timeout: only a connection idle for the whole IdleTimeout was closed for it.
		if prev == http.StateIdle && s.now().UnixNano()-c.idleSince.Load() >= int64(s.limits.IdleTimeout) {
			s.metrics.hit(s.name, ReasonIdleTimeout)
		}
	}
}

// limitListener holds connections beyond MaxConnections until one closes.
type limitListener struct {
	net.Listener
	srv       *Server
	sem       chan struct{} // a token per open connection
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error // of the first Close
	open      prometheus.Gauge
	tls       bool // wrapped in TLS by Serve (set before it accepts)
}

func (l *limitListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case l.sem <- struct{}{}:
	default:
		l.srv.metrics.hit(l.srv.name, ReasonMaxConnections)
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			_ = nc.Close()
			return nil, net.ErrClosed
		}
	}
	l.open.Inc()
	c := &conn{Conn: rawio.Conn(nc), srv: l.srv, accepted: l.srv.now().UnixNano(), tls: l.tls} // raw reads and writes: internal/rawio
	c.release = func() {
		<-l.sem
		l.open.Dec()
		l.srv.mu.Lock()
		delete(l.srv.conns, c)
		l.srv.mu.Unlock()
	}
	l.srv.mu.Lock()
	l.srv.conns[c] = struct{}{}
	l.srv.mu.Unlock()
	return c, nil
}

// Close closes the listener once; later calls return nil (Shutdown closes it before
// http.Server.Shutdown closes it again).
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closeErr = l.Listener.Close()
	})
	return l.closeErr
}

// conn is one served connection: it gives back its slot when closed and notices the limits
// that end it.
type conn struct {
	net.Conn
	srv            *Server
	state          atomic.Int32 // http.ConnState, set by Server.connState
	h2             atomic.Bool  // HTTP/2 over TLS: Shutdown leaves it to http.Server
	protoChecked   atomic.Bool  // h2 was set (or not) after the handshake
	readSinceIdle  atomic.Bool  // bytes arrived since the connection went idle
	headerTimedOut atomic.Bool  // ReasonReadHeaderTimeout was counted
	idleSince      atomic.Int64 // unix nanoseconds
	accepted       int64        // unix nanoseconds, set before the connection is served
	closeOnce      sync.Once
	release        func()
	framing        framingScan // framing.go
	tls            bool        // served under TLS: its bytes here are encrypted (framing.go)
	// Under TLS the 431 net/http writes is encrypted here, so it is told by what led to it:
	// the bytes read since the connection's last request reached the handler (or it went
	// idle), and whether the current one did (tooLargeUnderTLS).
	readSinceServed atomic.Int64
	served          atomic.Bool
	wrote431        atomic.Bool // a record the size of tooLarge's was written, no handler running
	quietSeen       atomic.Bool // Shutdown's last look found it quiet (closeQuiet)
}

// unwrap returns the wrapper of a served connection (under TLS or not), or nil.
func unwrap(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

// tooLargeUnderTLS reports whether an HTTP/1.x connection under TLS, closing from prev, was
// closed by net/http for a request head over MaxHeaderBytes: no handler ran for its request
// (net/http marks a connection active once it read any of it), it wrote one record of the
// 431's size (tlsRecordOf431), its head did not time out (counted as such), and at least half
// the limit was read since it went idle. Half: net/http's one-byte read behind a running handler makes
// tls.Conn take a whole record (up to 16 KiB) of the next request before the connection is
// idle, and those bytes are not counted. A head refused for another reason (400) is refused
// within its first lines. HTTP/2 connections are not judged (their state stays active across
// requests); a limit under 32 KiB can go uncounted (a whole head in that first record).
func (c *conn) tooLargeUnderTLS(prev http.ConnState) bool {
	return c.tls && !c.h2.Load() && prev == http.StateActive && !c.served.Load() && c.wrote431.Load() &&
		!c.headerTimedOut.Load() && c.readSinceServed.Load() >= int64(c.srv.limits.MaxHeaderBytes)/2
}

// tlsRecordOf431 reports whether p is one TLS application-data record carrying tooLarge: its
// length is tooLarge's plus the record's overhead (TLS 1.3: header, content type and AEAD tag;
// TLS 1.2: header, AES-GCM's explicit nonce and tag, or ChaCha20-Poly1305's tag). Another
// answer without a handler (a 400 for a head without Host) has another length.
func tlsRecordOf431(p []byte) bool {
	const n = len(tooLarge)
	return len(p) > 0 && p[0] == 23 && (len(p) == n+22 || len(p) == n+29 || len(p) == n+21)
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.tls {
		c.readSinceServed.Add(int64(n))
	}
	if n > 0 {
		c.readSinceIdle.Store(true)
		if !c.tls {
			c.framing.observe(p[:n])
		}
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// The server's only read deadlines outside a request are ReadHeaderTimeout (a new
			// connection, or an idle one whose next request has begun) and IdleTimeout (counted
			// by connState when the connection closes).
			// Once per connection: net/http may read again after the deadline has passed (a
			// connection with part of a head was counted twice), and it closes the connection.
			switch st := http.ConnState(c.state.Load()); {
			case st == http.StateNew || st == http.StateIdle && c.readSinceIdle.Load():
				if !c.headerTimedOut.Swap(true) {
					c.srv.metrics.hit(c.srv.name, ReasonReadHeaderTimeout)
				}
			}
		}
	}
	return n, err
}

// tooLarge is what net/http writes, in one Write, when a request header exceeds MaxHeaderBytes.
// A handler's own 431 differs (it has a Date header and goes through the response writer).
const tooLarge = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large"

func (c *conn) Write(p []byte) (int, error) {
	if len(p) == len(tooLarge) && string(p) == tooLarge {
		c.srv.metrics.hit(c.srv.name, ReasonMaxHeaderBytes)
	}
	if c.tls && len(p) < len(tooLarge)+32 && !c.served.Load() && tlsRecordOf431(p) {
		c.wrote431.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.release)
	return err
}
