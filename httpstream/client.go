package httpstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// Options tune one RoundTrip. The zero value works: no header timeout, bodies written by a
// plain goroutine.
type Options struct {
	// Prefix is written before the Request frame (a Forward frame on peer streams).
	Prefix []byte
	// ResponseHeaderTimeout bounds the wait for the response header; 0 means none.
	ResponseHeaderTimeout time.Duration
	// HoldBody delays the request body until the first Result arrives, so that a refusal leaves
	// the body unread and the request can be retried elsewhere.
	HoldBody bool
	// Go starts the request-body writer goroutine; it returns false if the owner is closing.
	// Default: the go statement (the goroutine then ends when the stream or the body ends).
	Go func(func()) bool
	// Done is called once when the exchange ends: clean says the response was read to its end;
	// sent and recv count body bytes.
	Done func(clean bool, sent, recv int64)
	// KeepSendOpen keeps the send side open after a request without a body until the response
	// has been read, for a peer that does not know api.MetaRequestFIN. By default such a
	// request is followed at once by FIN, in the same packet, so that the stream needs no
	// STOP_SENDING and no second FIN/RESET_STREAM packet at its end.
	KeepSendOpen bool
}

// streamMeta returns meta with the keys that describe this stream. It never modifies meta.
func streamMeta(meta []api.KV, late, fin bool) []api.KV {
	var add []api.KV
	switch {
	case late && fin:
		add = metaLateFIN
	case late:
		add = metaLate
	case fin:
		add = metaFIN
	default:
		return meta
	}
	if len(meta) == 0 {
		return add // shared, read-only
	}
	return append(meta[:len(meta):len(meta)], add...)
}

var (
	metaLateFIN = []api.KV{{Key: api.MetaLateResult, Value: "1"}, {Key: api.MetaRequestFIN, Value: "1"}}
	metaLate    = metaLateFIN[:1:1]
	metaFIN     = metaLateFIN[1:2:2]
)

// RefusedError is returned when the peer answered the Request frame with a refusal. BodyUnread
// is true when no byte of the request body was consumed, so the request may be retried.
type RefusedError struct {
	Err        *api.Error
	BodyUnread bool
}

func (e *RefusedError) Error() string { return e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }

// RoundTrip sends frame and req on sc and returns the response. req.Body, if any, is closed.
// Errors are *api.Error (or *RefusedError for a Result refusal): deadline_exceeded for the
// header timeout and the request deadline, agent_failed for a broken or reset stream.
func RoundTrip(ctx context.Context, sc *quic.StreamConn, frame *api.Request, req *http.Request, opts *Options) (*http.Response, error) {
	if opts == nil {
		opts = &Options{}
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	x := &exchange{sc: sc, ctx: ctx, opts: opts}
	x.stopCancel = context.AfterFunc(ctx, func() { sc.Abort(quic.StreamCodeCanceled) })
	var headerTimer *time.Timer
	if opts.ResponseHeaderTimeout > 0 {
		headerTimer = time.AfterFunc(opts.ResponseHeaderTimeout, func() {
			x.timedOut.Store(true)
			sc.Abort(quic.StreamCodeCanceled)
		})
		defer headerTimer.Stop()
	}

	upgrade := IsUpgrade(req)
	out := *req // shallow copy: a RoundTripper must not modify the request
	// One request per stream: the server closes the stream after the response. An upgrade keeps
	// the stream for the upgraded protocol instead.
	out.Close = !upgrade
	// The Result may ride with the response unless we wait for it before sending the body.
	late := !(hasBody && opts.HoldBody)
	fin := !hasBody && !upgrade && !opts.KeepSendOpen
	f := *frame // the caller's frame is reused for retries: never modify it
	f.Meta = streamMeta(frame.Meta, late, fin)
	w := &streamWriter{sc: sc}
	w.buf = api.AppendFrame(append(getBuf(), opts.Prefix...), &f)
	var gate chan struct{}
	if !hasBody {
		out.Body = nil
		err := out.Write(w)
		if err == nil {
			err = w.Flush()
		}
		if err == nil && fin {
			// An error here means the peer has stopped reading already (it answered, or
			// refused): what it sent back is still to be read, so it is not ours to report.
			_ = sc.CloseWrite()
		}
		putBuf(w.buf)
		if err != nil {
			return nil, x.fail(err)
		}
	} else {
		body := &flushingBody{rc: req.Body, w: w, n: &x.sent}
		if opts.HoldBody {
			gate = make(chan struct{})
			body.gate = gate
			body.ctx = ctx
		}
		out.Body = body
		write := func() {
			err := out.Write(w)
			if err == nil {
				err = w.Flush()
			}
			if err != nil {
				// Reset only what we send: the peer may have stopped reading because it
				// answered already (a refusal before the body, an early response), and that
				// answer must still be read. The reader ends the rest.
				sc.CancelWrite(quic.StreamCodeCanceled)
			}
		}
		start := opts.Go
		if start == nil {
			start = func(f func()) bool { go f(); return true }
		}
		if !start(write) {
			req.Body.Close()
			return nil, x.fail(api.Errorf(api.CodeShuttingDown, "closing"))
		}
	}

	br := bufio.NewReaderSize(sc, 4096)
	m, err := api.ReadExpect(br, api.TypeResult)
	if err != nil {
		return nil, x.fail(err)
	}
	if err := m.(*api.Result).Err(); err != nil {
		x.finish(false)
		return nil, &RefusedError{Err: err.(*api.Error), BodyUnread: !hasBody || (gate != nil && x.sent.Load() == 0)}
	}
	if gate != nil {
		close(gate)
	}
	resp, err := readResponse(br, req)
	if err != nil {
		return nil, x.fail(err)
	}
	if headerTimer != nil {
		headerTimer.Stop()
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgradedBody{br: br, x: x}
		return resp, nil
	}
	resp.Body = &responseBody{rc: resp.Body, x: x}
	return resp, nil
}

// readResponse reads the final response, skipping informational (1xx) ones other than 101.
func readResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
	}
}

