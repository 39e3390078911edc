package httpstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// DefaultReplayLimit is how many bytes of a request body Body keeps so that a refused request
// can be sent to the next holder.
const DefaultReplayLimit = 64 << 10

// writeStep is the most of a request body the body writer hands the stream in one write: the
// header clock restarts after each (headerClock.progress), so a peer must take writeStep bytes
// within ResponseHeaderTimeout (kasd's --response-header-timeout, 60 s by default) to keep an
// upload going.
const writeStep = 64 << 10

// smallBody is the largest body of known length that RoundTrip reads at once and sends with the
// head in one stream write (and FIN), without a writer goroutine.
const smallBody = 16 << 10

// Options tune one RoundTrip. The zero value works.
type Options struct {
	// Prefix is written before the Request frame (a Forward frame on peer streams).
	Prefix []byte
	// ResponseHeaderTimeout bounds the wait for the response head, counted from the last
	// request body byte sent: waiting for the client's body bytes does not count, waiting for
	// the peer to take them does (headerClock); 0 means none.
	ResponseHeaderTimeout time.Duration
	// Go starts the request-body writer goroutine; it returns false if the owner is closing.
	// Default: the go statement (the goroutine ends when the stream or the body ends).
	Go func(func()) bool
	// Done is called once when the exchange ends: clean says the response was read to its end;
	// sent and recv count body bytes.
	Done func(clean bool, sent, recv int64)
}

// Body is a request body that can be sent again while everything read from it so far is still
// in its replay buffer: a request that a holder refused is sent to the next one with its body.
//
// A read of the client's body belongs to the Body, not to the attempt that started it: an
// attempt that fails while its body writer waits for the client is not waited for (a silent
// client would hold the retry, and everything waiting for it, until its next byte). The next
// attempt's reader takes over that read: it waits for it and gets its bytes from the replay
// buffer. A read never straddles the replay limit, and one that starts past it makes the body
// not replayable at once, so a replay never misses a byte. Only the latest attempt's reader
// starts reads.
//
// Stop ends the body's use once the request is over; Interrupt lets it end a read that waits
// for a client.
type Body struct {
	rc    io.ReadCloser
	limit int

	// Trailer, if set, is called once the body has ended, and what it returns is sent as the
	// trailers of a framed body (api.FlagFramed): net/http fills a server request's Trailer at
	// the body's EOF (and creates the map then for trailers the head did not declare).
	Trailer func() http.Header
	// Interrupt, if set, makes a read of rc in progress return soon, with an error (kasd sets
	// the client connection's read deadline). Stop calls it with the body's lock held, only
	// while a read is in progress: it must not block. Set it before the body is used.
	Interrupt func()

	mu      sync.Mutex // guards the fields below
	cond    sync.Cond  // L is &mu; broadcast when a read of rc ends and by Stop
	buf     []byte     // the first bytes read from rc, while they fit in limit
	read    int64      // bytes read from rc
	over    bool       // a read past limit started: no replay
	reading bool       // a read of rc is in progress (mu is not held during it)
	eof     bool
	readErr error // the error rc returned: the client's fault, not the agent's
	stopped bool
	cur     *cursor // the latest attempt's reader: the only one that starts reads of rc
}

// ErrBodyStopped is what a read of a Body returns after Stop.
var ErrBodyStopped = errors.New("request body stopped")

// errSuperseded: a reader of an attempt that has ended would read the client's body, which is
// now the next attempt's.
var errSuperseded = errors.New("request body taken over by a later attempt")

// errNotReplayable: an earlier attempt read body bytes past the replay buffer, so a later
// attempt cannot send the body whole.
var errNotReplayable = errors.New("request body no longer replayable")

// NewBody wraps rc (nil for no body) with a replay buffer of limit bytes
// (DefaultReplayLimit if 0).
func NewBody(rc io.ReadCloser, limit int) *Body {
	if rc == nil || rc == http.NoBody {
		return nil
	}
	if limit <= 0 {
		limit = DefaultReplayLimit
	}
	b := &Body{rc: rc, limit: limit}
	b.cond.L = &b.mu
	return b
}

