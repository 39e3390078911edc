package kasd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/internal/tracing"
)

// target is what the API handler resolved for one proxied request.
type target struct {
	agentID   string
	service   string
	requestID string
	prefix    string     // the service's root as the client sees it (rewrite.go)
	acc       access     // the access-log record (accesslog.go)
	dl        *deadlines // Qkas-Timeout / Qkas-Deadline, nil without them (deadline.go)

	stall      *clientStall // --client-stall-timeout (stall.go); nil: not watched
	stallState clientStall  // what stall points to (one allocation per request, not three)
	stallR     stallReader
	stallW     stallWriter
	headW      headWriter // writeResponse's
	observed   bool       // counted in kasd_requests_total by the routed path
}

// headWriter writes the response head (status) with the first write or flush of the body, not
// before: a body that fails before its first byte reached the client (the agent's stream reset,
// already there when its head arrived) is answered with a typed error, not a head that then
// never reaches the client (it saw the connection close, "EOF", while kasd logged a 502).
type headWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *headWriter) writeHead() {
	if !w.wrote {
		w.wrote = true
		w.ResponseWriter.WriteHeader(w.status)
	}
}

func (w *headWriter) Write(p []byte) (int, error) {
	w.writeHead()
	return w.ResponseWriter.Write(p)
}