// exchange is one request on one stream; finish ends it exactly once.
type exchange struct {
	sc   *quic.StreamConn
	ctx  context.Context
	opts *Options

	timedOut   atomic.Bool
	stopCancel func() bool
	finished   atomic.Bool
	sent, recv atomic.Int64
}

// fail ends the exchange with err mapped to a typed error.
func (x *exchange) fail(err error) error {
	x.finish(false)
	switch {
	case x.timedOut.Load():
		return api.Errorf(api.CodeDeadlineExceeded, "no response header within %s", x.opts.ResponseHeaderTimeout)
	case errors.Is(x.ctx.Err(), context.DeadlineExceeded):
		return api.Errorf(api.CodeDeadlineExceeded, "request deadline exceeded")
	case x.ctx.Err() != nil:
		return &api.Error{Code: api.CodeAgentFailed, Message: "request canceled", Err: x.ctx.Err()}
	}
	return StreamError(err)
}

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
	if errors.As(err, &se) {
		return &api.Error{Code: api.CodeAgentFailed, Message: "the peer reset the stream", Err: err}
	}
	return &api.Error{Code: api.CodeAgentFailed, Message: "connection failed: " + err.Error(), Err: err}
}

// responseBody ends the exchange when read to EOF or closed.
type responseBody struct {
	rc io.ReadCloser
	x  *exchange
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
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

// upgradedBody is the far side of an upgraded (101) connection, as ReverseProxy expects: an
// io.ReadWriteCloser over the stream.
type upgradedBody struct {
	br *bufio.Reader
	x  *exchange
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	n, err := b.br.Read(p)
	b.x.recv.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	n, err := b.x.sc.Write(p)
	b.x.sent.Add(int64(n))
	return n, err
}

func (b *upgradedBody) Close() error {
	b.x.finish(true)
	return nil
}

// IsUpgrade reports whether r asks for a protocol upgrade (WebSocket, SPDY).
func IsUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return r.Header.Get("Upgrade") != ""
			}
		}
	}
	return false
}

// streamWriter buffers the small writes net/http makes for the request line and headers so that
// a request without a body leaves in one stream write; large writes go straight to the stream.
type streamWriter struct {
	sc  *quic.StreamConn
	buf []byte
}

const streamWriterMax = 16 << 10

func (w *streamWriter) Write(p []byte) (int, error) {
	if len(w.buf)+len(p) <= streamWriterMax {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.Flush(); err != nil {
		return 0, err
	}
	return w.sc.Write(p)
}

// WriteByte makes streamWriter an io.ByteWriter, so (*http.Request).Write does not add its own
// bufio.Writer.
func (w *streamWriter) WriteByte(c byte) error {
	_, err := w.Write([]byte{c})
	return err
}

func (w *streamWriter) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.sc.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}

// flushingBody is the request body as (*http.Request).Write reads it: before each read it flushes
// what was written so far, so the header and every body chunk reach the peer without waiting for
// a buffer to fill. With a gate, the first read also waits for the Result.
type flushingBody struct {
	rc   io.ReadCloser
	w    *streamWriter
	n    *atomic.Int64
	gate chan struct{}
	ctx  context.Context
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if err := b.w.Flush(); err != nil {
		return 0, err
	}
	if b.gate != nil {
		select {
		case <-b.gate:
			b.gate = nil
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		case <-b.w.sc.Context().Done():
			return 0, context.Cause(b.w.sc.Context())
		}
	}
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// Close closes the caller's body only if this attempt was allowed to read it: a refused attempt
// (the gate never opened) leaves the body untouched for the retry on the next holder, and the
// caller closes it in the end. Close is called by the writer goroutine only, after its last Read.
func (b *flushingBody) Close() error {
	if b.gate != nil {
		return nil
	}
	return b.rc.Close()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() []byte { return (*bufPool.Get().(*[]byte))[:0] }

func putBuf(b []byte) {
	if cap(b) <= 64<<10 {
		bufPool.Put(&b)
	}
}