// Replayable reports whether every byte read so far can be sent again.
func (b *Body) Replayable() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.over
}

// Err returns the error reading the client's body returned, if any (not ErrBodyStopped: a
// read that Stop interrupted is not the client's fault).
func (b *Body) Err() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.readErr
}

// Stop ends the body's use, once nothing will send it any more (the request is over, or the
// owner is closing): no read of rc starts after it, and a read in progress is interrupted
// (Interrupt) — the writer of an attempt that failed may still be waiting for the client.
// Readers then get ErrBodyStopped. It reports whether it interrupted a read. Idempotent; nil
// is a no-op. Call it before the request's handler returns: Interrupt may act on the client's
// connection, which serves the next request after that.
func (b *Body) Stop() (interrupted bool) {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return false
	}
	b.stopped = true
	if b.reading && b.Interrupt != nil {
		b.Interrupt()
		interrupted = true
	}
	b.cond.Broadcast()
	return interrupted
}

// StopWait is Stop, then waits up to d for a read of rc in progress to return. A net/http
// server request's body must not be read once its handler has returned: the server reads the
// connection again then (the rest of the body, the next request), and a read still in progress
// makes it panic ("invalid concurrent Body.Read call"; with full duplex, golang/go#68560).
func (b *Body) StopWait(d time.Duration) {
	if b == nil {
		return
	}
	b.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.reading {
		return
	}
	deadline := time.Now().Add(d)
	t := time.AfterFunc(d, func() {
		b.mu.Lock()
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	defer t.Stop()
	for b.reading && time.Now().Before(deadline) {
		b.cond.Wait()
	}
}

// AtEOF reports whether a read of rc returned io.EOF.
func (b *Body) AtEOF() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}

// Close closes the underlying body.
func (b *Body) Close() error {
	if b == nil {
		return nil
	}
	return b.rc.Close()
}

// cursor is one attempt's reader of the body, from its start: the replay buffer first, then
// the rest of rc.
type cursor struct {
	b   *Body
	off int64 // body bytes this cursor returned
}

// newCursor makes the reader of a new attempt, which takes the body over from earlier ones.
func (b *Body) newCursor() *cursor {
	c := &cursor{b: b}
	b.mu.Lock()
	b.cur = c
	b.mu.Unlock()
	return c
}

func (c *cursor) Read(p []byte) (int, error) {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if c.off < int64(len(b.buf)) {
			n := copy(p, b.buf[c.off:])
			c.off += int64(n)
			return n, nil
		}
		if !b.reading {
			break
		}
		b.cond.Wait() // an earlier attempt's read: its bytes are ours too, if they fit the buffer
	}
	switch {
	case c.off < b.read:
		return 0, errNotReplayable
	case b.eof:
		return 0, io.EOF
	case b.readErr != nil:
		return 0, &clientBodyError{b.readErr}
	case b.stopped:
		return 0, ErrBodyStopped
	case c != b.cur:
		return 0, errSuperseded
	}
	wasOver := b.over
	if room := b.limit - len(b.buf); !b.over && room > 0 {
		p = p[:min(len(p), room)] // a read either fits the replay buffer or is past it
	} else {
		b.over = true // before the read: a retry decided meanwhile must not count on its bytes
	}
	b.reading = true
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	b.mu.Lock()
	b.reading = false
	b.cond.Broadcast()
	b.read += int64(n)
	c.off += int64(n)
	if !b.over {
		b.buf = append(b.buf, p[:n]...)
	} else if n == 0 && !wasOver {
		b.over = false // nothing was read past the buffer after all (the body ended at it)
	}
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil && b.stopped:
		err = ErrBodyStopped // Stop interrupted the read: not the client's fault
	case err != nil:
		b.readErr = err
		err = &clientBodyError{err}
	}
	return n, err
}

// clientBodyError marks a failure to read the client's request body.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// RemoteError: the peer answered the request with an Error frame before any response: a
// refusal, or after Accepted its final answer. Only the codes that say the request was not
// processed (not_holder, shutting_down, agent_not_connected), never sent after Accepted, let
// it go elsewhere; retry decides by the code.
type RemoteError struct{ Err *api.Error }

