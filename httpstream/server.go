package httpstream

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// CheckFunc decides whether a stream's Request is served. It returns nil to accept, or the
// refusal sent back in the Result.
type CheckFunc func(req *api.Request) *api.Error

// Listener yields the streams that a QUIC connection accepts, for an http.Server. Closing it
// stops Accept; streams already returned are owned by the http.Server.
type Listener struct {
	qc     *quicgo.Conn
	check  CheckFunc
	data   any
	ctx    context.Context
	cancel context.CancelFunc
}

// NewListener returns a Listener for the streams the peer opens on qc. check vets each stream's
// Request frame; data is attached to every Conn (the connection it came from, say).
func NewListener(qc *quicgo.Conn, check CheckFunc, data any) *Listener {
	ctx, cancel := context.WithCancel(qc.Context())
	return &Listener{qc: qc, check: check, data: data, ctx: ctx, cancel: cancel}
}

// Accept returns the next stream. It returns net.ErrClosed once the listener or the connection
// is closed.
func (l *Listener) Accept() (net.Conn, error) {
	st, err := l.qc.AcceptStream(l.ctx)
	if err != nil {
		return nil, net.ErrClosed
	}
	return NewConn(quic.NewStreamConn(l.qc, st), l.check, l.data), nil
}

// Close stops Accept. It is idempotent.
func (l *Listener) Close() error { l.cancel(); return nil }

// Addr returns the connection's local address.
func (l *Listener) Addr() net.Addr { return l.qc.LocalAddr() }

// Conn is an accepted request stream. Its first Read consumes and checks the Request frame and
// writes the Result before the http.Server sees any HTTP bytes.
type Conn struct {
	*quic.StreamConn
	check CheckFunc
	data  any

	// Set by the first Read, made by the http.Server's goroutine for this stream before the
	// handler runs; read by that handler afterwards.
	started bool
	req     *api.Request
	refusal *api.Error

	// lateResult: the OK Result has not been written yet; it goes with the first Write (or
	// before the end of the stream). rmu orders that first Write before any other.
	lateResult atomic.Bool
	rmu        sync.Mutex

	// hideEOF (api.MetaRequestFIN): the peer's FIN follows the request at once. net/http's
	// server would take an EOF for the client gone away and cancel the request, so Read holds
	// it back (eof) until the read deadline, Close, or the stream's end. Reader-only fields.
	hideEOF, eof bool
	dmu          sync.Mutex // guards the fields below
	readDeadline time.Time
	wake         chan struct{} // closed when the read deadline changes or Close runs; nil if no waiter
	closed       bool
}

// NewConn wraps an accepted stream.
func NewConn(sc *quic.StreamConn, check CheckFunc, data any) *Conn {
	return &Conn{StreamConn: sc, check: check, data: data}
}

// Request returns the accepted Request frame (nil before the first Read or after a refusal).
func (c *Conn) Request() *api.Request { return c.req }

// Data returns what the Listener attached.
func (c *Conn) Data() any { return c.data }

// Refusal returns the error the stream was refused with, if any.
func (c *Conn) Refusal() *api.Error { return c.refusal }

func (c *Conn) Read(p []byte) (int, error) {
	if !c.started {
		c.started = true
		if err := c.accept(); err != nil {
			return 0, io.EOF
		}
	}
	if c.eof {
		return 0, c.waitEOF()
	}
	n, err := c.StreamConn.Read(p)
	if err == io.EOF && c.hideEOF {
		c.eof = true
		if n > 0 {
			return n, nil
		}
		return 0, c.waitEOF()
	}
	return n, err
}