// FlushError is what http.ResponseController.Flush calls.
func (w *headWriter) FlushError() error {
	w.writeHead()
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the writer's other methods.
func (w *headWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// dropHeaders are client headers that never reach the service: the caller's credentials are for
// kasd, Qkas-Timeout and Qkas-Deadline are kasd's, kasd answers Expect: 100-continue itself,
// and X-Forwarded-* and Forwarded are set by kasd from what it saw, never taken from the
// client; so is X-Request-Id
// (the request's id, which is the client's only when well-formed).
var dropHeaders = []string{"Authorization", HeaderTimeout, HeaderDeadline, "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", HeaderForwardedPrefix, HeaderXRequestID}

func (s *Server) serveProxy(w http.ResponseWriter, r *http.Request, agentID, service, rest string) {
	start := time.Now()
	tgt := s.startRequest(w, r, agentID, service, rest, start)
	defer s.logAccess(r, tgt)
	defer func() {
		if !tgt.observed && tgt.acc.status != 0 {
			// Refused before routing (unauthenticated, forbidden, overloaded, a bad header,
			// too large): counted too, as route "none" (README: every request however it ends).
			s.m.observe("none", tgt.acc.status, time.Since(start))
		}
	}()
	n := s.apiInflight.Add(1)
	defer s.apiInflight.Add(-1)
	if n > int64(s.cfg.MaxInflightRequests) {
		s.m.limitRejections.WithLabelValues("max_inflight_requests").Inc()
		tgt.acc.fail(api.CodeOverloaded)
		s.m.apiErrors.WithLabelValues(api.CodeOverloaded.String()).Inc()
		s.writeProxyError(w, r, tgt, &api.Error{Code: api.CodeOverloaded, RetryAfter: time.Second,
			Message: fmt.Sprintf("kasd is serving its maximum of %d requests (--max-inflight-requests)", s.cfg.MaxInflightRequests)})
		return
	}
	claims, err := s.authenticate(r)
	if err != nil {
		tgt.acc.fail(api.CodeOf(err))
		s.m.apiErrors.WithLabelValues(api.CodeOf(err).String()).Inc()
		s.writeProxyError(w, r, tgt, err)
		return
	}
	tgt.acc.setCaller(claims)
	if !claims.AllowsAgent(agentID) {
		tgt.acc.fail(api.CodeForbidden)
		s.m.apiErrors.WithLabelValues(api.CodeForbidden.String()).Inc()
		s.writeProxyError(w, r, tgt, api.Errorf(api.CodeForbidden, "this token may not reach agent %s", agentID))
		return
	}
	if e := refuseImpersonation(service, r.Header, claims.Impersonate); e != nil { // kubernetes.go
		tgt.acc.fail(e.Code)
		s.m.apiErrors.WithLabelValues(e.Code.String()).Inc()
		s.writeProxyError(w, r, tgt, e)
		return
	}
	f := &api.Request{
		Kind:      api.KindHTTP,
		Service:   service,
		RequestID: tgt.requestID,
		Meta:      requestMeta(claims), // handler.go
	}
	ctx, dl, err := s.requestDeadlines(r) // deadline.go
	if err != nil {
		tgt.acc.fail(api.CodeBadRequest)
		s.m.apiErrors.WithLabelValues(api.CodeBadRequest.String()).Inc()
		s.writeProxyError(w, r, tgt, err)
		return
	}
	defer dl.stop()
	tgt.dl, f.Deadline = dl, dl.agentDeadline()
	// A service's interim responses (103 Early Hints) reach the client as they come, on this
	// goroutine (route and the stream's RoundTrip run on it); at most api.MaxInformational.
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		httpstream.WriteInterim(w, code, http.Header(h))
		return nil
	}})
	s.setHead(f, r, rest)
	s.requestHygiene(f, r, tgt)
	if len(f.Header) > api.MaxHeaderFields {
		// The agent would refuse the head (a 502 blamed on it): the client's fault, said here.
		tgt.acc.fail(api.CodeTooLarge)
		s.m.apiErrors.WithLabelValues(api.CodeTooLarge.String()).Inc()
		s.m.limitRejections.WithLabelValues("request_head_too_large").Inc()
		s.writeProxyError(w, r, tgt, api.Errorf(api.CodeTooLarge, "%d request header fields; at most %d reach an agent", len(f.Header), api.MaxHeaderFields))
		return
	}
	if n := f.PayloadLen() + headReserve; n > api.MaxHeadSize {
		// No stream could carry the head (api.EncodeFrame refuses it): said here, at once,
		// not as a request no holder took until the route timeout.
		tgt.acc.fail(api.CodeTooLarge)
		s.m.apiErrors.WithLabelValues(api.CodeTooLarge.String()).Inc()
		s.m.limitRejections.WithLabelValues("request_head_too_large").Inc()
		s.writeProxyError(w, r, tgt, api.Errorf(api.CodeTooLarge, "the request head (path, query and header fields) is %d bytes encoded; at most %d reach an agent", n-headReserve, api.MaxHeadSize-headReserve))
		return
	}
	// The client's traceparent (if any) is the parent; the head carries this span's on.
	span := s.cfg.Tracer.StartHead("kasd.proxy", tracing.KindServer, &f.Header) // nil Tracer: no cost
	tgt.stall = tgt.stallState.start(w, s, tgt)
	body := httpstream.NewBody(tgt.stall.reader(&tgt.stallR, tgt.countedBody(r)), 0)
	if f.ContentLength == 0 {
		body = nil
	} else {
		// The agent may answer before the upload ends (a full-duplex service, an early 401 or
		// 413): without this, net/http's HTTP/1.1 server, writing the response head, would
		// read and discard the rest of the body under the body writer and close it. (HTTP/2
		// is full duplex already: the call's error says so.)
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	endUpload := s.trackUpload(w, r, body) // server.go: the body ends with the request, and at Close
	lingerUpload := false
	defer func() { endUpload(lingerUpload) }()
	defer tgt.stall.stop() // before endUpload: its linger must not be cut by the limit
	if body != nil && (len(r.Trailer) > 0 || r.ProtoMajor == 1 && r.ContentLength < 0) {
		// Trailers travel at the end of a framed body: declared ones (gRPC-style clients), and
		// any a chunked HTTP/1.1 body ends with, which HTTP allows undeclared (they were
		// dropped). net/http fills r.Trailer at the body's end, creating it for undeclared
		// ones; the body's reader (httpstream) asks for it then.
		body.Trailer = func() http.Header { return requestTrailer(r.Trailer) } // trailers.go
		f.Flags |= api.FlagFramed
	}
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	// The route's own span (holders tried, peer hop) is the parent of the next hop's.
	routeSpan := s.cfg.Tracer.StartHead("kasd.route", tracing.KindClient, &f.Header)
	res, err := s.route(ctx, tgt, f, body)
	dl.headDone()
	if body != nil && !body.AtEOF() && r.ProtoMajor == 1 {
		// An answer while the client still sends — kasd's error (a deadline, a failed agent)
		// or the service's early one (a 403, a 413 before it read the upload): the connection
		// ends after this response, and net/http reads and drops the rest of the upload for a
		// moment first (trackUpload's linger), so that the close does not reset the connection
		// before the client read the answer (curl stops at the reset of its upload: "Send
		// failure"). (Not reused: a connection reused after such a body would read the next
		// request while that read was still going, a panic, golang/go#68560.) A full-duplex
		// service that goes on reading the upload loses nothing: the linger applies only to
		// what is unread when the handler ends. HTTP/2 ends only the stream (trackUpload).
		w.Header().Set("Connection", "close")
		lingerUpload = true
	}
	if routeSpan.Recording() {
		o := tracing.Outcome{Agent: agentID, Service: service, Route: res.route, RequestID: tgt.requestID}
		if err != nil {
			o.Code = api.CodeOf(err).String()
		}
		routeSpan.End(o)
	}
	var status int
	var abort bool
	if err != nil {
		if api.CodeOf(err) == api.CodeDeadlineExceeded && tgt.dl.totalPassed() && tgt.dl.state.Load() != headTimedOut {
			s.countDeadline(tgt.dl) // Qkas-Timeout counts itself when it fires
		}
		status = s.proxyError(w, r, tgt, err)
		// A client that went away gets nothing; but it may only have half-closed its
		// connection (net/http ends the request's context at the read side's EOF), and a
		// handler that returns without a word makes net/http send "200 OK" with an empty
		// body: abort instead, so the connection closes with no response.
		abort = tgt.acc.code == api.CodeClientCanceled
	} else {
		status, abort = s.writeResponse(w, r, tgt, res.resp)
		if !abort && r.ProtoMajor == 2 && body != nil && !body.AtEOF() {
			// An answer while the client still sends, over HTTP/2: the body goes out now,
			// before the handler ends. Left to net/http's end of the handler, it was lost now
			// and then behind the stream's reset (curl --http2, a 20 MB upload answered 403
			// at once: "transfer closed with 5 bytes remaining" in 1–2 of 20, 0 of 120 with
			// the flush).
			_ = http.NewResponseController(w).Flush()
		}
	}
	s.m.observe(res.route, status, time.Since(start))
	tgt.observed = true
	tgt.acc.route, tgt.acc.status = res.route, status
	if span.Recording() {
		o := tracing.Outcome{Agent: agentID, Service: service, Route: res.route, RequestID: tgt.requestID, Status: status}
		if err != nil {
			o.Code = api.CodeOf(err).String()
		}
		span.End(o)
	}
	if abort {
		// The response was cut after its head went out: make sure the client cannot take what
		// it got for a complete response (net/http closes or resets the connection).
		panic(http.ErrAbortHandler)
	}
}

