package kasd

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/qkas/qkas/api"
)

// HeaderDeadline asks for a total deadline: the whole request, response body included, ends
// at it (a Go duration "10m" or seconds "600", capped by Config.MaxRequestTimeout). A
// streaming response (chunked, no Content-Length: a watch, logs -f, SSE) cut by it ends
// cleanly — the final chunk over HTTP/1.1, END_STREAM over HTTP/2 — with the trailer
// Qkas-Error: deadline_exceeded, the way the API server itself ends a watch at its
// timeoutSeconds; a response of known length cut by it is aborted (it cannot end cleanly).
// Either is counted as kasd_limit_rejections_total{reason="qkas_deadline"}.
const HeaderDeadline = "Qkas-Deadline"

// agentDeadlineGrace is how much later than kasd the agent enforces a Qkas-Deadline: kasd ends
// the request first (cleanly, for a stream), the agent's copy is the backstop for a kasd that
// went away.
const agentDeadlineGrace = time.Second

// deadlines are a request's two client deadlines.
//
// Qkas-Timeout bounds the wait for the response head only: once the head has arrived the
// request runs as long as the client and the service keep it (a watch, logs -f, exec). Before
// the head, the request's context ends at it with context.DeadlineExceeded, which every layer
// below (route, httpstream) already reports as deadline_exceeded. It is kasd's alone: nothing
// goes to the agent, whose request ends when kasd resets the stream.
//
// Qkas-Deadline bounds the whole request (see HeaderDeadline).
type deadlines struct {
	head      time.Duration // Qkas-Timeout; 0: none
	total     time.Duration // Qkas-Deadline; 0: none
	totalAt   time.Time
	ctx       context.Context // the total-deadline context, parent of the head context
	stopTotal context.CancelFunc
	timer     *time.Timer // head timer
	cancel    context.CancelFunc
	state     atomic.Int32 // headWaiting, headArrived, headTimedOut
	counted   bool         // the total deadline was counted
}

const (
	headWaiting int32 = iota
	headArrived
	headTimedOut
)

// requestDeadlines reads Qkas-Timeout and Qkas-Deadline and returns the context for route
// (nil deadlines when the client asked for neither) and the deadline the agent should enforce.
// It returns a bad_request for a malformed value.
func (s *Server) requestDeadlines(r *http.Request) (context.Context, *deadlines, error) {
	ctx := r.Context()
	var head, total time.Duration
	for _, h := range [...]struct {
		name string
		d    *time.Duration
	}{{HeaderTimeout, &head}, {HeaderDeadline, &total}} {
		v := r.Header.Get(h.name)
		if v == "" {
			continue
		}
		d, err := parseTimeout(v)
		if err != nil || d <= 0 {
			return ctx, nil, api.Errorf(api.CodeBadRequest, "%s header: want a duration such as 30s", h.name)
		}
		*h.d = min(d, s.cfg.MaxRequestTimeout)
	}
	if head == 0 && total == 0 {
		return ctx, nil, nil
	}
	dl := &deadlines{head: head, total: total}
	if d := max(head, total); d > s.cfg.ResponseHeaderTimeout {
		// The client allows the head longer than --response-header-timeout (a slow query
		// Prometheus answers in 2 minutes): its own bound replaces kasd's for this request,
		// which otherwise answered 504 at 60s whatever the client asked.
		ctx = context.WithValue(ctx, headerTimeoutKey{}, d)
	}
	dl.ctx = ctx
	if total > 0 {
		dl.ctx, dl.stopTotal = context.WithTimeout(ctx, total)
		dl.totalAt, _ = dl.ctx.Deadline()
	}
	if head == 0 {
		return dl.ctx, dl, nil
	}
	inner, cancel := context.WithCancel(dl.ctx)
	dl.cancel = cancel
	dl.timer = time.AfterFunc(head, func() {
		if dl.state.CompareAndSwap(headWaiting, headTimedOut) {
			s.m.limitRejections.WithLabelValues("qkas_timeout").Inc()
			cancel() // after the state: Err() says DeadlineExceeded once Done is closed
		}
	})
	return &headContext{Context: inner, dl: dl}, dl, nil
}