// waitEOF blocks a Read after the peer's FIN until the read deadline passes (what net/http
// does to end its background read: the timeout error is expected), Close, or the stream's
// context ends (our own FIN, the peer's STOP_SENDING, the connection's end).
func (c *Conn) waitEOF() error {
	done := c.StreamConn.Context().Done()
	for {
		c.dmu.Lock()
		if c.closed {
			c.dmu.Unlock()
			return net.ErrClosed
		}
		d := c.readDeadline
		if c.wake == nil {
			c.wake = make(chan struct{})
		}
		wake := c.wake
		c.dmu.Unlock()
		var expired <-chan time.Time
		if !d.IsZero() {
			dur := time.Until(d)
			if dur <= 0 {
				return os.ErrDeadlineExceeded
			}
			t := time.NewTimer(dur)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-wake:
		case <-expired:
			return os.ErrDeadlineExceeded
		case <-done:
			return io.EOF
		}
	}
}

func (c *Conn) wakeReader(closing bool) {
	c.dmu.Lock()
	if closing {
		c.closed = true
	}
	if c.wake != nil {
		close(c.wake)
		c.wake = nil
	}
	c.dmu.Unlock()
}

// SetReadDeadline sets the stream's read deadline, which also bounds a held-back EOF.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return c.StreamConn.SetReadDeadline(t)
}

// SetDeadline sets the stream's read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.setReadDeadline(t)
	return c.StreamConn.SetDeadline(t)
}

func (c *Conn) setReadDeadline(t time.Time) {
	c.dmu.Lock()
	c.readDeadline = t
	if c.wake != nil {
		close(c.wake)
		c.wake = nil
	}
	c.dmu.Unlock()
}

// Write writes to the stream; the first Write carries the pending OK Result, if any, in front of
// p in the same stream write.
func (c *Conn) Write(p []byte) (int, error) {
	if c.lateResult.Load() {
		return c.writeResult(p)
	}
	return c.StreamConn.Write(p)
}

var okResult = api.AppendFrame(nil, &api.Result{Code: api.CodeOK})

func (c *Conn) writeResult(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if !c.lateResult.Load() {
		return c.StreamConn.Write(p)
	}
	buf := append(append(getBuf(), okResult...), p...)
	n, err := c.StreamConn.Write(buf)
	putBuf(buf)
	c.lateResult.Store(false)
	return max(n-len(okResult), 0), err
}

// CloseWrite sends FIN after the data written so far (and the pending Result, if any).
func (c *Conn) CloseWrite() error {
	if c.lateResult.Load() {
		_, _ = c.writeResult(nil)
	}
	return c.StreamConn.CloseWrite()
}

// Close ends the stream (see quic.StreamConn.Close), after sending the pending Result, if any.
func (c *Conn) Close() error {
	if c.lateResult.Load() {
		_, _ = c.writeResult(nil)
	}
	c.wakeReader(true)
	return c.StreamConn.Close()
}

// accept reads the Request frame (bounded by whatever read deadline the http.Server has set from
// its ReadHeaderTimeout) and answers OK or a typed refusal.
func (c *Conn) accept() error {
	m, err := api.ReadExpect(c.StreamConn, api.TypeRequest)
	if err != nil {
		e := api.Errorf(api.CodeProtocol, "bad request preamble: %v", err)
		c.Refuse(e)
		return e
	}
	req := m.(*api.Request)
	if c.check != nil {
		if e := c.check(req); e != nil {
			c.Refuse(e)
			return e
		}
	}
	c.req = req
	c.hideEOF = metaSet(req, api.MetaRequestFIN)
	if metaSet(req, api.MetaLateResult) {
		c.lateResult.Store(true)
		return nil
	}
	_, err = c.StreamConn.Write(okResult)
	return err
}

func metaSet(req *api.Request, key string) bool {
	v, ok := req.MetaValue(key)
	return ok && v == "1"
}

// Refuse answers the stream with a refusal and closes it.
func (c *Conn) Refuse(e *api.Error) {
	c.refusal = e
	_ = api.WriteFrame(c.StreamConn, &api.Result{Code: e.Code, Message: e.Message})
	_ = c.StreamConn.Close()
}

type connKey struct{}

// ConnContext is an http.Server ConnContext hook that makes the *Conn available to handlers.
func ConnContext(ctx context.Context, nc net.Conn) context.Context {
	if c, ok := nc.(*Conn); ok {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}

// FromContext returns the *Conn a request arrived on.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}