func (e *RemoteError) Error() string { return e.Err.Error() }
func (e *RemoteError) Unwrap() error { return e.Err }

// RoundTrip sends frame (and body, which may be nil) on sc and returns the response once its
// head has arrived. frame.Flags need not carry FlagBody or FlagGated: RoundTrip sets them. The
// caller's frame is not modified.
//
// Errors: *RemoteError for the peer's Error frame (a refusal, or after Accepted its final
// answer) or a reset with StreamCodeRefused, else an *api.Error: deadline_exceeded (header
// timeout, request deadline), client_canceled (ctx canceled), bad_request (the client's body
// could not be read), protocol_error (a malformed or oversized head, too many 1xx responses, a
// "not processed" Error frame after Accepted), agent_failed (the stream or connection broke).
//
// The response body ends the exchange: read to EOF it closes the stream cleanly; closed early,
// or on ctx's end, it resets it. A 101 response to an upgrade request has a body that is an
// io.ReadWriteCloser over the stream.
func RoundTrip(ctx context.Context, sc *quic.StreamConn, frame *api.Request, body *Body, opts *Options) (*http.Response, error) {
	// One allocation holds the exchange, its *http.Response and the response body's reader.
	x := &exchange{sc: sc, ctx: ctx}
	if opts != nil {
		x.opts = *opts
	}
	opts = &x.opts
	x.stopCancel = context.AfterFunc(ctx, x.abort)
	if opts.ResponseHeaderTimeout > 0 {
		x.head.start(opts.ResponseHeaderTimeout, x.headerTimeout)
		defer x.head.stop()
	}
	f := *frame
	f.Flags &^= api.FlagBody | api.FlagGated
	upgrade := f.Has(api.FlagUpgrade)
	bp := getBuf()
	buf := append(*bp, opts.Prefix...)
	var cur *cursor
	small := false
	if body != nil {
		cur = body.newCursor()
		f.Flags |= api.FlagBody
		small = f.ContentLength > 0 && f.ContentLength <= smallBody && !f.Has(api.FlagFramed)
		if !small && (f.ContentLength < 0 || f.ContentLength > int64(body.limit)) {
			f.Flags |= api.FlagGated
		}
	}
	var err error
	buf, err = api.EncodeFrame(buf, &f)
	if err != nil {
		*bp = buf
		putBuf(bp)
		x.finish(false)
		return nil, err
	}
	if small {
		// Read the whole (small) body now and send it with the head and FIN in one write.
		start := len(buf)
		buf = append(buf, make([]byte, f.ContentLength)...)
		x.head.pause() // the client's time (bodyWriter.run)
		_, err = io.ReadFull(cur, buf[start:])
		x.head.resume()
		if err != nil {
			*bp = buf
			putBuf(bp)
			x.finish(false)
			return nil, clientBodyFailure(body, err)
		}
		x.sent.Add(f.ContentLength)
	}
	_, err = sc.Write(buf)
	*bp = buf
	putBuf(bp)
	if err == nil && (body == nil && !upgrade || small) {
		// An error here means the peer stopped reading already (it answered, or refused):
		// what it sent back is still to be read.
		_ = sc.CloseWrite()
	}
	peerStopped := false
	if err != nil {
		var se *quicgo.StreamError
		if !errors.As(err, &se) || !se.Remote {
			return nil, x.fail(err)
		}
		// The peer stopped reading (STOP_SENDING) before it had all of this write: it
		// answered or refused already (a large write returns only once it is sent), and
		// that answer is still to be read. No body goes after it.
		sc.CancelWrite(quic.StreamCodeCanceled)
		peerStopped = true
	}

	var writer *bodyWriter
	if body != nil && !small && !peerStopped {
		writer = &bodyWriter{x: x, cur: cur, framed: f.Has(api.FlagFramed)}
		if f.Has(api.FlagGated) {
			writer.gate = make(chan struct{})
			writer.replay = body.limit
		}
		start := opts.Go
		if start == nil {
			start = func(f func()) bool { go f(); return true }
		}
		if !start(writer.run) {
			x.finish(false)
			return nil, api.Errorf(api.CodeShuttingDown, "closing")
		}
	}

	resp, err := x.readResponse(frame, writer)
	if err != nil {
		if writer != nil {
			// The writer ends at its next step; it is not waited for: one waiting for the
			// client's next bytes would hold this request (and whatever waits for it) until
			// they come. A next attempt takes its read over (Body); Stop interrupts it.
			writer.stop()
			if e := body.Err(); e != nil {
				return nil, clientBodyFailure(body, e)
			}
		}
		return nil, err
	}
	x.head.stop()
	return resp, nil
}

