package httpstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// ReadRequest reads the request head of a stream the peer opened. Bound it with a read
// deadline on sc.
func ReadRequest(sc *quic.StreamConn) (*api.Request, error) {
	m, err := api.ReadExpect(sc, api.TypeRequest)
	if err != nil {
		return nil, err
	}
	return m.(*api.Request), nil
}

// Refuse answers a request stream with e and ends the stream without reading the body: the
// peer sees a refusal, which says the request was not processed.
func Refuse(sc *quic.StreamConn, e *api.Error) {
	_ = sc.SetWriteDeadline(time.Now().Add(time.Second))
	_ = api.WriteFrame(sc, e)
	_ = sc.Close()
}

// Accept tells the sender of a FlagGated request to send the rest of its body.
func Accept(sc *quic.StreamConn, f *api.Request) error {
	if !f.Has(api.FlagGated) {
		return nil
	}
	_, err := sc.Write(acceptedFrame)
	return err
}

var acceptedFrame = api.AppendFrame(nil, &api.Accepted{})

// NewRequest builds the *http.Request for a handler from the request head f read from sc. Its
// context is ctx, ended when the stream fails (the peer reset or stopped it, or the connection
// died) and at f's deadline; call the returned cancel when the handler is done. On an upgrade
// request, this side's own FIN does not end it: after a 101 the directions of the stream end one
// at a time, and the service's half-close, passed on, must not cut what the client still sends.
// Its body reads the stream, and its Close stops the stream's receive side (see requestBody).
// URL holds the target's path and query only.
func NewRequest(ctx context.Context, sc *quic.StreamConn, f *api.Request) (*http.Request, context.CancelFunc, error) {
	u, err := url.ParseRequestURI(f.Target)
	if err != nil {
		return nil, nil, api.Errorf(api.CodeBadRequest, "request target %q: %v", f.Target, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	upgrade := f.Has(api.FlagUpgrade)
	var stop func() bool
	if upgrade {
		// sc.Context() also ends at this side's FIN (cause quicgo.ErrStreamClosed), which on an
		// upgraded stream ends one direction only; a failure after that is seen by whoever
		// still reads the stream. Any other stream's FIN ends its response: the request is
		// done (and this closure would cost every request an allocation).
		cancelOnFailure := cancel // not the variable: cancel changes below
		stop = context.AfterFunc(sc.Context(), func() {
			if !errors.Is(context.Cause(sc.Context()), quicgo.ErrStreamClosed) {
				cancelOnFailure()
			}
		})
	} else {
		stop = context.AfterFunc(sc.Context(), cancel)
	}
	if !f.Deadline.IsZero() {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, f.Deadline)
		prev := cancel
		cancel = func() { cancelDeadline(); prev() }
	}
	// Built here and copied once by WithContext (which the context needs): not allocated twice.
	r := http.Request{
		Method:     f.Method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header, len(f.Header)+2),
		Host:       f.Host,
		RequestURI: f.Target,
		RemoteAddr: remoteAddrString(sc.RemoteAddr()),
		Body:       http.NoBody,
	}
	AddKVs(r.Header, f.Header, upgrade)
	if upgrade {
		r.Header.Set("Connection", "Upgrade")
	}
	if f.Has(api.FlagBody) {
		r.ContentLength = f.ContentLength
		if f.Has(api.FlagFramed) {
			r.Trailer = http.Header{}
		}
		r.Body = newRequestBody(sc, f, r.Trailer)
		if f.ContentLength < 0 {
			r.TransferEncoding = []string{"chunked"}
		}
	}
	done := func() { stop(); cancel() }
	// As under net/http's server, so that handlers such as httputil.ReverseProxy abort a
	// response they cannot complete (panic(http.ErrAbortHandler)) instead of ending it as if
	// it were whole; the caller recovers it and resets the stream (see Recover).
	ctx = context.WithValue(ctx, http.ServerContextKey, streamServer)
	return r.WithContext(ctx), done, nil
}

