package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/qkas/qkas/internal/rawio"
)

// Client is an HTTP/1.1 client to one service: a pool of keep-alive connections used by the
// calling goroutine only (see the package documentation). It is safe for concurrent use.
type Client struct {
	addr        string      // host:port to dial
	tls         *tls.Config // nil for http
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	dialTimeout time.Duration // dial and TLS handshake
	maxIdle     int
	idleTimeout time.Duration
	maxHead     int64 // response head limit, bytes

	mu     sync.Mutex // guards the fields below
	idle   []*upConn  // most recently used last
	closed bool       // set by Close: no connection goes back to idle
	// reaper closes the pooled connections idle for idleTimeout (reap); set while the pool
	// has any. Without it a burst's connections stayed open until the next request.
	reaper *time.Timer
}

// upConn is one connection to the service.
type upConn struct {
	nc       net.Conn
	lr       *limitReader // under br: bounds what a response head may take
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	// emptyLast: the last response had no body by its framing (an answer to HEAD, a 204, a
	// 304, Content-Length: 0). A service that sends a body anyway, a common bug, may send it
	// after the head, after the connection went back to the pool: its next reuse peeks
	// (alive) even when recentlyUsed would skip it.
	emptyLast bool
	// w is the body writer of the exchange in progress, nil for a request without a body
	// (here rather than in upBody, which the body-less path allocates per request).
	w *bodyWriter
}

// limitReader fails once left reaches zero; left is set before a head and lifted after it.
type limitReader struct {
	r    io.Reader
	left int64
	n    int64 // bytes read since the last reset
}

const noLimit = int64(1<<63 - 1)

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, ErrResponseHeadTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	l.n += int64(n)
	return n, err
}

// Options configure a Client. The zero value is usable.
type Options struct {
	// TLS is the client TLS configuration for an https URL. Default: the system roots, TLS 1.2
	// or later. It is cloned; NextProtos becomes http/1.1 only (this client speaks nothing else)
	// and an empty ServerName becomes the URL's host (name or IP address), which the server's
	// certificate is verified against unless InsecureSkipVerify is set, as http.Transport does.
	TLS *tls.Config
	// Dial opens the TCP connection. Default: a net.Dialer with a 30s keep-alive period.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds a dial and its TLS handshake. Default 5s.
	DialTimeout time.Duration
	// MaxIdle is the number of idle connections kept for reuse. Default 256.
	MaxIdle int
	// MaxHead limits a response head (status line and header fields), bytes. Default 1 MiB.
	MaxHead int64
	// IdleTimeout: an idle connection older than this is closed instead of reused. Default 90s.
	IdleTimeout time.Duration
}

