package kasd

import (
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
)

// The access log: one info line ("access") per proxied request at the kasd that took it from the
// client, one at the holding kasd when the request was forwarded, and one at agentd, all with
// the same request id. The id is the client's X-Request-Id when it is well-formed
// (validRequestID), else one this kasd makes; it travels in the Request frame (and to the service
// as X-Request-Id) and comes back to the client as X-Request-Id and Qkas-Request-Id.
//
// Cost: the record lives in the request's target (no allocation of its own), fields are written
// by zerolog without reflection, and a disabled or unsampled log costs a branch.

// HeaderXRequestID is the conventional request-id header: taken from the client when
// well-formed, sent to the service and returned to the client.
const HeaderXRequestID = "X-Request-Id"

// maxRequestIDLen bounds a client-chosen request id: it is logged on three hops and sent in
// every frame of the request.
const maxRequestIDLen = 128

// AccessLogConfig configures the access log. The zero value logs every request.
type AccessLogConfig struct {
	// Off disables the access log. Default false.
	Off bool
	// Sample is the fraction of requests that ended well (status below 400, no qkas error)
	// which are logged, in [0, 1]; requests that ended in an error are always logged. The
	// decision is a hash of the request id, so every hop (entry kasd, holding kasd, agentd, when
	// configured alike) logs the same requests. Default 1 (see ErrorsOnly for 0).
	Sample float64
	// ErrorsOnly logs only requests that ended in an error (Sample 0).
	ErrorsOnly bool
}

func (c AccessLogConfig) withDefaults() AccessLogConfig {
	if c.Sample == 0 && !c.ErrorsOnly {
		c.Sample = 1
	}
	if c.ErrorsOnly {
		c.Sample = 0
	}
	return c
}

// access is one request's access-log record, filled in along the request path. It lives in the
// request's target.
type access struct {
	start  time.Time
	caller string // the JWT's sub
	imp    string // the impersonated user, if any
	route  string // local, forwarded, none
	peer   string // the peer the last attempt was forwarded to, if any
	code   api.Code
	status int
	cut    string       // the limit that cut an upgraded connection (upgrade_half_close), if any
	cause  string       // why the request failed, when it did (logged cut to maxCauseLog bytes)
	in     countingBody // the client's request body
	out    int64        // response body bytes written to the client
}

// setCaller records who made the request.
func (a *access) setCaller(c *auth.ClientClaims) {
	a.caller = c.Subject
	if c.Impersonate != nil {
		a.imp = c.Impersonate.User
	}
}

// setCause records why the request failed, cut to maxCauseLog bytes (an agent's message may be
// up to a frame long).
func (a *access) setCause(msg string) {
	if len(msg) > maxCauseLog {
		msg = msg[:maxCauseLog] + "…"
	}
	a.cause = msg
}

// fullCause is e's message and, beneath it, the error it wraps, addresses included: for the
// log, never for the client.
func fullCause(e *api.Error) string {
	if e.Err == nil {
		return e.Message
	}
	inner := e.Err.Error()
	if strings.Contains(e.Message, inner) {
		return e.Message
	}
	return e.Message + " (" + inner + ")"
}

// maxCauseLog bounds the error text of an access line.
const maxCauseLog = 512

// fail records an error answered by kasd.
func (a *access) fail(code api.Code) {
	a.code, a.status = code, code.HTTPStatus()
}

// countingBody counts the request body bytes read from the client.
type countingBody struct {
	rc io.ReadCloser
	n  int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingBody) Close() error { return c.rc.Close() }

// countedBody returns r's body, counting into tgt's record (no allocation: the counter is in
// tgt). r.Body itself stays net/http's: after the handler, net/http looks at it to tell whether
// a body it closed unread needs its lingering close (closeWriteAndWait); with a wrapper there it
// closed at once, with the client's unread upload in the socket, and the reset reached the
// client before the answer it had been sent.
func (tgt *target) countedBody(r *http.Request) io.ReadCloser {
	if r.Body == nil || r.Body == http.NoBody {
		return r.Body
	}
	tgt.acc.in.rc = r.Body
	return &tgt.acc.in
}