type headerTimeoutKey struct{}

// headerTimeout is the bound on the wait for a response head (and for a stream to be granted)
// for the request of ctx: --response-header-timeout, or the client's longer Qkas-Timeout or
// Qkas-Deadline (requestDeadlines).
func (s *Server) headerTimeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Value(headerTimeoutKey{}).(time.Duration); ok {
		return d
	}
	return s.cfg.ResponseHeaderTimeout
}

// agentDeadline is the deadline sent to the agent: only a total one.
func (dl *deadlines) agentDeadline() time.Time {
	if dl == nil || dl.totalAt.IsZero() {
		return time.Time{}
	}
	return dl.totalAt.Add(agentDeadlineGrace)
}

// headDone stops the head timer: the response head arrived, or the request failed without one.
func (dl *deadlines) headDone() {
	if dl != nil && dl.timer != nil && dl.state.CompareAndSwap(headWaiting, headArrived) {
		dl.timer.Stop()
	}
}

// stop releases the timers when the request has ended.
func (dl *deadlines) stop() {
	if dl == nil {
		return
	}
	if dl.timer != nil {
		dl.timer.Stop()
		dl.cancel()
	}
	if dl.stopTotal != nil {
		dl.stopTotal()
	}
}

// message describes the deadline that passed, or "".
func (dl *deadlines) message() string {
	switch {
	case dl.state.Load() == headTimedOut:
		return "no response head within the " + HeaderTimeout + " of " + dl.head.String()
	case dl.total > 0 && dl.ctx.Err() == context.DeadlineExceeded:
		return "the " + HeaderDeadline + " of " + dl.total.String() + " passed"
	}
	return ""
}

// totalPassed reports whether the Qkas-Deadline has passed.
func (dl *deadlines) totalPassed() bool {
	return dl != nil && dl.total > 0 && (dl.ctx.Err() == context.DeadlineExceeded || !time.Now().Before(dl.totalAt))
}

// countDeadline counts the client's Qkas-Deadline once, when it ended the request: before the
// response head (the route's error) or during the body (endAtDeadline).
func (s *Server) countDeadline(dl *deadlines) {
	if !dl.counted {
		dl.counted = true
		s.m.limitRejections.WithLabelValues("qkas_deadline").Inc()
	}
}

// endAtDeadline is called when the response body broke after the head was written. If the
// break is the client's Qkas-Deadline, it is counted as such, and a body without a declared
// length ends cleanly with the trailer Qkas-Error: deadline_exceeded (endClean true: the
// handler returns normally, so net/http writes the final chunk, or END_STREAM). A body of known
// length cannot end cleanly and is aborted as any other cut body.
func (s *Server) endAtDeadline(w http.ResponseWriter, tgt *target, resp *http.Response) (isDeadline, endClean bool) {
	dl := tgt.dl
	if !dl.totalPassed() {
		return false, false
	}
	s.countDeadline(dl)
	if resp.ContentLength >= 0 {
		return true, false
	}
	w.Header().Set(http.TrailerPrefix+api.HeaderError, api.CodeDeadlineExceeded.String())
	s.log.Debug().Str("agent_id", tgt.agentID).Str("request_id", tgt.requestID).Dur("deadline", dl.total).Msg("streaming response ended at the client's deadline")
	return true, true
}

// headContext is the request's context while a Qkas-Timeout is armed: canceled when the
// timer fires, and then reporting context.DeadlineExceeded like a context.WithTimeout would,
// but disarmed once the head has arrived (which a WithTimeout cannot be). Deadline is the
// parent's (the total deadline, if any): the head timer is not a deadline for what follows.
type headContext struct {
	context.Context // canceled by the timer
	dl              *deadlines
}

func (c *headContext) Err() error {
	if c.dl.state.Load() == headTimedOut {
		return context.DeadlineExceeded
	}
	return c.Context.Err()
}
