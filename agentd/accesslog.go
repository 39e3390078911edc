package agentd

import (
	"io"
	"net/http"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
)

// The access log: one info line ("access") per request stream, with the request id kasd put in
// the Request frame, so that the lines of one request at the entry kasd, the holding kasd and
// here share it. Requests made with Kubernetes impersonation are always logged (unless the log
// is off): they are the agent's audit trail of who acted as whom.

// AccessLogConfig configures the access log. The zero value logs every request.
type AccessLogConfig struct {
	// Off disables the access log. Default false.
	Off bool
	// Sample is the fraction of requests that ended well (status below 400) which are logged,
	// in [0, 1]; errors and impersonated requests are always logged. The decision hashes the
	// request id as kasd does, so with the same rate both log the same requests. Default 1
	// (see ErrorsOnly for 0).
	Sample float64
	// ErrorsOnly logs only errors and impersonated requests (Sample 0).
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

// sampled is api.Sampled: every hop (entry kasd, holder, agentd) decides alike for one id.
func sampled(id string, rate float64) bool { return api.Sampled(id, rate) }

// logAccess writes the access line of one served stream: bytesIn and bytesOut are the request
// and response body bytes. A stream without a readable head has no id and is not logged (it is
// counted as protocol_error).
func (a *Agent) logAccess(res httpstream.Served, bytesIn, bytesOut int64, start time.Time) {
	cfg := &a.cfg.AccessLog
	f := res.Head
	if cfg.Off || f == nil {
		return
	}
	status, code := res.Status, api.CodeOK
	switch {
	case res.Refusal != nil:
		code = res.Refusal.Code
		status = code.HTTPStatus()
	case res.Canceled:
		code = api.CodeClientCanceled
		status = code.HTTPStatus()
	case res.HeadError != nil:
		code = api.CodeServiceUnavailable // status is its 502 already
	case res.TrailerError != nil:
		code = api.CodeServiceUnavailable // the head said 200; the response was cut at its end
	}
	imp, impersonated := f.MetaValue("impersonate-user")
	failed := status >= 400 || code != api.CodeOK
	if !failed && !impersonated && !sampled(f.RequestID, cfg.Sample) {
		return
	}
	ev := a.log.Info()
	if ev == nil {
		return
	}
	ev = ev.Str("request_id", f.RequestID).
		Str("service", f.Service).
		Str("method", f.Method).
		Str("path", pathOf(f.Target)).
		Int("status", status)
	if code != api.CodeOK {
		ev = ev.Str("code", code.String())
	}
	if caller, ok := f.MetaValue(api.MetaCaller); ok {
		ev = ev.Str("caller", caller)
	}
	if impersonated {
		ev = ev.Str("impersonate", imp).Strs("impersonate_groups", f.MetaValues("impersonate-group"))
	}
	ev.Int64("bytes_in", bytesIn).
		Int64("bytes_out", bytesOut).
		Dur("duration", time.Since(start)).
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

// countingBody counts the request body bytes the service read.
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

// count is the bytes read (0 for nil).
func (c *countingBody) count() int64 {
	if c == nil {
		return 0
	}
	return c.n
}

// countRequestBody makes r's body count what is read from it; nil when r has no body (the
// common GET allocates nothing).
func countRequestBody(r *http.Request) *countingBody {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	c := &countingBody{rc: r.Body}
	r.Body = c
	return c
}
