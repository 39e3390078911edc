package kasd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// target is what the API handler resolved for one proxied request.
type target struct {
	agentID   string
	service   string
	requestID string
}

// dropHeaders are client headers that never reach the service: the caller's credentials are for
// kasd, Qkas-Timeout is kasd's, kasd answers Expect: 100-continue itself, and X-Forwarded-* and
// Forwarded are set by kasd from what it saw, never taken from the client.
var dropHeaders = []string{"Authorization", HeaderTimeout, "Expect", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

func (s *Server) serveProxy(w http.ResponseWriter, r *http.Request, agentID, service, rest string) {
	start := time.Now()
	claims, err := s.authenticate(r)
	if err != nil {
		s.m.apiErrors.WithLabelValues(api.CodeOf(err).String()).Inc()
		api.WriteHTTPError(w, err)
		return
	}
	if !claims.AllowsAgent(agentID) {
		s.m.apiErrors.WithLabelValues(api.CodeForbidden.String()).Inc()
		api.WriteHTTPError(w, api.Errorf(api.CodeForbidden, "this token may not reach agent %s", agentID))
		return
	}
	tgt := &target{agentID: agentID, service: service, requestID: s.newRequestID()}
	f := &api.Request{
		Kind:      api.KindHTTP,
		Service:   service,
		RequestID: tgt.requestID,
		Meta:      impersonationMeta(claims.Impersonate),
	}
	ctx := r.Context()
	if v := r.Header.Get(HeaderTimeout); v != "" {
		d, err := parseTimeout(v)
		if err != nil || d <= 0 {
			api.WriteHTTPError(w, api.Errorf(api.CodeBadRequest, "%s header: want a duration such as 30s", HeaderTimeout))
			return
		}
		d = min(d, s.cfg.MaxRequestTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		f.Deadline, _ = ctx.Deadline()
	}
	s.setHead(f, r, rest)
	body := httpstream.NewBody(r.Body, 0)
	if f.ContentLength == 0 {
		body = nil
	} else if len(r.Trailer) > 0 {
		// Declared trailers (gRPC-style clients) travel at the end of a framed body.
		body.Trailer = r.Trailer
		f.Flags |= api.FlagFramed
	}
	w.Header().Set(HeaderRequestID, tgt.requestID)

	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	res, err := s.route(ctx, tgt, f, body)
	var status int
	var abort bool
	if err != nil {
		status = s.proxyError(w, r, tgt, err)
	} else {
		status, abort = s.writeResponse(w, r, tgt, res.resp)
	}
	s.m.observe(res.route, status, time.Since(start))
	if abort {
		// The response was cut after its head went out: make sure the client cannot take what
		// it got for a complete response (net/http closes or resets the connection).
		panic(http.ErrAbortHandler)
	}
}

// setHead fills f's HTTP head from the client's request: the path below the service, the
// client's headers without hop-by-hop ones, dropHeaders and Impersonate-* (impersonation only
// ever comes from the JWT), and X-Forwarded-For/-Host/-Proto as kasd saw the client.
func (s *Server) setHead(f *api.Request, r *http.Request, rest string) {
	f.Method = r.Method
	f.Target = rest
	if r.URL.RawQuery != "" {
		f.Target += "?" + r.URL.RawQuery
	}
	f.Host = f.Service
	upgrade := httpstream.IsUpgrade(r)
	kvs := httpstream.HeaderKVs(make([]api.KV, 0, len(r.Header)+3), r.Header, upgrade, dropHeaders...)
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
	if errors.As(err, &re) {
		err = re.Err // the typed answer of the agent or the peer
	}
	e := asAPIError(err, api.CodeAgentFailed)
	if r.Context().Err() != nil && !errors.Is(r.Context().Err(), context.DeadlineExceeded) {
		e = &api.Error{Code: api.CodeClientCanceled, Message: "the client went away", Err: err}
	}
	s.m.apiErrors.WithLabelValues(e.Code.String()).Inc()
	s.log.Debug().Str("agent_id", tgt.agentID).Str("request_id", tgt.requestID).Str("code", e.Code.String()).Str("error", e.Message).Msg("proxy error")
	if e.Code == api.CodeClientCanceled {
		return e.Code.HTTPStatus()
	}
	api.WriteHTTPError(w, e)
	return e.Code.HTTPStatus()
}

// writeResponse passes the agent's response to the client: its head (without Qkas-Error, which
// only kasd sets), then its body, flushed per write only when it is a stream (SSE, unknown
// length). abort is true when the body broke after the head was written.
func (s *Server) writeResponse(w http.ResponseWriter, r *http.Request, tgt *target, resp *http.Response) (status int, abort bool) {
	defer resp.Body.Close()
	h := w.Header()
	for k, vs := range resp.Header {
		if k != api.HeaderError {
			h[k] = vs
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return s.upgrade(w, tgt, resp)
	}
	if resp.ContentLength >= 0 && r.Method != http.MethodHead {
		h["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	}
	w.WriteHeader(resp.StatusCode)
	_, err := httpstream.CopyBody(w, resp.Body, httpstream.Streaming(resp))
	switch {
	case err == nil:
		for k, vs := range resp.Trailer {
			if k != api.HeaderError {
				h[http.TrailerPrefix+k] = vs
			}
		}
		return resp.StatusCode, false
	case errors.Is(err, httpstream.ErrClientWrite) || r.Context().Err() != nil:
		s.m.apiErrors.WithLabelValues(api.CodeClientCanceled.String()).Inc()
		return api.CodeClientCanceled.HTTPStatus(), false
	default:
		code := api.CodeOf(err)
		if code == api.CodeInternal || code == api.CodeProtocol {
			code = api.CodeAgentFailed
		}
		s.m.apiErrors.WithLabelValues(code.String()).Inc()
		s.log.Debug().Str("agent_id", tgt.agentID).Str("request_id", tgt.requestID).Err(err).Msg("response body cut")
		return code.HTTPStatus(), true
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
		api.WriteHTTPError(w, api.Errorf(api.CodeInternal, "cannot switch protocols on this connection: %v", err))
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
	sent, recv := httpstream.Splice(&clientConn{Conn: conn, r: brw.Reader}, back)
	s.log.Debug().Str("request_id", tgt.requestID).Int64("sent", sent).Int64("received", recv).Msg("upgraded stream ended")
	return http.StatusSwitchingProtocols, false
}

// clientConn is a hijacked client connection whose reads start with what net/http buffered.
type clientConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *clientConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *clientConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
