package httpserve

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Server is an http.Server whose Limits are applied and counted. Set TLSConfig on the embedded
// http.Server to serve HTTPS; Shutdown and Close are http.Server's.
type Server struct {
	*http.Server
	name    string // the server label
	limits  Limits
	metrics *Metrics
	now     func() time.Time
}

// New returns a server named name (the metrics' server label) for h with limits l (zero fields
// take their defaults) counted in m (nil: not counted).
func New(name string, h http.Handler, l Limits, m *Metrics) (*Server, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	l = l.WithDefaults()
	s := &Server{name: name, limits: l, metrics: m, now: time.Now}
	s.Server = &http.Server{
		Handler:           h,
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
		ln = tls.NewListener(ln, s.TLSConfig)
	}
	if err := s.Server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Listener wraps ln in s's connection cap and the accounting of its limits. Serve does this;
// it is exported for servers that need their own listener chain.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &limitListener{
		Listener: ln,
		srv:      s,
		sem:      make(chan struct{}, s.limits.MaxConnections),
		done:     make(chan struct{}),
		open:     s.metrics.connections(s.name),
	}
}

// connState tracks each connection's HTTP state in its wrapper, and counts idle connections the
// server closes for IdleTimeout (HTTP/1.1 and HTTP/2 alike: both move Idle → Closed).
func (s *Server) connState(nc net.Conn, st http.ConnState) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	prev := http.ConnState(c.state.Swap(int32(st)))
	switch st {
	case http.StateIdle:
		c.readSinceIdle.Store(false)
		c.idleSince.Store(s.now().UnixNano())
	case http.StateClosed:
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
	open      prometheus.Gauge
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
	c := &conn{Conn: nc, srv: l.srv}
	c.release = func() { <-l.sem; l.open.Dec() }
	return c, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// conn is one served connection: it gives back its slot when closed and notices the limits
// that end it.
type conn struct {
	net.Conn
	srv           *Server
	state         atomic.Int32 // http.ConnState, set by Server.connState
	readSinceIdle atomic.Bool  // bytes arrived since the connection went idle
	idleSince     atomic.Int64 // unix nanoseconds
	closeOnce     sync.Once
	release       func()
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.readSinceIdle.Store(true)
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// The server's only read deadlines outside a request are ReadHeaderTimeout (a new
			// connection, or an idle one whose next request has begun) and IdleTimeout (counted
			// by connState when the connection closes).
			switch http.ConnState(c.state.Load()) {
			case http.StateNew:
				c.srv.metrics.hit(c.srv.name, ReasonReadHeaderTimeout)
			case http.StateIdle:
				if c.readSinceIdle.Load() {
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
	return c.Conn.Write(p)
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.release)
	return err
}