// New returns a Client for the service at u (scheme http or https; its host and port are
// dialled, its path is ignored: requests carry their own URL).
func New(u *url.URL, o Options) *Client {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.MaxIdle <= 0 {
		o.MaxIdle = 256
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 90 * time.Second
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	up := &Client{
		addr:        net.JoinHostPort(host, port),
		dial:        o.Dial,
		dialTimeout: o.DialTimeout,
		maxIdle:     o.MaxIdle,
		idleTimeout: o.IdleTimeout,
		maxHead:     o.MaxHead,
	}
	if u.Scheme == "https" {
		if o.TLS == nil {
			up.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		} else {
			up.tls = o.TLS.Clone()
		}
		up.tls.NextProtos = []string{"http/1.1"}
		if up.tls.ServerName == "" {
			up.tls.ServerName = host
		}
	}
	return up
}

// ErrResponseHeadTooLarge: the service's response head exceeds the limit.
var ErrResponseHeadTooLarge = errors.New("response head too large")

// ErrTooManyInformational: the service sent more interim (1xx) responses than MaxInformational
// before its final one.
var ErrTooManyInformational = fmt.Errorf("more than %d interim (1xx) responses", MaxInformational)

// ErrResponseTrailersTooLarge: the trailer section of the service's chunked response does not
// fit the connection's read buffer (MaxTrailerBytes); net/http, which parses it, reads no
// further ("suspiciously long trailer after chunked body").
var ErrResponseTrailersTooLarge = fmt.Errorf("response trailers over %d bytes", MaxTrailerBytes)

// MaxTrailerBytes bounds a chunked response's trailer section: the size of the connection's
// read buffer, which net/http's chunked reader looks ahead in for the trailers' end.
const MaxTrailerBytes = readBufferSize

// readBufferSize is the size of a connection's read buffer.
const readBufferSize = 32 << 10

// RoundTrip sends req and returns the response; its body must be read to EOF or closed. A 101
// response's body is an io.ReadWriteCloser over the connection. ctx ending aborts the exchange.
func (u *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// Only a request without a body that may be replayed is sent again after a reused
	// connection failed before any response byte: a service may have acted on a POST and then
	// closed the connection without an answer (a handler that panicked, a crash). Any other
	// request gets the liveness peek before a reused connection instead (as net/http's
	// Transport: GET, HEAD, OPTIONS, TRACE, or an Idempotency-Key).
	retry := (req.Body == nil || req.Body == http.NoBody) && replayable(req)
	for attempt := 0; ; attempt++ {
		// A retry takes a pooled connection only after the liveness peek: the next one in the
		// pool may have been closed by the service as well (its idle timeout counts from when
		// it wrote a response, which a slow client drained seconds later), and unpeeked it
		// failed the request too.
		c, reused, err := u.get(ctx, !retry || attempt > 0)
		if err != nil {
			return nil, err
		}
		resp, err := u.exchange(ctx, c, req)
		if err == nil {
			return resp, nil
		}
		_ = c.nc.Close()
		var nothing *nothingReadError
		if reused && attempt < maxReuseRetries && errors.As(err, &nothing) && retry && ctx.Err() == nil {
			continue // the service closed the idle connection as we reused it
		}
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, &publicError{err}
	}
}

// maxReuseRetries bounds how often a replayable request is sent again after a reused connection
// failed before any response byte (each retry on a peeked or new connection).
const maxReuseRetries = 3

// replayable reports whether req may be sent twice: its method is idempotent by definition, or
// the client made it so with an Idempotency-Key (net/http's rule).
func replayable(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// publicError is a failure to reach a service whose text (PublicCause) a client may see; the
// full error, with addresses, is its Unwrap.
type publicError struct{ err error }

func (e *publicError) Error() string { return PublicCause(e.err) }
func (e *publicError) Unwrap() error { return e.err }

// PublicCause says why a request to a service inside the cluster failed, in words a client may
// see: the kind of failure, never the addresses, host names and certificate details that Go's
// dial, resolver and TLS errors carry (a client outside must not learn the cluster's
// addresses). The full error belongs in the agent's log, under the request id.
func PublicCause(err error) string {
	var (
		dnsErr    *net.DNSError
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		certErr   x509.CertificateInvalidError
		verifyErr *tls.CertificateVerificationError
		recordErr tls.RecordHeaderError
		alertErr  tls.AlertError
		netErr    net.Error
	)
	switch {
	case errors.Is(err, ErrResponseHeadTooLarge):
		return "response head too large"
	case errors.Is(err, ErrTooManyInformational):
		return ErrTooManyInformational.Error()
	case errors.Is(err, ErrResponseTrailersTooLarge):
		return ErrResponseTrailersTooLarge.Error()
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to host"
	case errors.As(err, &dnsErr):
		return "host name not resolved"
	case errors.As(err, &unknownCA):
		return "TLS certificate not trusted (unknown authority)"
	case errors.As(err, &hostErr):
		return "TLS certificate not valid for the address"
	case errors.As(err, &certErr):
		return "TLS certificate invalid"
	case errors.As(err, &verifyErr):
		return "TLS certificate not verified"
	case errors.As(err, &recordErr), errors.As(err, &alertErr):
		return "TLS handshake failed"
	case errors.As(err, &netErr) && netErr.Timeout(), errors.Is(err, syscall.ETIMEDOUT):
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a response"
	}
	var nothing *nothingReadError
	if errors.As(err, &nothing) {
		return "connection failed before a response"
	}
	return "request failed"
}

// nothingReadError: the exchange failed before any byte of the response arrived.
type nothingReadError struct{ err error }

func (e *nothingReadError) Error() string { return e.err.Error() }
func (e *nothingReadError) Unwrap() error { return e.err }

func (u *Client) exchange(ctx context.Context, c *upConn, req *http.Request) (*http.Response, error) {
	// The context (the stream's end, the request's deadline) interrupts reads and writes.
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	if req.Body != nil && req.Body != http.NoBody {
		return u.exchangeBody(ctx, c, req, stop)
	}
	var werr error
	if !writeHead(c.bw, req) {
		werr = req.Write(c.bw)
	}
	if werr == nil {
		werr = c.bw.Flush()
	}
	// Even after a failed write, a response may be there (a service that answered early and
	// closed): read it.
	c.lr.n = 0
	c.lr.left = u.headLimit() + int64(c.br.Size())
	resp, err := readFinal(c.br, req)
	c.lr.left = noLimit
	if err != nil {
		stop()
		return nil, u.exchangeError(ctx, c, err, werr)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgradedConn{Conn: c.nc, r: c.br, stop: stop}
		return resp, nil
	}
	c.emptyLast = resp.Body == http.NoBody
	resp.Body = &upBody{rc: resp.Body, u: u, c: c, stop: stop, reuse: werr == nil && !resp.Close && !req.Close}
	return resp, nil
}

// exchangeBody is exchange for a request with a body: a bodyWriter goroutine writes the
// request while this one reads the response, so that a service may answer before it has read
// the whole body (a 413 or 401 to a large upload) or answer as it reads (full duplex). The
// writer is joined before exchangeBody returns an error or a 101, and otherwise by the
// response body's end (upBody.finish).
func (u *Client) exchangeBody(ctx context.Context, c *upConn, req *http.Request, stop func() bool) (*http.Response, error) {
	w := &bodyWriter{c: c, body: req.Body, done: make(chan struct{})}
	go w.run(req)
	c.lr.n = 0
	c.lr.left = u.headLimit() + int64(c.br.Size())
	resp, err := readFinal(c.br, req)
	c.lr.left = noLimit
	if err != nil {
		stop()
		w.stop()
		return nil, u.exchangeError(ctx, c, err, w.err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection becomes the caller's, who writes to it: the request body must be
		// written first (as it was before the response was read, before the writer goroutine).
		<-w.done
		resp.Body = &upgradedConn{Conn: c.nc, r: c.br, stop: stop}
		return resp, nil
	}
	c.w = w
	c.emptyLast = resp.Body == http.NoBody
	resp.Body = &upBody{rc: resp.Body, u: u, c: c, stop: stop, reuse: !resp.Close && !req.Close}
	return resp, nil
}

// exchangeError is the error of an exchange whose response head could not be read (err) after
// the request was written with werr: the context's end, the head limit, else the write's error
// if it failed (the read's is then only its consequence), marked when no response byte came.
func (u *Client) exchangeError(ctx context.Context, c *upConn, err, werr error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, ErrResponseHeadTooLarge) {
		return fmt.Errorf("%w (over %d bytes)", ErrResponseHeadTooLarge, u.headLimit())
	}
	if werr != nil {
		err = werr
	}
	if c.lr.n == 0 {
		return &nothingReadError{err}
	}
	return err
}

// bodyWriter writes a request with a body (Request.Write: head, body, chunked framing and
// trailers) in a goroutine of the exchange, as http.Transport's writeLoop does, while the
// exchange reads the response. The exchange always waits for done. Request.Write encodes the
// head and the body's framing together, so the head is written here too, not by the caller.
type bodyWriter struct {
	c    *upConn
	body io.Closer
	err  error // the write's error; read only after done is closed
	done chan struct{}
}

// stop ends a writer that has not finished and waits for it: closing the connection ends a
// write to it, closing the request body (which a RoundTripper may do from another goroutine)
// ends a read of a body whose Close interrupts its Read, as agentd's does (httpstream.NewRequest:
// a client that waits for an early answer before it sends more would otherwise hold it). A
// read of the body that Close does not interrupt is waited for: until then the body is not
// written, as before the writer goroutine, when that read blocked RoundTrip itself.
func (w *bodyWriter) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.c.nc.Close()
	_ = w.body.Close()
	<-w.done
}

func (w *bodyWriter) run(req *http.Request) {
	defer close(w.done)
	err := req.Write(w.c.bw)
	if err == nil {
		err = w.c.bw.Flush()
	}
	w.err = err
	var op *net.OpError
	if err != nil && !(errors.As(err, &op) && op.Op == "write") {
		// Not the connection failing (the request body's read failed, or it was shorter than
		// its Content-Length): the service would wait for the rest of a body that will not
		// come, so the connection is closed, which also ends the response's read. A failed
		// write to the connection leaves it open: a response the service sent before it
		// stopped reading (and closed) is still there to be read.
		_ = w.c.nc.Close()
	}
}

// maxWriteWait is how long a response's end waits for its request's body writer before closing
// the connection (as http.Transport's maxWriteWaitBeforeConnReuse): a service that read the
// whole body before it answered leaves the writer only its last steps.
const maxWriteWait = 50 * time.Millisecond

// wait reports whether the body was written whole, waiting at most maxWriteWait (none for a
// response that did not end at EOF).
func (w *bodyWriter) wait(eof bool) bool {
	select {
	case <-w.done:
		return w.err == nil
	default:
	}
	if !eof {
		return false
	}
	t := time.NewTimer(maxWriteWait)
	defer t.Stop()
	select {
	case <-w.done:
		return w.err == nil
	case <-t.C:
		return false
	}
}

func (u *Client) headLimit() int64 {
	if u.maxHead > 0 {
		return u.maxHead
	}
	return 1 << 20
}

// readFinal reads responses until a final one (or 101), skipping at most MaxInformational 1xx.
func readFinal(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	var got1xx func(int, textproto.MIMEHeader) error
	if trace := httptrace.ContextClientTrace(req.Context()); trace != nil {
		got1xx = trace.Got1xxResponse
	}
	for range MaxInformational + 1 {
		conn := peekConnection(br)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			if resp.Close && conn != nil && resp.Header["Connection"] == nil {
				// net/http deletes a Connection field that says close, and with it the names of
				// the other hop-by-hop fields it lists: put it back, so that the hop that
				// passes the response on drops them (api/SPEC.md).
				resp.Header["Connection"] = conn
			}
			return resp, nil
		}
		if got1xx != nil {
			// As net/http's Transport: the caller passes interim responses on (103 Early Hints).
			if err := got1xx(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
		}
	}
	return nil, ErrTooManyInformational
}

// peekConnection returns the values of the Connection fields of the response head buffered in
// br (waiting for its first bytes), nil for none. It sees only the part of the head that is
// buffered: a head over br's size (32 KiB) or split across reads may hide its Connection field,
// and that head's listed fields then pass if the field also said close.
func peekConnection(br *bufio.Reader) []string {
	if _, err := br.Peek(1); err != nil {
		return nil // ReadResponse reports it
	}
	head, _ := br.Peek(br.Buffered())
	var out []string
	for len(head) > 0 {
		line := head
		if i := bytes.IndexByte(head, '\n'); i >= 0 {
			line, head = head[:i], head[i+1:]
		} else {
			head = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // the head's end
		}
		if len(line) > 11 && line[0]|0x20 == 'c' && line[10] == ':' && bytes.EqualFold(line[:10], []byte("connection")) {
			out = append(out, string(bytes.TrimSpace(line[11:])))
		}
	}
	return out
}

// MaxInformational bounds the interim (1xx) responses read before the final one, as
// api.MaxInformational bounds them on a stream; each is handed to the request context's
// httptrace.ClientTrace.Got1xxResponse, when one is set.
const MaxInformational = 8

// recentlyUsed: an idle connection whose last response ended less than this ago is reused
// without the liveness peek (a system call per request) for a request without a body: if the
// service closed it in that time, the request fails before any response byte and is retried
// on a connection that passes the peek, or a new one (RoundTrip). A request with a body, which is not retried, is always
// sent on a connection that passed the peek.
const recentlyUsed = time.Second

// get returns a usable idle connection or dials a new one.
func (u *Client) get(ctx context.Context, withBody bool) (*upConn, bool, error) {
	now := time.Now()
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			break
		}
		c := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		if idle := now.Sub(c.lastUsed); idle < u.idleTimeout && (idle < recentlyUsed && !withBody && !c.emptyLast || alive(c)) {
			return c, true, nil
		}
		_ = c.nc.Close()
	}
	dctx, cancel := context.WithTimeout(ctx, u.dialTimeout)
	defer cancel()
	nc, err := u.dial(dctx, "tcp", u.addr)
	if err != nil {
		return nil, false, err
	}
	nc = rawio.Conn(nc) // raw reads and writes on a TCP connection: internal/rawio
	if u.tls != nil {
		tc := tls.Client(nc, u.tls)
		if err := tc.HandshakeContext(dctx); err != nil {
			_ = nc.Close()
			return nil, false, err
		}
		nc = tc
	}
	lr := &limitReader{r: nc, left: noLimit}
	return &upConn{nc: nc, lr: lr, br: bufio.NewReaderSize(lr, readBufferSize), bw: bufio.NewWriterSize(nc, 32<<10)}, false, nil
}