// headReserve is the room a request head leaves under api.MaxHeadSize for what kasd adds to it
// after the size check: trace context (traceparent, 55 bytes) and the body flags.
const headReserve = 256

// setHead fills f's HTTP head from the client's request: the path below the service, the
// client's headers without hop-by-hop ones, dropHeaders and Impersonate-* (impersonation only
// ever comes from the JWT), and X-Forwarded-For/-Host/-Proto as kasd saw the client.
func (s *Server) setHead(f *api.Request, r *http.Request, rest string) {
	f.Method = r.Method
	f.Target = rest
	if r.URL.RawQuery != "" {
		f.Target += "?" + httpstream.TargetQuery(r.URL.RawQuery) // raw UTF-8 or '#' percent-encoded
	}
	f.Host = f.Service
	upgrade := httpstream.IsUpgrade(r)
	kvs := httpstream.HeaderKVs(make([]api.KV, 0, len(r.Header)+5), r.Header, upgrade, dropHeaders...)
	out := kvs[:0]
	for _, kv := range kvs {
		if !strings.HasPrefix(kv.Key, "Impersonate-") {
			out = append(out, kv)
		}
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		out = append(out, api.KV{Key: "X-Forwarded-For", Value: ip})
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	out = append(out, api.KV{Key: "X-Forwarded-Host", Value: r.Host}, api.KV{Key: "X-Forwarded-Proto", Value: proto})
	f.Header = out
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		f.ContentLength = 0
	default:
		f.ContentLength = r.ContentLength // -1 when chunked
	}
	if upgrade {
		f.Flags |= api.FlagUpgrade
	}
}