func clientBodyFailure(body *Body, err error) error {
	if e := body.Err(); e != nil {
		err = e
	}
	return &api.Error{Code: api.CodeBadRequest, Message: "reading the request body: " + err.Error(), Err: err}
}

// readResponse reads frames up to the final response head.
func (x *exchange) readResponse(req *api.Request, writer *bodyWriter) (*http.Response, error) {
	informational := 0
	accepted := false // accepted or an interim response came: the request is being processed
	for {
		m, err := api.ReadFrame(x.sc)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, x.fail(err)
		}
		switch m := m.(type) {
		case *api.Error:
			if accepted {
				// A refusal can no longer come (api/SPEC.md): taken as one, it would send a
				// request the acceptor may have processed to another holder. Any other error
				// is the request's final answer (its service failed before a response head:
				// unreachable, timed out), as it is before accepted.
				if notProcessed(m.Code) {
					return nil, x.fail(&api.Error{Code: api.CodeProtocol, Message: fmt.Sprintf("%s error frame after the request was accepted", m.Code), Err: api.ErrUnexpectedFrame})
				}
			}
			x.finish(false)
			return nil, &RemoteError{Err: m}
		case *api.Accepted:
			if accepted {
				return nil, x.fail(&api.Error{Code: api.CodeProtocol, Message: "a second accepted frame, or one after an interim response", Err: api.ErrUnexpectedFrame})
			}
			accepted = true
			x.answered.Store(true)
			if writer != nil {
				writer.open()
			}
		case *api.Response:
			if m.Status == http.StatusSwitchingProtocols && !req.Has(api.FlagUpgrade) || m.Status < 100 {
				return nil, x.fail(&api.Error{Code: api.CodeProtocol, Message: "101 response to a request without upgrade"})
			}
			if m.Status < 200 && m.Status != http.StatusSwitchingProtocols {
				if informational++; informational > api.MaxInformational {
					return nil, x.fail(&api.Error{Code: api.CodeProtocol, Message: fmt.Sprintf("more than %d informational responses", api.MaxInformational), Err: ErrTooManyInformational})
				}
				accepted = true // a response implies accepted
				x.answered.Store(true)
				if trace := httptrace.ContextClientTrace(x.ctx); trace != nil && trace.Got1xxResponse != nil {
					// The caller passes it on (kasd: to its client; 103 Early Hints).
					h := make(http.Header, len(m.Header))
					AddKVs(h, m.Header, false)
					_ = trace.Got1xxResponse(m.Status, textproto.MIMEHeader(h))
				}
				continue
			}
			x.answered.Store(true)
			if writer != nil {
				writer.open() // an answer came: whatever the gate held may go now
			}
			return x.response(req, m), nil
		default:
			return nil, x.fail(&api.Error{Code: api.CodeProtocol, Message: fmt.Sprintf("unexpected %s frame before the response", m.Type()), Err: api.ErrUnexpectedFrame})
		}
	}
}

// notProcessed reports whether an error frame with code c says that the request was not
// processed (api/SPEC.md), which an acceptor that accepted it can no longer say.
func notProcessed(c api.Code) bool {
	switch c {
	case api.CodeNotHolder, api.CodeShuttingDown, api.CodeAgentNotConnected:
		return true
	}
	return false
}

// ErrTooManyInformational: the peer sent more than api.MaxInformational 1xx responses.
var ErrTooManyInformational = errors.New("too many informational responses")

