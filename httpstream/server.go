package httpstream

import (
	"context"
	"io"
	"net"

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
	return c.StreamConn.Read(p)
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
	return api.WriteFrame(c.StreamConn, &api.Result{Code: api.CodeOK})
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