// alive reports whether an idle connection can be reused: nothing buffered, and a non-blocking
// peek at the socket finds neither data nor EOF.
func alive(c *upConn) bool {
	if c.br.Buffered() > 0 {
		return false
	}
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	_ = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK)
		return true // never wait
	})
	return ok
}

// put returns a connection whose exchange completed to the pool.
func (u *Client) put(c *upConn) {
	c.lastUsed = time.Now()
	u.mu.Lock()
	if !u.closed && len(u.idle) < u.maxIdle {
		u.idle = append(u.idle, c)
		c = nil
		if u.reaper == nil && u.idleTimeout > 0 {
			u.reaper = time.AfterFunc(u.idleTimeout, u.reap)
		}
	}
	u.mu.Unlock()
	if c != nil {
		_ = c.nc.Close()
	}
}

// CloseIdleConnections closes the pooled connections.
func (u *Client) CloseIdleConnections() {
	u.mu.Lock()
	idle := u.idle
	u.idle = nil
	if u.reaper != nil {
		u.reaper.Stop()
		u.reaper = nil
	}
	u.mu.Unlock()
	for _, c := range idle {
		_ = c.nc.Close()
	}
}

// reap closes the pooled connections idle for idleTimeout (the oldest first: the pool is in
// order of last use) and runs again when the next one is due, while any is left.
func (u *Client) reap() {
	now := time.Now()
	u.mu.Lock()
	n := 0
	for n < len(u.idle) && now.Sub(u.idle[n].lastUsed) >= u.idleTimeout {
		n++
	}
	expired := slices.Clone(u.idle[:n])
	u.idle = slices.Delete(u.idle, 0, n)
	if len(u.idle) > 0 && u.reaper != nil {
		u.reaper.Reset(u.idle[0].lastUsed.Add(u.idleTimeout).Sub(now))
	} else {
		u.reaper = nil
	}
	u.mu.Unlock()
	for _, c := range expired {
		_ = c.nc.Close()
	}
}