// proxyError answers a request that got no response, and returns the status it is counted
// with. A client that went away is counted as client_canceled and gets nothing.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, tgt *target, err error) int {
	var re *httpstream.RemoteError
	remote := errors.As(err, &re)
	if remote {
		err = re.Err // the typed answer of the agent or the peer
	}
	e := asAPIError(err, api.CodeAgentFailed)
	if remote {
		e = remoteAnswer(e, err, tgt.agentID)
	}
	switch {
	case tgt.stall.firedRead():
		// Checked first: over HTTP/1.1 the read the limit ended also ended the request's context.
		e = &api.Error{Code: api.CodeClientTimeout, Message: fmt.Sprintf("the client sent no byte of its request body for %v (--client-stall-timeout)", s.cfg.ClientStallTimeout), Err: err}
		if r.ProtoMajor == 1 {
			// The rest of the body is still on its way: the connection is done. Over HTTP/2
			// only the stream ends (the header would make net/http send GOAWAY: every
			// other stream of the connection would have to go elsewhere).
			w.Header().Set("Connection", "close")
		}
	case r.Context().Err() != nil && !errors.Is(r.Context().Err(), context.DeadlineExceeded):
		e = &api.Error{Code: api.CodeClientCanceled, Message: "the client went away", Err: err}
	}
	s.m.apiErrors.WithLabelValues(e.Code.String()).Inc()
	tgt.acc.code = e.Code
	tgt.acc.setCause(fullCause(e))
	s.log.Debug().Str("agent_id", tgt.agentID).Str("request_id", tgt.requestID).Str("code", e.Code.String()).Str("error", e.Message).Msg("proxy error")
	if e.Code == api.CodeClientCanceled {
		return e.Code.HTTPStatus()
	}
	s.writeProxyError(w, r, tgt, e)
	return e.Code.HTTPStatus()
}

// remoteAnswers are the codes an agent or a peer kasd may answer a request with, as agentd
// and kasd send them; the remote's message and Retry-After go to the client with them. Any
// other code from a remote is its failure (agent_failed): an agent must not speak for kasd (a
// 401 unauthenticated telling the client its JWT expired, a 503 overloaded asking it to wait
// an hour), nor add a metric label per code it invents (an independent security review: 3,001
// label values from one agent).
var remoteAnswers = map[api.Code]bool{
	api.CodeAgentNotConnected: true, api.CodeServiceUnknown: true, api.CodeServiceUnavailable: true,
	api.CodeOverloaded: true, api.CodeDeadlineExceeded: true, api.CodeShuttingDown: true,
	api.CodeNotHolder: true, api.CodeBadRequest: true, api.CodeAgentFailed: true,
	api.CodeTooLarge: true, api.CodeForbidden: true, // the kubernetes service's policy
}

// maxRemoteRetryAfter bounds the Retry-After a remote's answer passes on to the client.
const maxRemoteRetryAfter = 30 * time.Second

// remoteAnswer is what the client is told of e, the typed answer of an agent or a peer (err).
// client_canceled and client_timeout are kasd's own records of its client, never an answer:
// from an agent (agentd's request context ended under it) they are a failure of the agent's.
func remoteAnswer(e *api.Error, err error, agentID string) *api.Error {
	if !remoteAnswers[e.Code] {
		return &api.Error{Code: api.CodeAgentFailed, Message: "agent " + agentID + " gave up the request (" + e.Code.String() + "): " + e.Message, Err: err}
	}
	if e.RetryAfter > maxRemoteRetryAfter {
		c := *e
		c.RetryAfter = maxRemoteRetryAfter
		return &c
	}
	return e
}