// startRequest makes the request's target: its id (the client's X-Request-Id if well-formed,
// else a new one; a malformed one is counted as request_id_invalid), returned to the client in
// X-Request-Id and Qkas-Request-Id whatever the outcome.
func (s *Server) startRequest(w http.ResponseWriter, r *http.Request, agentID, service, rest string, start time.Time) *target {
	id := ""
	if vs := r.Header[HeaderXRequestID]; len(vs) > 0 {
		if validRequestID(vs[0]) {
			id = vs[0]
		} else {
			s.m.hygiene.requestIDInvalid.Inc()
		}
	}
	if id == "" {
		id = s.newRequestID()
	}
	tgt := &target{agentID: agentID, service: service, requestID: id, prefix: forwardedPrefix(r, agentID, service, rest)}
	tgt.acc.start = start
	tgt.acc.route = "none"
	ids := []string{id}
	h := w.Header()
	h[HeaderXRequestID] = ids
	h[HeaderRequestID] = ids
	return tgt
}

// validRequestID reports whether a client's request id may be used: 1 to maxRequestIDLen
// characters from [A-Za-z0-9._:+=@/-] (UUIDs, W3C trace ids, base64 and most generators' ids),
// nothing a log, header or frame would need to escape.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '_', c == ':', c == '+', c == '=', c == '@', c == '/', c == '-':
		default:
			return false
		}
	}
	return true
}

// sampled is api.Sampled: every hop (entry kasd, holder, agentd) decides alike for one id.
func sampled(id string, rate float64) bool { return api.Sampled(id, rate) }

// logAccess writes the entry kasd's access-log line for a finished request.
func (s *Server) logAccess(r *http.Request, tgt *target) {
	a := &tgt.acc
	failed := a.status >= 400 || a.code != api.CodeOK || a.cut != ""
	if !s.accessLogged(tgt.requestID, failed) {
		return
	}
	ev := s.log.Info()
	if ev == nil {
		return
	}
	ev = ev.Str("request_id", tgt.requestID).
		Str("agent_id", tgt.agentID).
		Str("service", tgt.service).
		Str("method", r.Method).
		Str("path", r.URL.Path).
		Int("status", a.status)
	if a.code != api.CodeOK {
		ev = ev.Str("code", a.code.String())
	}
	if a.cut != "" {
		ev = ev.Str("cut", a.cut)
	}
	if a.cause != "" {
		ev = ev.Str("error", a.cause)
	}
	ev.Int64("bytes_in", a.in.n).
		Int64("bytes_out", a.out).
		Dur("duration", time.Since(a.start)).
		Str("route", a.route)
	if a.peer != "" {
		ev = ev.Str("peer", a.peer)
	}
	ev.Str("caller", a.caller).
		Str("impersonate", a.imp).
		Msg("access")
}

// accessLogged applies the access-log switches and sampling.
func (s *Server) accessLogged(id string, failed bool) bool {
	c := &s.cfg.AccessLog
	return !c.Off && (failed || sampled(id, c.Sample))
}

// logForwardedAccess writes the holding kasd's line for a request a peer forwarded here: the
// status is the entry kasd's to log (the holder splices the response without parsing it),
// refusal is set when the holder refused the request, and the byte counts are of the stream both
// ways (frames included).
func (s *Server) logForwardedAccess(f *api.Request, agentID, origin string, refusal *api.Error, in, out int64, start time.Time) {
	if !s.accessLogged(f.RequestID, refusal != nil) {
		return
	}
	ev := s.log.Info()
	if ev == nil {
		return
	}
	imp, _ := f.MetaValue("impersonate-user")
	caller, _ := f.MetaValue(api.MetaCaller)
	ev = ev.Str("request_id", f.RequestID).
		Str("agent_id", agentID).
		Str("service", f.Service).
		Str("method", f.Method).
		Str("path", pathOf(f.Target))
	if refusal != nil {
		ev = ev.Str("code", refusal.Code.String()).Int("status", refusal.Code.HTTPStatus()).Str("error", refusal.Message)
	}
	ev.Int64("bytes_in", in).
		Int64("bytes_out", out).
		Dur("duration", time.Since(start)).
		Str("route", "holder").
		Str("origin", origin).
		Str("caller", caller).
		Str("impersonate", imp).
		Msg("access")
}

// pathOf is a request target without its query.
func pathOf(target string) string {
	for i := 0; i < len(target); i++ {
		if target[i] == '?' {
			return target[:i]
		}
	}
	return target
}