// lastAddr is the last remote address NewRequest formatted, with its string: every stream of a
// connection has the same net.Addr (quic-go returns the connection's), and formatting it costs
// three allocations per request. One entry, replaced on a miss: there is nothing to bound.
var lastAddr atomic.Pointer[addrString]

type addrString struct {
	addr *net.UDPAddr
	s    string
}

// remoteAddrString is a.String(), without formatting it again for the address of the last call.
// Only *net.UDPAddr is remembered: it is compared by pointer, and never changed in place.
func remoteAddrString(a net.Addr) string {
	u, ok := a.(*net.UDPAddr)
	if !ok {
		return a.String()
	}
	if c := lastAddr.Load(); c != nil && c.addr == u {
		return c.s
	}
	s := u.String()
	lastAddr.Store(&addrString{addr: u, s: s})
	return s
}

// ResponseWriter writes a handler's response on a stream as a response frame and its body. The
// head waits for the first Flush, for more body than fits the write buffer, or for Finish, so
// that a small response leaves in one stream write with its FIN. It implements http.Flusher and
// http.Hijacker (for httputil.ReverseProxy's upgrades: the HTTP/1.1 101 head it writes on the
// hijacked connection is turned into a response frame), and Upgrade for callers that switch
// protocols themselves. Not safe for concurrent use, like any http.ResponseWriter.
type ResponseWriter struct {
	sc      *quic.StreamConn
	req     *api.Request
	header  http.Header
	status  int
	sent    bool  // the head was written
	noBody  bool  // HEAD, 204, 304: body bytes are dropped
	cl      int64 // declared Content-Length, -1 if none
	written int64
	buf     []byte  // pending bytes: nothing of the head is written before the first flush
	bufp    *[]byte // the pooled buffer behind buf, if any
	framed  *framedWriter
	frame   bool  // FrameBody: frame the body even without a declared trailer
	err     error // the first write error; later writes return it
	// headErr: the response head was over the limits and an error frame went in its place
	// (appendHead); the response ends there.
	headErr error
	// trailerErr: the trailers were over the limits; the stream was reset as a service's
	// failure after the body (the peer must not take the body for complete without them).
	trailerErr error
	// ended: an error frame ended the response (WriteError before the head, or headErr):
	// nothing more is written, and Finish ends the stream with FIN.
	ended   bool
	infos   int
	upgrade net.Conn // set once upgraded
}

// maxPending is how much of a body the writer holds before sending the head.
const maxPending = 16 << 10

// NewResponseWriter returns the writer for the response to f on sc.
func NewResponseWriter(sc *quic.StreamConn, f *api.Request) *ResponseWriter {
	return &ResponseWriter{sc: sc, req: f, header: make(http.Header, 8), cl: -1}
}

func (w *ResponseWriter) Header() http.Header { return w.header }

// Status returns the status written (0 if none yet).
func (w *ResponseWriter) Status() int { return w.status }

// Written returns the body bytes written.
func (w *ResponseWriter) Written() int64 { return w.written }

func (w *ResponseWriter) WriteHeader(code int) {
	if w.status != 0 || w.upgrade != nil {
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Interim responses (103 Early Hints) are passed on, up to the limit; never 100
		// Continue, which kasd answers to its client itself.
		if code != http.StatusContinue && w.infos < api.MaxInformational {
			if h := w.head(code, 0); len(h) > 0 {
				w.infos++
				w.writeNow(h)
			}
		}
		return
	}
	w.status = code
	if code == http.StatusSwitchingProtocols {
		return // the head goes with Upgrade or the hijacked connection's first write
	}
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.cl = n
		}
	}
	if (w.frame || len(w.header["Trailer"]) > 0) && !w.noBody {
		w.framed = &framedWriter{w: writerFunc(w.writeRaw)}
	}
}