// writeResponse passes the agent's response to the client: its head (without Qkas-Error, which
// only kasd sets), then its body, flushed per write only when it is a stream (SSE, unknown
// length; its head is flushed before a first byte that is late, see httpstream.CopyBody).
// abort is true when the body broke after the head was written, or the client went away.
func (s *Server) writeResponse(w http.ResponseWriter, r *http.Request, tgt *target, resp *http.Response) (status int, abort bool) {
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// As agentd checks its service's 101 (and httputil.ReverseProxy): a switch to another
		// protocol than the client asked for is no answer to it. Passed on, the client's next
		// pipelined request (its JWT with it) went into the agent's raw bytes (an independent
		// security review, with an agent answering a WebSocket upgrade with h2c).
		if asked, got := r.Header.Get("Upgrade"), resp.Header.Get("Upgrade"); asked == "" || !strings.EqualFold(asked, got) {
			return s.proxyError(w, r, tgt, api.Errorf(api.CodeAgentFailed, "the agent switched protocols to %q; the client asked for %q", got, asked)), false
		}
	}
	h := w.Header()
	for k, vs := range resp.Header {
		// Qkas-Error only kasd sets; Content-Length comes from the frame's content_length
		// (below), never from the header list, which could contradict it.
		if k != api.HeaderError && k != "Content-Length" {
			h[k] = vs
		}
	}
	s.responseHygiene(h, r, tgt)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return s.upgrade(w, tgt, resp)
	}
	if _, ok := h["Content-Type"]; !ok {
		// The service sent none, and the client gets none: net/http would add one it guessed
		// from the body's first bytes, which the nosniff kasd sends says not to do.
		h["Content-Type"] = nil
	}
	if resp.ContentLength >= 0 && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		// For HEAD, the length the GET would have (RFC 9110 §9.3.2), as the service said it.
		// None for 204 (RFC 9110 §8.6) and 304 (the frame cannot tell the 200's length from
		// none): net/http drops it over HTTP/1.1, not over HTTP/2.
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	if s.draining.Load() {
		// As serveAPI does for requests that arrive while draining: a request that arrived
		// before the drain but is answered after it began must not leave its connection
		// looking reusable either. The client's next request on it raced the drain's close (a
		// POST written as the connection closed is lost: 26-138 per kasd SIGTERM with
		// --drain-delay 0 in an independent rolling-restart run).
		h.Set("Connection", "close")
	}
	hw := &tgt.headW
	*hw = headWriter{ResponseWriter: w, status: resp.StatusCode}
	n, err := httpstream.CopyBody(tgt.stall.writer(&tgt.stallW, hw), resp.Body, httpstream.Streaming(resp))
	tgt.acc.out = n
	if err != nil && !hw.wrote && !tgt.stall.stalled() && !errors.Is(err, httpstream.ErrClientWrite) && r.Context().Err() == nil {
		// Nothing of the response has left: the client gets the failure as an answer.
		conn := h["Connection"] // a close asked for this request (a drain, an upload left unread, two framings)
		clear(h)                // the agent's fields are not the error's
		ids := []string{tgt.requestID}
		h[HeaderXRequestID], h[HeaderRequestID] = ids, ids
		if conn != nil {
			h["Connection"] = conn
		}
		code := api.CodeOf(err)
		if code == api.CodeInternal || code == api.CodeProtocol {
			code = api.CodeAgentFailed
		}
		if tgt.dl.totalPassed() {
			s.countDeadline(tgt.dl)
			code = api.CodeDeadlineExceeded
		} else {
			s.countPeerLimit(err)
		}
		return s.proxyError(w, r, tgt, &api.Error{Code: code, Message: "agent " + tgt.agentID + ": the response failed before its first byte: " + errString(err), Err: err}), false
	}
	hw.writeHead()
	switch {
	case err != nil && tgt.stall.stalled():
		// The client stopped reading its response (a write to it ended by the limit: the
		// connection is done), or stopped sending the body the response runs beside: the
		// response is cut, never ended as if complete.
		s.m.apiErrors.WithLabelValues(api.CodeClientTimeout.String()).Inc()
		tgt.acc.code = api.CodeClientTimeout
		return api.CodeClientTimeout.HTTPStatus(), tgt.stall.firedRead()
	case err == nil:
		trailers := false
		for k, vs := range resp.Trailer {
			if trailerAllowed(k) { // trailers.go
				h[http.TrailerPrefix+k] = vs
				trailers = true
			}
		}
		if trailers {
			keepTrailers(w, n)
		}
		return resp.StatusCode, false
	case errors.Is(err, httpstream.ErrClientWrite) || r.Context().Err() != nil:
		// Cut: a client that only half-closed its connection must not see the body end as
		// if complete (a chunked body's last chunk).
		s.m.apiErrors.WithLabelValues(api.CodeClientCanceled.String()).Inc()
		tgt.acc.code = api.CodeClientCanceled
		return api.CodeClientCanceled.HTTPStatus(), true
	default:
		code := api.CodeOf(err)
		if code == api.CodeInternal || code == api.CodeProtocol {
			code = api.CodeAgentFailed
		}
		isDeadline, endClean := s.endAtDeadline(w, tgt, resp) // deadline.go: Qkas-Deadline
		if isDeadline {
			code = api.CodeDeadlineExceeded
		} else if resp.ContentLength < 0 && s.isClosed() {
			// A stream (a watch, SSE, logs -f) still running when kasd closed at the end of
			// its --shutdown-grace ends as the API server ends its watches when it stops:
			// cleanly, with the reason in the trailer, so that the client reconnects (to
			// another replica) knowing why. It was cut mid-chunk, a 200 with "unexpected EOF".
			w.Header().Set(http.TrailerPrefix+api.HeaderError, api.CodeShuttingDown.String())
			code, endClean = api.CodeShuttingDown, true
		}
		if endClean {
			keepTrailers(w, n) // endAtDeadline set Qkas-Error
			s.m.apiErrors.WithLabelValues(code.String()).Inc()
			tgt.acc.code = code
			return code.HTTPStatus(), false
		}
		s.m.apiErrors.WithLabelValues(code.String()).Inc()
		s.countPeerLimit(err)
		tgt.acc.code = code
		tgt.acc.setCause("response body cut: " + errString(err))
		s.log.Debug().Str("agent_id", tgt.agentID).Str("request_id", tgt.requestID).Err(err).Msg("response body cut")
		// What was written may still sit in net/http's buffers (a body that broke in the
		// same packet as its first bytes: no read waited, nothing was flushed), and the abort
		// would discard it with the head: the client saw the connection close with no status
		// at all. Flushed, it sees the head and a body cut short, as from the service itself.
		// Through the stall writer: a client that stopped reading cannot hold this flush.
		_ = http.NewResponseController(tgt.stall.writer(&tgt.stallW, hw)).Flush()
		return code.HTTPStatus(), true
	}
}

