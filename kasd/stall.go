package kasd

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultClientStallTimeout is Config.ClientStallTimeout's default (--client-stall-timeout), as
// nginx's client_body_timeout and send_timeout.
const DefaultClientStallTimeout = 60 * time.Second

// DefaultUpgradeHalfCloseTimeout is Config.UpgradeHalfCloseTimeout's default
// (--upgrade-half-close-timeout).
const DefaultUpgradeHalfCloseTimeout = 60 * time.Second

// clientStall bounds how long a client may keep one of its requests waiting on it
// (Config.ClientStallTimeout): for bytes of the request body it announced, while kasd reads
// them, or to take bytes of the response, while kasd's write to it is blocked. Time spent
// waiting for the agent or the service does not count, and neither does a pause between reads
// or writes (a slow but moving upload or download is never cut); nor does an upgraded
// connection's silence (an idle exec session sends nothing for minutes): only one read of the
// body, or one write to the client, that has not returned for the whole limit.
//
// Then the read or write is ended through the client connection's deadline (over HTTP/2, the
// stream's), the request ends with client_timeout (408 if its response has not started; a
// response already started is cut), and it is counted in
// kasd_limit_rejections_total{reason="client_stall"}. Without it a client that stops sending
// its upload, or stops reading its download, would hold its request, its agent stream and the
// service's connection behind it for as long as it stays connected.
//
// One timer per request, made at its first watched read or write and checked at most once
// per limit while nothing stalls; a read or write costs two atomic stores. The zero or nil
// value watches nothing.
type clientStall struct {
	limit time.Duration
	w     http.ResponseWriter // the client's; its deadlines through http.ResponseController
	base  time.Time           // the clock's origin: since values are time.Since(base), never 0 once set
	srv   *Server             // counts and logs the stall, through on
	on    stallReporter       // the request watched

	armed   atomic.Bool  // the timer was made
	reading atomic.Int64 // when the read in progress began (ns since base); 0: none
	writing atomic.Int64 // when the write in progress began; 0: none
	fired   atomic.Int32 // stallRead or stallWrite once the limit ended one

	mu      sync.Mutex // guards the fields below; held while check acts on the connection
	timer   *time.Timer
	stopped bool
	conn    net.Conn // the hijacked connection of an upgrade: deadlines are set on it
}

const (
	stallRead  int32 = 1
	stallWrite int32 = 2
)

// start makes c watch the client of w for s's request tgt and returns it; the limit is s's
// Config.ClientStallTimeout. It returns nil when the limit is not positive: nothing is watched.
// c is a zero clientStall (a field of tgt: no allocation of its own).
func (c *clientStall) start(w http.ResponseWriter, s *Server, tgt *target) *clientStall {
	if s.cfg.ClientStallTimeout <= 0 {
		return nil
	}
	c.limit, c.w, c.base, c.srv, c.on = s.cfg.ClientStallTimeout, w, time.Now().Add(-time.Nanosecond), s, tgt
	return c
}

// startConn makes c watch the reads and writes of conn, which its deadlines end, for s's
// request on, under limit; nil (nothing watched) when limit is not positive.
func (c *clientStall) startConn(limit time.Duration, conn net.Conn, s *Server, on stallReporter) *clientStall {
	if limit <= 0 {
		return nil
	}
	c.limit, c.conn, c.base, c.srv, c.on = limit, conn, time.Now().Add(-time.Nanosecond), s, on
	return c
}

// stallReporter is the request a clientStall watches: it counts and logs the stall.
type stallReporter interface {
	reportStall(s *Server, read bool)
}

func (c *clientStall) now() int64 { return int64(time.Since(c.base)) }

// begin records that a read (read) or a write to the client starts now.
func (c *clientStall) begin(read bool) {
	if c == nil {
		return
	}
	if read {
		c.reading.Store(c.now())
	} else {
		c.writing.Store(c.now())
	}
	if c.armed.Load() {
		return
	}
	c.mu.Lock()
	if c.timer == nil && !c.stopped {
		c.timer = time.AfterFunc(c.limit, c.check)
		c.armed.Store(true)
	}
	c.mu.Unlock()
}

// end records that the read (read) or write begun last has returned.
func (c *clientStall) end(read bool) {
	if c == nil {
		return
	}
	if read {
		c.reading.Store(0)
	} else {
		c.writing.Store(0)
	}
}