// Close closes the idle connections and, as each exchange in flight ends, its connection:
// for a Client that is being replaced (a new CA bundle) and must not keep connections. It
// does not cut requests in flight; a request made after Close still works, on a connection
// closed after it.
func (u *Client) Close() {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	u.CloseIdleConnections()
}

// upBody returns its connection to the pool once read to EOF, or closes it. For a request with
// a body it also ends the exchange's body writer (c.w): the connection is pooled only if the
// body was written whole, else closed (which stops a writer blocked on it), and the writer is
// waited for.
type upBody struct {
	rc    io.ReadCloser
	u     *Client
	c     *upConn
	stop  func() bool
	reuse bool
	done  bool
}

func (b *upBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
		if err.Error() == errLongTrailer {
			err = fmt.Errorf("%w (%v)", ErrResponseTrailersTooLarge, err)
		}
	}
	return n, err
}

// errLongTrailer is net/http's error for a trailer section longer than the read buffer (it
// exports no variable for it).
const errLongTrailer = "http: suspiciously long trailer after chunked body"

func (b *upBody) Close() error {
	b.finish(false)
	return nil
}

// ReadReady reports whether the service's bytes are already buffered, so that a Read does not
// wait for the service (httpstream.ReadyReader: a stream's head is sent before a Read that
// would wait). Bytes of a chunked body's framing count too: the service is sending.
func (b *upBody) ReadReady() bool {
	// A body that is empty by its framing (HEAD, 204, 304, Content-Length: 0) ends at once:
	// its head must not be flushed alone, then its end in a second write (CopyBody).
	return b.done || b.rc == http.NoBody || b.c.br.Buffered() > 0
}

func (b *upBody) finish(eof bool) {
	if b.done {
		return
	}
	b.done = true
	stopped := b.stop() // false: the context ended and poisoned the deadline
	if w := b.c.w; w != nil {
		b.c.w = nil
		if !w.wait(eof && b.reuse && stopped) {
			w.stop() // the body was not written whole: the connection is closed
			_ = b.c.nc.Close()
			return
		}
	}
	// Bytes already there after the response's end are none of this exchange's (more than
	// its Content-Length, a body on a 204, 304 or HEAD answer, anything after a chunked
	// body's end): read as the next request's response, they would hand one client's answer,
	// or one the service forged, to another, and shift every later one on the connection.
	if eof && b.reuse && stopped && b.c.br.Buffered() == 0 {
		b.u.put(b.c)
		return
	}
	_ = b.c.nc.Close()
}

// upgradedConn is the service's connection after a 101: reads start with what was buffered.
type upgradedConn struct {
	net.Conn
	r    *bufio.Reader
	stop func() bool
}

func (c *upgradedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *upgradedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *upgradedConn) Close() error {
	c.stop()
	return c.Conn.Close()
}