// FrameBody makes the body framed (data frames, then a trailers frame) even though the header
// declares no trailer, so that trailers known only at its end (http.TrailerPrefix keys set
// before Finish) reach the peer: for a proxy passing on a body that may end with trailers its
// head did not declare (HTTP/1.1 chunked). Call it before WriteHeader; a response without a
// body (HEAD, 204, 304) stays unframed.
func (w *ResponseWriter) FrameBody() { w.frame = true }

// head encodes the response head for status.
func (w *ResponseWriter) head(status int, cl int64) []byte { return w.appendHead(nil, status, cl) }

// appendHead appends the response head for status to dst. A head over the limits (a service
// answering with more header bytes or fields than a head may carry) is replaced by an error
// frame, service_unavailable, and the response ends there: HeadError says why, Status is the
// error's, and nothing more is written. An interim (1xx) head over the limits is dropped.
func (w *ResponseWriter) appendHead(dst []byte, status int, cl int64) []byte {
	m := &api.Response{Status: status, ContentLength: cl}
	m.Header = dropInvalid(HeaderKVs(make([]api.KV, 0, len(w.header)+1), w.header, status == http.StatusSwitchingProtocols, "Content-Length"))
	if w.framed != nil && status >= 200 {
		m.Flags |= api.FlagFramed
		// The names of the trailers the body will end with go on to the client (as
		// httputil.ReverseProxy announces them again): HeaderKVs drops Trailer as a field that
		// describes this hop's message.
		for _, v := range w.header["Trailer"] {
			if api.ValidField("Trailer", v) {
				m.Header = append(m.Header, api.KV{Key: "Trailer", Value: v})
			}
		}
	}
	b, err := api.EncodeFrame(dst, m)
	if err == nil && len(m.Header) > api.MaxHeaderFields {
		// EncodeFrame checks the size only; the receiver also refuses more fields than this.
		err = &api.Error{Code: api.CodeTooLarge, Message: strconv.Itoa(len(m.Header)) + " header fields, max " + strconv.Itoa(api.MaxHeaderFields), Err: api.ErrHeadTooLarge}
	}
	if err != nil {
		if status < 200 && status != http.StatusSwitchingProtocols {
			return dst[:len(dst):len(dst)]
		}
		// A head over the limit: the peer gets a typed error, not a broken stream.
		w.headErr, w.ended = err, true
		w.status = api.CodeServiceUnavailable.HTTPStatus()
		return api.AppendFrame(dst[:len(dst):len(dst)], &api.Error{Code: api.CodeServiceUnavailable, Message: "response head too large: " + err.Error(), Err: err})
	}
	return b
}