func (x *exchange) response(req *api.Request, m *api.Response) *http.Response {
	resp := &x.resp
	*resp = http.Response{
		Status:        statusLine(m.Status),
		StatusCode:    m.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        make(http.Header, len(m.Header)),
		ContentLength: m.ContentLength,
	}
	AddKVs(resp.Header, m.Header, m.Status == http.StatusSwitchingProtocols)
	if m.Status == http.StatusSwitchingProtocols {
		resp.Body = &upgradedBody{x: x}
		return resp
	}
	if m.Has(api.FlagFramed) {
		resp.Trailer = http.Header{}
	} else {
		delete(resp.Header, "Trailer") // announces trailers only in a framed response's head
	}
	x.body.x = x
	x.body.r = &x.br
	resp.Body = &x.body
	if req.Method == http.MethodHead || m.Status == http.StatusNoContent || m.Status == http.StatusNotModified {
		// No body, whatever the content length says (it describes the GET).
		x.br = bodyReader{r: x.sc}
		return resp
	}
	x.br = bodyReader{r: x.sc, remaining: m.ContentLength, framed: m.Has(api.FlagFramed), trailer: resp.Trailer}
	return resp
}

// statusLines holds "200 OK" and the like for the statuses net/http knows, so that a response
// costs no formatting.
var statusLines = func() (t [600]string) {
	for code := range t {
		if text := http.StatusText(code); text != "" {
			t[code] = strconv.Itoa(code) + " " + text
		}
	}
	return t
}()