// keepTrailers makes the trailers set after a body of written bytes reach the client. net/http
// took its copy of the head at WriteHeader; with nothing written since, it would send that
// head at the handler's end with Content-Length: 0 and no trailers (HTTP/1.1). A flush sends
// it now, chunked, as httputil.ReverseProxy does for a response with trailers. CopyBody has
// flushed the head of a stream whose body was late already; this is for a body that was there
// at once and empty (a "trailers only" answer), one write more for it.
func keepTrailers(w http.ResponseWriter, written int64) {
	if written == 0 {
		_ = http.NewResponseController(w).Flush() // a failure is the client's; the end shows it
	}
}

// upgrade completes a protocol switch: the client's connection is hijacked, the 101 head
// written to it, and bytes spliced both ways until both directions end.
func (s *Server) upgrade(w http.ResponseWriter, tgt *target, resp *http.Response) (int, bool) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return s.proxyError(w, &http.Request{}, tgt, api.Errorf(api.CodeInternal, "101 without a stream")), false
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.writeProxyError(w, nil, tgt, api.Errorf(api.CodeInternal, "cannot switch protocols on this connection: %v", err))
		return http.StatusInternalServerError, false
	}
	defer conn.Close()
	h := w.Header()
	h.Set("Connection", "Upgrade")
	if _, err := brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n"); err == nil {
		err = h.Write(brw)
		if err == nil {
			_, err = brw.WriteString("\r\n")
		}
		if err == nil {
			err = brw.Flush()
		}
		if err != nil {
			return api.CodeClientCanceled.HTTPStatus(), false
		}
	}
	sent, recv, cut := httpstream.SpliceHalfClosed(&clientConn{Conn: tgt.stall.connWriter(conn), r: brw.Reader}, back, max(0, s.cfg.UpgradeHalfCloseTimeout))
	tgt.acc.in.n, tgt.acc.out = sent, recv
	if cut {
		tgt.acc.cut = "upgrade_half_close"
		s.m.limitRejections.WithLabelValues("upgrade_half_close").Inc()
		s.log.Debug().Str("request_id", tgt.requestID).Dur("limit", s.cfg.UpgradeHalfCloseTimeout).Msg("upgraded connection cut: one side had ended and the other was silent")
	}
	if tgt.stall.stalled() { // the client stopped reading: the session was cut
		s.m.apiErrors.WithLabelValues(api.CodeClientTimeout.String()).Inc()
		tgt.acc.code = api.CodeClientTimeout
	}
	s.log.Debug().Str("request_id", tgt.requestID).Int64("sent", sent).Int64("received", recv).Msg("upgraded stream ended")
	return http.StatusSwitchingProtocols, false
}

// clientConn is a hijacked client connection whose reads start with what net/http buffered.
type clientConn struct {
	net.Conn
	r *bufio.Reader
}

// Read drains what net/http buffered, then reads the connection itself. Never through r once
// it is empty: r reads net/http's connReader, which takes the client's EOF (a half-close: FIN,
// and it goes on reading) for the client going away and cancels the request's context, and
// with it the upgraded stream (RoundTrip resets it when its context ends), cutting the
// direction still going to the client.
func (c *clientConn) Read(p []byte) (int, error) {
	if c.r.Buffered() > 0 {
		return c.r.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *clientConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