// check runs on the timer: it ends a read or write that has lasted the limit, or sets the timer
// for when the oldest one in progress would.
func (c *clientStall) check() {
	now := c.now()
	next := c.limit
	var stalled int32
	for _, op := range [...]struct {
		since int64
		kind  int32
	}{{c.reading.Load(), stallRead}, {c.writing.Load(), stallWrite}} {
		switch {
		case op.since == 0:
		case now-op.since >= int64(c.limit):
			stalled = op.kind
		default:
			next = min(next, time.Duration(op.since+int64(c.limit)-now))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return
	}
	if stalled != 0 && c.fired.CompareAndSwap(0, stalled) {
		// The deadline ends the blocked call at once; the connection is not used again (its
		// request ends in an error, with Connection: close).
		past := time.Now()
		switch {
		case c.conn != nil && stalled == stallRead:
			_ = c.conn.SetReadDeadline(past)
		case c.conn != nil:
			_ = c.conn.SetWriteDeadline(past)
		case stalled == stallRead:
			_ = http.NewResponseController(c.w).SetReadDeadline(past)
		default:
			_ = http.NewResponseController(c.w).SetWriteDeadline(past)
		}
		c.on.reportStall(c.srv, stalled == stallRead)
		return
	}
	c.timer.Reset(next)
}

// hijacked makes the deadlines go to conn, the connection an upgrade took over.
func (c *clientStall) hijacked(conn net.Conn) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
}

// stop ends the watch; the limit acts on nothing after it returns. Call it before the
// request's handler returns: the connection then serves the next request. Idempotent.
func (c *clientStall) stop() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.stopped = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
}

// stalled reports whether the limit ended a read or a write of this request.
func (c *clientStall) stalled() bool { return c != nil && c.fired.Load() != 0 }

// firedRead reports whether the limit ended a read of the request body.
func (c *clientStall) firedRead() bool { return c != nil && c.fired.Load() == stallRead }

// reader watches the reads of body, the client's request body, through r.
func (c *clientStall) reader(r *stallReader, body io.ReadCloser) io.ReadCloser {
	if c == nil || body == nil || body == http.NoBody {
		return body
	}
	r.ReadCloser, r.c = body, c
	return r
}

type stallReader struct {
	io.ReadCloser
	c *clientStall
}

func (r *stallReader) Read(p []byte) (int, error) {
	r.c.begin(true)
	n, err := r.ReadCloser.Read(p)
	r.c.end(true)
	return n, err
}

// writer watches the writes to w through sw (flushes included: a flush is a write to the
// client).
func (c *clientStall) writer(sw *stallWriter, w http.ResponseWriter) http.ResponseWriter {
	if c == nil {
		return w
	}
	sw.ResponseWriter, sw.c = w, c
	return sw
}

type stallWriter struct {
	http.ResponseWriter
	c *clientStall
}

func (w *stallWriter) Write(p []byte) (int, error) {
	w.c.begin(false)
	n, err := w.ResponseWriter.Write(p)
	w.c.end(false)
	return n, err
}

// FlushError is what http.ResponseController.Flush calls.
func (w *stallWriter) FlushError() error {
	w.c.begin(false)
	err := http.NewResponseController(w.ResponseWriter).Flush()
	w.c.end(false)
	return err
}

// Unwrap lets http.ResponseController reach the writer's other methods.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// connWriter watches the writes to the hijacked connection of an upgrade (its reads are not
// watched: an upgraded protocol may be silent for as long as it likes).
func (c *clientStall) connWriter(conn net.Conn) net.Conn {
	if c == nil {
		return conn
	}
	c.hijacked(conn)
	return &stallConn{Conn: conn, c: c}
}

type stallConn struct {
	net.Conn
	c *clientStall
}

func (s *stallConn) Write(p []byte) (int, error) {
	s.c.begin(false)
	n, err := s.Conn.Write(p)
	s.c.end(false)
	return n, err
}

// CloseWrite half-closes the connection when it can (Splice ends one direction with it).
func (s *stallConn) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return s.Conn.Close()
}

// reportStall counts and logs a request whose client the limit gave up on (clientStall.check,
// on the timer's goroutine).
func (tgt *target) reportStall(s *Server, read bool) {
	s.m.limitRejections.WithLabelValues("client_stall").Inc()
	what := "stopped reading its response"
	if read {
		what = "stopped sending its request body"
	}
	s.log.Info().Str("agent_id", tgt.agentID).Str("service", tgt.service).Str("request_id", tgt.requestID).
		Dur("client_stall_timeout", s.cfg.ClientStallTimeout).Msg("request ended: the client " + what)
}