func statusLine(code int) string {
	if code >= 0 && code < len(statusLines) && statusLines[code] != "" {
		return statusLines[code]
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}

// bodyWriter sends a request body that did not fit in the first write.
type bodyWriter struct {
	x      *exchange
	cur    *cursor
	framed bool
	// gate, for FlagGated requests: bytes beyond replay wait until it is closed (Accepted, or
	// a response), or stop.
	gate     chan struct{}
	replay   int
	gateOnce sync.Once
	stopped  atomic.Bool
}

func (w *bodyWriter) open() {
	if w.gate != nil {
		w.gateOnce.Do(func() { close(w.gate) })
	}
}

func (w *bodyWriter) stop() {
	w.stopped.Store(true)
	w.open()
}

func (w *bodyWriter) run() {
	sc := w.x.sc
	var dst io.Writer = sc
	var fw *framedWriter
	if w.framed {
		fw = &framedWriter{w: sc}
		dst = fw
	}
	cb := newCopyBuf()
	defer cb.release()
	sent := 0
	gate := w.gate // w.gate itself is read by open, concurrently
	for {
		buf := cb.buf()
		p := buf
		if gate != nil && sent < w.replay {
			p = buf[:min(len(buf), w.replay-sent)]
		} else if gate != nil {
			<-gate
			gate = nil
		}
		if w.stopped.Load() {
			return
		}
		// Waiting for the client's next bytes is the client's time (its stall timeout), not
		// the peer's: the header clock stops meanwhile and restarts with what is to be sent.
		w.x.head.pause()
		n, err := w.cur.Read(p)
		w.x.head.resume()
		if n > 0 {
			// In steps, each restarting the header clock once the peer has taken it: a read
			// of the client's buffered body can be 256 KiB, and a peer that takes it slowly
			// but steadily (its link congested or lossy, its agent's service reading at its
			// pace) must not be cut while the bytes move, only one that stops taking them.
			for q := p[:n]; len(q) > 0; {
				k := min(len(q), writeStep)
				if _, werr := dst.Write(q[:k]); werr != nil {
					// Reset only what we send: the peer may have stopped reading because it
					// answered already, and that answer must still be read.
					sc.CancelWrite(quic.StreamCodeCanceled)
					return
				}
				q = q[k:]
				w.x.sent.Add(int64(k))
				w.x.head.progress()
			}
			sent += n
			cb.used(n)
		}
		if err == io.EOF {
			if fw != nil {
				var tr http.Header
				if w.cur.b.Trailer != nil {
					tr = w.cur.b.Trailer()
				}
				if err := fw.writeTrailers(tr); err != nil {
					sc.CancelWrite(quic.StreamCodeCanceled)
					return
				}
			}
			_ = sc.CloseWrite()
			return
		}
		if err != nil {
			// The client's body failed (bad chunked encoding, client gone), or this writer's
			// attempt is over (Stop, a later attempt): the request must not look complete
			// to the agent.
			sc.Abort(quic.StreamCodeCanceled)
			return
		}
	}
}

// exchange is one request on one stream; finish ends it exactly once. It also holds the
// response and its body reader, so that a request costs one allocation for all of them.
type exchange struct {
	sc   *quic.StreamConn
	ctx  context.Context
	opts Options

	timedOut atomic.Bool
	// answered: accepted, an interim response or the response head came. The request is being
	// processed: a refusal can no longer come (api/SPEC.md), and a reset that says so is the
	// peer's protocol error, not a request another holder may take.
	answered   atomic.Bool
	head       headerClock
	stopCancel func() bool
	finished   atomic.Bool
	sent, recv atomic.Int64

	resp http.Response
	body responseBody
	br   bodyReader
}

// headerClock is Options.ResponseHeaderTimeout: it runs while the exchange waits on the peer —
// for the response head, for a stream write the peer's flow control holds, for Accepted at
// the gate — is paused while the body writer waits for the client's next bytes, and restarts
// each time the peer has taken a step of the body (writeStep), so an upload that takes longer
// than the timeout while the client or the peer is slow but moving is not cut, and a peer that
// stops reading it is still bounded. (Until 2026-12-04 a client's buffered body went to the
// stream in writes of up to 256 KiB, each timed whole: under chaos loss, 3 % into every
// namespace, forwards of 150-190 KB POSTs over a congested peer link got 504 with their bodies
// still moving, the agent's service having read 67-93 % of them.) It counts from the last
// byte sent, as net/http's Transport counts its ResponseHeaderTimeout from the end of the
// request's body.
// The zero value is off.
type headerClock struct {
	mu   sync.Mutex
	t    *time.Timer // nil: off
	d    time.Duration
	done bool // the head came, or the exchange failed: the clock stays stopped
}

func (c *headerClock) start(d time.Duration, fire func()) {
	c.d = d
	c.t = time.AfterFunc(d, fire)
}

func (c *headerClock) pause() {
	if c.t == nil {
		return
	}
	c.mu.Lock()
	if !c.done {
		c.t.Stop()
	}
	c.mu.Unlock()
}

func (c *headerClock) resume() {
	if c.t == nil {
		return
	}
	c.mu.Lock()
	if !c.done {
		c.t.Reset(c.d)
	}
	c.mu.Unlock()
}

// progress restarts a running clock: the peer took a step of the body. A paused clock stays
// paused, a stopped or fired one stopped.
func (c *headerClock) progress() {
	if c.t == nil {
		return
	}
	c.mu.Lock()
	if !c.done && c.t.Stop() {
		c.t.Reset(c.d)
	}
	c.mu.Unlock()
}

func (c *headerClock) stop() {
	if c.t == nil {
		return
	}
	c.mu.Lock()
	c.done = true
	c.t.Stop()
	c.mu.Unlock()
}

// abort resets the stream when the request's context ends.
func (x *exchange) abort() { x.sc.Abort(quic.StreamCodeCanceled) }

// headerTimeout resets the stream when the response head is late.
func (x *exchange) headerTimeout() {
	x.timedOut.Store(true)
	x.sc.Abort(quic.StreamCodeCanceled)
}

// fail ends the exchange with err mapped to a typed error.
func (x *exchange) fail(err error) error {
	x.finish(false)
	var se *quicgo.StreamError
	switch {
	case x.timedOut.Load():
		return &api.Error{Code: api.CodeDeadlineExceeded, Message: fmt.Sprintf("no response head within %s", x.opts.ResponseHeaderTimeout), Err: ErrHeaderTimeout}
	case errors.Is(x.ctx.Err(), context.DeadlineExceeded):
		return api.Errorf(api.CodeDeadlineExceeded, "request deadline exceeded")
	case x.ctx.Err() != nil:
		return &api.Error{Code: api.CodeClientCanceled, Message: "request canceled", Err: x.ctx.Err()}
	case errors.As(err, &se) && se.Remote && (se.ErrorCode == quic.StreamCodeRefused || se.ErrorCode == quic.StreamCodeOverloaded) && x.answered.Load():
		return &api.Error{Code: api.CodeProtocol, Message: "the peer refused the stream after it had accepted or answered the request", Err: err}
	case errors.As(err, &se) && se.Remote && se.ErrorCode == quic.StreamCodeRefused:
		return &RemoteError{Err: &api.Error{Code: api.CodeShuttingDown, Message: "the peer refused the stream", Err: err}}
	case errors.As(err, &se) && se.Remote && se.ErrorCode == quic.StreamCodeOverloaded:
		return &RemoteError{Err: &api.Error{Code: api.CodeOverloaded, Message: "the peer refused the stream: too many streams open at once", RetryAfter: time.Second, Err: err}}
	}
	return StreamError(err)
}

// ErrHeaderTimeout marks a response head that did not come within ResponseHeaderTimeout.
var ErrHeaderTimeout = errors.New("response header timeout")

func (x *exchange) finish(clean bool) {
	if x.finished.Swap(true) {
		return
	}
	x.stopCancel()
	if clean {
		_ = x.sc.Close()
	} else {
		x.sc.Abort(quic.StreamCodeCanceled)
	}
	if x.opts.Done != nil {
		x.opts.Done(clean, x.sent.Load(), x.recv.Load())
	}
}

// StreamError classifies an error seen on a stream as an *api.Error.
func StreamError(err error) *api.Error {
	var e *api.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &api.Error{Code: api.CodeAgentFailed, Message: "the peer closed the stream early", Err: err}
	}
	var se *quicgo.StreamError
	if errors.As(err, &se) && se.Remote && se.ErrorCode == quic.StreamCodeServiceFailed {
		return &api.Error{Code: api.CodeServiceUnavailable, Message: "the service's response broke after its head", Err: err}
	}
	if errors.As(err, &se) {
		return &api.Error{Code: api.CodeAgentFailed, Message: "the peer reset the stream", Err: err}
	}
	return &api.Error{Code: api.CodeAgentFailed, Message: "connection failed: " + err.Error(), Err: err}
}