func (w *ResponseWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.upgrade != nil {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		return len(p), nil
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.sent && len(w.buf)+len(p) <= maxPending {
		if w.buf == nil {
			w.bufp = getBuf()
			w.buf = *w.bufp
		}
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.sendHead(); err != nil {
		return 0, err
	}
	var err error
	if w.framed != nil {
		_, err = w.framed.Write(p)
	} else {
		_, err = w.writeRaw(p)
	}
	if err != nil {
		w.err = err
		return 0, err
	}
	return len(p), nil
}

// sendHead writes the head and the pending body bytes, once.
func (w *ResponseWriter) sendHead() error {
	if w.sent {
		return w.err
	}
	w.sent = true
	// The head goes in front of the pending body bytes, in one pooled buffer and one write.
	op := getBuf()
	out := w.appendHead(*op, w.status, w.cl)
	if w.headErr != nil {
		// The error frame alone: the body and what the handler writes next are dropped.
		w.releaseBuf()
		_, err := w.writeRaw(out)
		*op = out
		putBuf(op)
		if err == nil {
			w.err = w.headErr
		}
		return w.err
	}
	if len(w.buf) > 0 {
		if w.framed != nil {
			// Pending bytes become the first data frame.
			out = append(out, byte(api.TypeData), byte(len(w.buf)>>16), byte(len(w.buf)>>8), byte(len(w.buf)))
		}
		out = append(out, w.buf...)
	}
	w.releaseBuf()
	_, err := w.writeRaw(out)
	*op = out
	putBuf(op)
	return err
}

// releaseBuf gives the pending-bytes buffer back to the pool.
func (w *ResponseWriter) releaseBuf() {
	if w.bufp != nil {
		*w.bufp = w.buf
		putBuf(w.bufp)
		w.bufp = nil
	}
	w.buf = nil
}

func (w *ResponseWriter) writeRaw(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.sc.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

func (w *ResponseWriter) writeNow(p []byte) { _, _ = w.writeRaw(p) }

// Flush sends the head and everything written so far.
func (w *ResponseWriter) Flush() { _ = w.FlushError() }

// HeadPending reports whether the head was written (WriteHeader, or a first Write) but not
// sent yet: it waits for more body bytes, to leave with them (CopyBody sends it before a read
// that would wait).
func (w *ResponseWriter) HeadPending() bool { return w.status != 0 && !w.sent && w.upgrade == nil }

// FlushError is Flush that reports a failed write (http.ResponseController uses it).
func (w *ResponseWriter) FlushError() error {
	if w.upgrade != nil {
		return nil
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.sendHead()
}

// Finish ends the response after the handler returned: the head if it was not sent (with the
// exact content length of what was written, or framed if the handler set trailers by then),
// the pending body, trailers, then FIN. A handler
// that wrote less than its declared Content-Length gets the stream reset: the peer must not take
// a truncated body for a complete one. It also ends the receive side.
func (w *ResponseWriter) Finish() {
	if w.upgrade != nil {
		return // the upgraded connection's owner ends the stream
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.ended {
		w.endAfterError()
		return
	}
	if !w.sent && w.cl < 0 && w.framed == nil && !w.noBody {
		if hasTrailerPrefix(w.header) {
			// Trailers set before the head left (http.TrailerPrefix, undeclared, as net/http
			// allows): they need a framed body, whatever its length.
			w.framed = &framedWriter{w: writerFunc(w.writeRaw)}
		} else {
			w.cl = w.written // the whole body is known now
		}
	}
	if w.cl >= 0 && w.written < w.cl && !w.noBody {
		w.releaseBuf()
		w.sc.Abort(quic.StreamCodeInternal)
		return
	}
	var trailers http.Header
	if w.framed != nil {
		trailers = http.Header{}
		for k, vs := range w.header {
			if k2, ok := trailerKey(w.header, k); ok {
				trailers[k2] = vs
			}
		}
		if !w.sent {
			// Nothing has left yet: trailers over the limits get the peer a typed error in
			// place of the head, not a reset after a body it would have to discard.
			if err := checkTrailers(trailers); err != nil {
				w.trailerErr = err
				WriteError(w, &api.Error{Code: api.CodeServiceUnavailable, Message: "response trailers too large: " + err.Error(), Err: err})
				w.endAfterError()
				return
			}
		}
	}
	_ = w.sendHead()
	if w.ended {
		w.endAfterError()
		return
	}
	if w.framed != nil {
		if err := w.framed.writeTrailers(trailers); err != nil {
			if errors.Is(err, api.ErrFrameTooLarge) || errors.Is(err, api.ErrHeadTooLarge) {
				// Trailers over the limits are the service's answer, not the agent's fault:
				// the peer learns so from the reset's code (kasd: service_unavailable).
				w.trailerErr = err
				w.releaseBuf()
				w.sc.Abort(quic.StreamCodeServiceFailed)
				return
			}
			w.err = err
		}
	}
	if w.err != nil {
		w.sc.Abort(quic.StreamCodeInternal)
		return
	}
	w.drainFIN()
	_ = w.sc.Close()
}

// errEnded is what writes return after an error frame ended the response.
var errEnded = errors.New("httpstream: the response ended with an error frame")

// endAfterError ends a response that an error frame ended (in place of its head): with FIN,
// not a reset, which could discard the frame before the peer read it, and nothing after the
// frame (no body, no trailers).
func (w *ResponseWriter) endAfterError() {
	w.releaseBuf()
	w.drainFIN()
	_ = w.sc.Close()
}

// HeadError returns why the response head was replaced by an error frame (over the limits),
// or nil.
func (w *ResponseWriter) HeadError() error { return w.headErr }

// TrailerError returns why the response was reset at its trailers (over the limits), or nil.
func (w *ResponseWriter) TrailerError() error { return w.trailerErr }

// hasTrailerPrefix reports whether h has a key with http.TrailerPrefix.
func hasTrailerPrefix(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// trailerKey reports whether header key k is a trailer: declared in the Trailer header, or
// prefixed with http.TrailerPrefix.
func trailerKey(h http.Header, k string) (string, bool) {
	if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
		return k[len(http.TrailerPrefix):], true
	}
	for _, v := range h["Trailer"] {
		for _, t := range bytes.Split([]byte(v), []byte(",")) {
			if http.CanonicalHeaderKey(string(bytes.TrimSpace(t))) == k {
				return k, true
			}
		}
	}
	return "", false
}

// drainFIN reads the peer's FIN of a request without a body, when it is already there, so that
// closing the stream needs no STOP_SENDING.
func (w *ResponseWriter) drainFIN() {
	if w.req.Has(api.FlagBody) || w.req.Has(api.FlagUpgrade) {
		return
	}
	_ = w.sc.SetReadDeadline(time.Now())
	var one [1]byte
	_, _ = w.sc.Read(one[:])
}

// Abort resets the stream: the response cannot be completed (the service failed mid-body).
func (w *ResponseWriter) Abort() { w.sc.Abort(quic.StreamCodeInternal) }

// Upgrade sends a 101 head with the writer's headers and returns the stream as a raw
// connection. Only for requests with FlagUpgrade.
func (w *ResponseWriter) Upgrade() (io.ReadWriteCloser, error) {
	if !w.req.Has(api.FlagUpgrade) {
		return nil, errors.New("httpstream: upgrade of a request that did not ask for one")
	}
	if w.sent || w.upgrade != nil {
		return nil, errors.New("httpstream: response already sent")
	}
	w.status, w.sent = http.StatusSwitchingProtocols, true
	if _, err := w.writeRaw(w.head(http.StatusSwitchingProtocols, -1)); err != nil || w.headErr != nil {
		if err == nil {
			err = w.headErr
		}
		return nil, err
	}
	w.upgrade = w.sc
	return &upgradedStream{sc: w.sc}, nil
}

// Hijack gives httputil.ReverseProxy the stream for an upgrade. The HTTP/1.1 response head the
// proxy writes first is not passed on as text: it becomes the response frame (status and the
// writer's headers), and what follows it is raw upgraded bytes.
func (w *ResponseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !w.req.Has(api.FlagUpgrade) {
		return nil, nil, http.ErrNotSupported
	}
	if w.sent || w.upgrade != nil {
		return nil, nil, errors.New("httpstream: response already sent")
	}
	c := &hijackedConn{StreamConn: w.sc, w: w}
	w.upgrade = c
	w.sent = true
	return c, bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c)), nil
}

// hijackedConn swallows the HTTP/1.1 response head written to it and sends a response frame
// in its place.
type hijackedConn struct {
	*quic.StreamConn
	w    *ResponseWriter
	head []byte // the text head so far, until its end is seen
	done bool
}

// maxHijackHead bounds the text head a handler may write on a hijacked stream.
const maxHijackHead = api.MaxHeadSize

func (c *hijackedConn) Write(p []byte) (int, error) {
	if c.done {
		return c.StreamConn.Write(p)
	}
	c.head = append(c.head, p...)
	end := bytes.Index(c.head, []byte("\r\n\r\n"))
	if end < 0 {
		if len(c.head) > maxHijackHead {
			return 0, errors.New("httpstream: response head on hijacked stream too large")
		}
		return len(p), nil
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(c.head[:end+4])), nil)
	if err != nil {
		return 0, err
	}
	c.done = true
	w := c.w
	w.status = resp.StatusCode
	w.header = resp.Header
	rest := c.head[end+4:]
	c.head = nil
	out := w.head(resp.StatusCode, -1)
	if w.headErr == nil {
		out = append(out, rest...)
	}
	if _, err := c.StreamConn.Write(out); err != nil {
		return 0, err
	}
	if w.headErr != nil {
		return 0, w.headErr // the handler stops: its connection ends with the error frame
	}
	return len(p), nil
}

// upgradedStream is the raw stream after a 101; Close sends FIN and ends reading.
type upgradedStream struct{ sc *quic.StreamConn }

func (u *upgradedStream) Read(p []byte) (int, error)  { return u.sc.Read(p) }
func (u *upgradedStream) Write(p []byte) (int, error) { return u.sc.Write(p) }
func (u *upgradedStream) CloseWrite() error           { return u.sc.CloseWrite() }
func (u *upgradedStream) Close() error                { return u.sc.Close() }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// WriteError answers with err as a typed qkas error. On a stream whose head was not sent yet
// it is an Error frame, which kasd turns into its HTTP error (only kasd sets Qkas-Error on a
// response); anywhere else it is api.WriteHTTPError. w may wrap a *ResponseWriter (Unwrap).
func WriteError(w http.ResponseWriter, err error) {
	if sw := unwrapWriter(w); sw != nil {
		if sw.ended {
			return // an error frame went already (a head over the limits); Finish ends with FIN
		}
		if !sw.sent && sw.upgrade == nil {
			sw.sent, sw.ended = true, true
			sw.releaseBuf()
			sw.status = api.CodeOf(err).HTTPStatus()
			e := &api.Error{Code: api.CodeOf(err), Message: err.Error(), RetryAfter: retryAfter(err)}
			var ae *api.Error
			if errors.As(err, &ae) {
				e.Message = ae.Message
			}
			sw.writeNow(api.AppendFrame(nil, e))
			if sw.err == nil {
				sw.err = errEnded // the handler's next writes fail: nothing follows the frame
			}
			return
		}
		if sw.sent {
			// Too late for an answer: the response must not look complete. A service's
			// failure says so (StreamCodeServiceFailed), so that the peer does not blame the
			// agent.
			code := quic.StreamCodeInternal
			if api.CodeOf(err) == api.CodeServiceUnavailable {
				code = quic.StreamCodeServiceFailed
			}
			sw.sc.Abort(code)
			return
		}
	}
	api.WriteHTTPError(w, err)
}

func retryAfter(err error) time.Duration {
	var e *api.Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

func unwrapWriter(w http.ResponseWriter) *ResponseWriter {
	for {
		switch x := w.(type) {
		case *ResponseWriter:
			return x
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return nil
		}
	}
}

// streamServer stands for net/http's server in the contexts of stream requests.
var streamServer = &http.Server{}

// Recover is deferred by whoever calls a handler with a ResponseWriter: a handler that panics
// with http.ErrAbortHandler (a response it could not complete) gets the stream reset, never
// ended as if complete. Other panics are passed on. A response an error frame already ended
// (a head over the limits: the handler's next write failed, and httputil.ReverseProxy aborts
// on that) is not reset: the reset could discard the frame, and Finish ends it with FIN.
func (w *ResponseWriter) Recover() {
	if v := recover(); v != nil {
		if v != http.ErrAbortHandler {
			panic(v)
		}
		if w.ended {
			return
		}
		w.err = http.ErrAbortHandler
		w.Abort()
	}
}
