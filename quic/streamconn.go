package quic

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

// StreamConn is a net.Conn view of one bidirectional stream of conn, so that net/http (an
// http.Server listener, a ReverseProxy transport) can run over a stream.
//
// quic-go forbids calling Stream.Close concurrently with Stream.Write or after CancelWrite;
// StreamConn serializes them so that every method is safe to call concurrently with every
// other, as net.Conn requires. Concurrent Writes are serialized (each Write is atomic with
// respect to the others); concurrent Reads are not meaningful and not supported.
type StreamConn struct {
	conn *quicgo.Conn
	str  *quicgo.Stream

	closing  atomic.Bool // Close was called: Read and Write report net.ErrClosed
	answered atomic.Bool // Read returned data or the peer's FIN or reset: see Answered

	// wmu is held across Stream.Write and Stream.Close, which quic-go forbids to overlap.
	wmu sync.Mutex

	mu       sync.Mutex // guards the fields below; never held while blocking
	finSent  bool       // Stream.Close was called (FIN); Stream.CancelWrite is still allowed
	canceled bool       // Stream.CancelWrite was called; Stream.Close is no longer allowed
	ended    bool       // Close or Abort ran: the first of them decides how the stream ends
}

var _ net.Conn = (*StreamConn)(nil)

// NewStreamConn wraps s, a bidirectional stream of conn. The StreamConn takes over s: use
// only the StreamConn afterwards (Stream() is for stream-specific calls such as SetPriority).
func NewStreamConn(conn *quicgo.Conn, s *quicgo.Stream) *StreamConn {
	return &StreamConn{conn: conn, str: s}
}

// Stream is the underlying stream.
func (c *StreamConn) Stream() *quicgo.Stream { return c.str }

// Conn is the connection carrying the stream.
func (c *StreamConn) Conn() *quicgo.Conn { return c.conn }

// Context is the stream's context, which is quic-go's send-side context. It ends when:
//   - this side finishes sending: Close or CloseWrite (cause quicgo.ErrStreamClosed), or Abort
//     (cause *quicgo.StreamError, Remote false);
//   - the peer stops reading with STOP_SENDING, e.g. the peer's Close before reading to EOF
//     or its Abort (cause *quicgo.StreamError, Remote true);
//   - the connection ends (cause the connection's error).
//
// It does NOT end when the peer finishes or resets its own send side (a FIN or RESET_STREAM
// from the peer): Read reports those, with io.EOF or a *quicgo.StreamError.
// Its values are those of conn.Context().
func (c *StreamConn) Context() context.Context { return c.str.Context() }

// Read reads from the receive side. After the peer's FIN it returns io.EOF; after the peer's
// reset, a *quicgo.StreamError with Remote set; after Close, net.ErrClosed.
func (c *StreamConn) Read(p []byte) (int, error) {
	n, err := c.str.Read(p)
	if (n > 0 || err == io.EOF || isRemoteStreamError(err)) && !c.answered.Load() {
		c.answered.Store(true)
	}
	if err != nil && err != io.EOF && c.closing.Load() {
		err = net.ErrClosed
	}
	return n, err
}

// Answered reports whether the peer sent anything on this stream that Read returned: data, its
// FIN or its reset. A peer that answered has taken what was sent to it, whether or not its
// acknowledgement has arrived yet.
func (c *StreamConn) Answered() bool { return c.answered.Load() }

func isRemoteStreamError(err error) bool {
	se, ok := err.(*quicgo.StreamError)
	return ok && se.Remote
}

// Write writes to the send side. After the peer's STOP_SENDING it returns a
// *quicgo.StreamError with Remote set; after CloseWrite, quicgo.ErrStreamClosed; after Close
// (including a Close that interrupted this Write), net.ErrClosed.
func (c *StreamConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closing.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.str.Write(p)
	if err != nil && c.closing.Load() {
		err = net.ErrClosed
	}
	return n, err
}

// CloseWrite half-closes: it sends FIN after the data written so far. Reading continues; the
// peer reads io.EOF and may still write back. It waits for a Write in progress to return.
// Idempotent; a no-op after Abort.
func (c *StreamConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.finishSend()
}

// finishSend sends FIN unless the send side is already finished. c.wmu must be held.
func (c *StreamConn) finishSend() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finSent || c.canceled {
		return nil
	}
	c.finSent = true
	return c.str.Close()
}

// Close ends the stream normally: it sends FIN after the data written so far and stops
// reading with StreamCodeNoError: STOP_SENDING, which the peer's Write and Context see as a
// remote *quicgo.StreamError with code 0, unless Read already returned io.EOF or an error.
// A blocked Read or Write returns net.ErrClosed (an interrupted Write may have written part
// of its data, which is then followed by the FIN). Idempotent; safe concurrently with Read
// and Write. Close after Abort only marks the StreamConn closed.
func (c *StreamConn) Close() error {
	c.closing.Store(true)
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return nil
	}
	c.ended = true
	c.mu.Unlock()

	c.str.CancelRead(StreamCodeNoError) // also unblocks a Read
	// Unblock a Write waiting for flow-control credit, then wait for it to leave: quic-go
	// forbids Stream.Close concurrently with Stream.Write.
	c.str.SetWriteDeadline(time.Now())
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.finishSend()
}

// Abort ends the stream with an error: it resets the send side (RESET_STREAM) and stops the
// receive side (STOP_SENDING), both with code; the peer's Read and Write then return a
// *quicgo.StreamError with that code, and data not yet delivered may be lost. After
// CloseWrite it still resets (a half-sent request must not look complete); after Close it is
// a no-op, as is a second Abort (the first code wins). Safe concurrently with every method;
// a blocked Read or Write returns a *quicgo.StreamError (Remote false).
func (c *StreamConn) Abort(code quicgo.StreamErrorCode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	c.canceled = true
	// Both calls are allowed concurrently with Read/Write and after Stream.Close, and they
	// don't block, so holding c.mu is fine.
	c.str.CancelRead(code)
	c.str.CancelWrite(code)
}

// CancelWrite resets the send side only (RESET_STREAM with code): reading goes on, so an answer
// the peer already sent (a refusal, say) can still be read. For a writer that failed while the
// reader still waits. A no-op after Close, Abort or CancelWrite.
func (c *StreamConn) CancelWrite(code quicgo.StreamErrorCode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || c.canceled {
		return
	}
	c.canceled = true
	c.str.CancelWrite(code)
}

// LocalAddr is the connection's local address.
func (c *StreamConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr is the connection's remote address.
func (c *StreamConn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the stream's read and write deadlines.
func (c *StreamConn) SetDeadline(t time.Time) error { return c.str.SetDeadline(t) }

// SetReadDeadline sets the stream's read deadline.
func (c *StreamConn) SetReadDeadline(t time.Time) error { return c.str.SetReadDeadline(t) }

// SetWriteDeadline sets the stream's write deadline.
func (c *StreamConn) SetWriteDeadline(t time.Time) error { return c.str.SetWriteDeadline(t) }