// responseBody ends the exchange when read to EOF or closed.
type responseBody struct {
	r *bodyReader
	x *exchange
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.x.recv.Add(int64(n))
	if err == io.EOF {
		b.x.finish(true)
	} else if err != nil {
		err = b.x.fail(err)
	}
	return n, err
}

func (b *responseBody) Close() error {
	b.x.finish(false)
	return nil
}

// readyWait is how long ReadReady waits for a body's first bytes before it says a Read would
// wait: a stream's head goes to the client alone after at most this long.
const readyWait = time.Millisecond

// ReadReady reports whether a Read returns without waiting (more than readyWait) for the peer:
// body bytes, the stream's end or its reset are there. A one-byte Peek, which consumes
// nothing, under a read deadline readyWait ahead: quic-go (like net.Conn) checks an expired
// deadline before the data it holds, so a deadline of now would say "not ready" even for bytes
// already there. The deadline costs no system call, and a body that follows its head closely
// (an agent that flushed the head alone because its service was slower) still leaves with it.
func (b *responseBody) ReadReady() bool {
	if b.r.err != nil {
		return true
	}
	str := b.x.sc.Stream()
	var one [1]byte
	_ = str.SetReadDeadline(time.Now().Add(readyWait))
	_, err := str.Peek(one[:])
	_ = str.SetReadDeadline(time.Time{})
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// upgradedBody is the far side of an upgraded (101) stream: an io.ReadWriteCloser, as
// httputil.ReverseProxy expects. CloseWrite sends FIN.
type upgradedBody struct {
	x *exchange
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	n, err := b.x.sc.Read(p)
	b.x.recv.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	n, err := b.x.sc.Write(p)
	b.x.sent.Add(int64(n))
	return n, err
}

// CloseWrite finishes the send side (FIN); reading goes on.
func (b *upgradedBody) CloseWrite() error { return b.x.sc.CloseWrite() }

func (b *upgradedBody) Close() error {
	b.x.finish(true)
	return nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte {
	bp := bufPool.Get().(*[]byte)
	*bp = (*bp)[:0]
	return bp
}

func putBuf(bp *[]byte) {
	if cap(*bp) <= 80<<10 {
		bufPool.Put(bp)
	}
}
