package kasd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// The route seam. A request is resolved to an ordered list of holders — this kasd's own
// connections of the agent, then the peers that the registry says hold it — and handed to one
// holder at a time through the holder interface. route is the only place that decides where a
// request goes, and retryDecision the only place that decides whether it may go elsewhere.

// holder is one place a request can be sent.
type holder interface {
	// route is the metric label: "local" or "forwarded".
	route() string
	// key identifies the holder among the request's attempts.
	key() string
	// send opens a stream and runs the exchange. Errors that say nothing was sent wrap
	// errNotSent.
	send(ctx context.Context, f *api.Request, body *httpstream.Body) (*http.Response, error)
}

// errNotSent marks a failure before any byte of the request left kasd: the stream could not be
// opened (the connection died after it was picked, the peer is unreachable or draining).
var errNotSent = errors.New("request not sent")

// maxRouteAttempts bounds how many attempts one request makes; maxPeerAttempts how many of them
// may go to one peer.
const (
	maxRouteAttempts = 8
	maxPeerAttempts  = 2
)

// decision is what the retry policy allows after a failed attempt.
type decision int

const (
	noRetry    decision = iota
	nextHolder          // the request was not processed: any method may go to the next holder
	retryOnce           // an idempotent request without a body failed before any response byte
)

// retryDecision is the retry policy, the one place that decides it:
//   - a request that a holder refused, or lost before sending it, was not processed and goes to
//     the next holder, whatever its method, as long as its body can be replayed;
//   - an idempotent request (GET, HEAD, OPTIONS) without a body whose stream failed before the
//     first response byte is retried once;
//   - nothing else is retried: a request that may have been executed is never repeated, and
//     nothing is retried once the client has gone or the deadline has passed.
func retryDecision(ctx context.Context, err error, method string, body *httpstream.Body) decision {
	if ctx.Err() != nil || body.Err() != nil {
		return noRetry
	}
	var re *httpstream.RemoteError
	switch {
	case errors.Is(err, errNotSent):
		if body.Replayable() {
			return nextHolder
		}
		return noRetry
	case errors.As(err, &re):
		switch re.Err.Code {
		case api.CodeNotHolder, api.CodeShuttingDown, api.CodeAgentNotConnected:
			if body.Replayable() {
				return nextHolder
			}
		}
		return noRetry
	}
	if api.CodeOf(err) == api.CodeAgentFailed && !hasCode(err, api.CodeProtocol) && body == nil && idempotent(method) {
		return retryOnce
	}
	return noRetry
}

// hasCode reports whether any *api.Error in err's chain has code.
func hasCode(err error, code api.Code) bool {
	for err != nil {
		if e, ok := err.(*api.Error); ok && e.Code == code {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				if hasCode(x, code) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

// routeResult is where a request went.
type routeResult struct {
	resp  *http.Response
	route string // "local", "forwarded", or "none" when no holder answered
}

// route sends f to the agent: to the first holder, then, as the retry policy allows, to the
// next ones. With no holder (left), it waits for one to appear, woken by the agent table or
// the registry watch, never by polling, until RouteTimeout after the request arrived: time
// spent on attempts that failed (a dead connection found dead seconds later) counts.
func (s *Server) route(ctx context.Context, tgt *target, f *api.Request, body *httpstream.Body) (routeResult, error) {
	var (
		deadline    = time.Now().Add(s.cfg.RouteTimeout)
		waitFrom    time.Time
		tried       map[string]int             // failed attempts by holder key
		refusedAs   map[string]registry.Holder // peers that refused, as the registry listed them then
		retryAt     map[string]time.Time       // peers whose link was lost: tried again from then
		lastErr     error
		lastRoute   = "none"
		attempts    int
		retriedOnce bool
		again       string // the holder whose failure the one retry is for
	)
	for attempts < maxRouteAttempts {
		// Take the change channels before looking, so that no change between the look and
		// the wait is missed.
		tableChanged := s.table.waitChange()
		var fleetChanged <-chan struct{}
		if s.fleet != nil {
			fleetChanged = s.fleet.reg.Changed()
		}
		hs, err := s.holders(tgt.agentID, tgt.service, tried, refusedAs)
		if err != nil {
			return routeResult{route: lastRoute}, err
		}
		if len(hs) == 0 && again != "" {
			hs = s.holderAgain(tgt, tried, again)
			again = ""
		}
		if len(hs) > 0 {
			s.observeWait(waitFrom)
			waitFrom = time.Time{}
			h := hs[0]
			attempts++
			lastRoute = h.route()
			if p, ok := h.(peerHolder); ok {
				tgt.acc.peer = p.inst.ID // the access log names the peer of the last attempt
			} else {
				tgt.acc.peer = ""
			}
			resp, err := h.send(ctx, f, body)
			if err == nil {
				return routeResult{resp: resp, route: h.route()}, nil
			}
			lastErr = err
			d := retryDecision(ctx, err, f.Method, body)
			if tried == nil {
				tried = map[string]int{}
			}
			// A holder that refused may be asked again (a peer's other connection to the
			// agent may take it); one that failed or could not be reached is not.
			if _, refused := errors.AsType[*httpstream.RemoteError](err); refused {
				tried[h.key()]++
				if p, ok := h.(peerHolder); ok {
					if refusedAs == nil {
						refusedAs = map[string]registry.Holder{}
					}
					refusedAs[h.key()] = p.seen
				}
			} else {
				delete(refusedAs, h.key()) // it may have taken the request: never re-admitted
				tried[h.key()] = maxPeerAttempts
				if _, peer := h.(peerHolder); peer && errors.Is(err, errNotSent) && s.fleet != nil {
					// The link to the peer was lost or could not be dialled, and the request
					// never reached it: fleet.conn dials it again after PeerRetryDelay, which
					// the wait below must not sleep through (a lost link changes neither the
					// table nor the registry).
					if retryAt == nil {
						retryAt = map[string]time.Time{}
					}
					retryAt[h.key()] = time.Now().Add(s.fleet.cfg.PeerRetryDelay)
				}
			}
			switch d {
			case nextHolder:
			case retryOnce:
				if retriedOnce {
					return routeResult{route: lastRoute}, err
				}
				retriedOnce, again = true, h.key()
			default:
				return routeResult{route: lastRoute}, err
			}
			s.m.retries.WithLabelValues(h.route(), retryReason(err)).Inc()
			continue
		}
		// Nobody (left to try) holds the agent: wait for the table or the registry to change.
		if !time.Now().Before(deadline) {
			break
		}
		if waitFrom.IsZero() {
			waitFrom = time.Now()
		}
		wake := deadline
		for _, at := range retryAt {
			if at.Before(wake) {
				wake = at
			}
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-tableChanged:
		case <-fleetChanged:
		case <-ctx.Done():
		case <-timer.C:
		}
		timer.Stop()
		for key, at := range retryAt {
			if !time.Now().Before(at) {
				delete(retryAt, key)
				delete(tried, key) // its link may be dialled again
			}
		}
		if err := ctx.Err(); err != nil {
			s.observeWait(waitFrom)
			return routeResult{route: lastRoute}, contextError(err)
		}
		if !time.Now().Before(deadline) {
			break
		}
	}
	s.observeWait(waitFrom)
	if lastErr != nil {
		if unprocessed(lastErr) && !misconfigured(lastErr) {
			// Every attempt failed before the request reached an agent (its connection or the
			// link to its holder lost, or refused by the holder), and no other holder appeared: the agent is unreachable, and the request was not processed, so the
			// client may send it again, whatever its method (503 with Retry-After, not the
			// 502 of a request that may have been executed).
			s.m.limitRejections.WithLabelValues("route_timeout").Inc()
			cause := lastErr
			if re, ok := errors.AsType[*httpstream.RemoteError](lastErr); ok {
				cause = re.Err // kept as the cause, no longer a holder's answer to pass on (proxyError)
			}
			return routeResult{route: lastRoute}, &api.Error{Code: api.CodeAgentNotConnected,
				Message:    "agent " + tgt.agentID + " is not reachable (the request was not sent): " + errString(lastErr),
				RetryAfter: time.Second, Err: cause}
		}
		return routeResult{route: lastRoute}, lastErr
	}
	s.m.limitRejections.WithLabelValues("route_timeout").Inc()
	return routeResult{route: lastRoute}, &api.Error{Code: api.CodeAgentNotConnected, Message: "agent " + tgt.agentID + " is not connected", RetryAfter: time.Second}
}

// unprocessed reports whether err, the last attempt's, says the request never reached an
// agent: its connection or the link to its holder was lost before it was taken (errNotSent), or
// the holder refused it, not holding the agent (any more), draining, or without a connection
// to it. Those codes are the holders' word to kasd, never an answer for the client: with no
// holder left, the client is told the agent is not connected.
func unprocessed(err error) bool {
	if errors.Is(err, errNotSent) && api.CodeOf(err) == api.CodeAgentFailed {
		return true
	}
	if _, refused := errors.AsType[*httpstream.RemoteError](err); !refused {
		return false
	}
	return hasCode(err, api.CodeNotHolder) || hasCode(err, api.CodeShuttingDown) || hasCode(err, api.CodeAgentNotConnected)
}

// misconfigured reports whether err says a holder refused this kasd for what it is, not for a
// moment (a peer that refused its handshake: another fleet, another peer secret, another
// protocol version): a lasting fault of the deployment, 502, not an unreachable agent.
func misconfigured(err error) bool {
	for _, c := range [...]api.Code{api.CodeUnauthenticated, api.CodeForbidden, api.CodeUnsupportedVersion, api.CodeProtocol} {
		if hasCode(err, c) {
			return true
		}
	}
	return false
}

func retryReason(err error) string {
	if errors.Is(err, errNotSent) {
		return "not_sent"
	}
	return api.CodeOf(err).String()
}

// contextError is the typed error for a request whose context ended.
func contextError(err error) *api.Error {
	if errors.Is(err, context.DeadlineExceeded) {
		return api.Errorf(api.CodeDeadlineExceeded, "request deadline exceeded")
	}
	return &api.Error{Code: api.CodeClientCanceled, Message: "the client went away", Err: err}
}

// holders lists where agentID can be reached, minus the holders in skip: this kasd's live
// connections that offer service, rotated round-robin, then the peers holding the agent. An
// error means the agent is connected here but offers no such service.
//
// A local connection that failed is not tried again; a peer is tried twice, because its
// failure may have been one of its connections to the agent (a draining one, say), and its
// next attempt picks another. A peer that was skipped for its refusals (refusedAs: the request
// was not processed) is asked again once the registry lists it holding the agent anew
// (heldAnew): a killed agent's connections at a peer are closed (refused: not holder, or
// silent), and its restarted process connects there, within the route timeout of requests that
// had given up on that peer (chaos agent-kill: requests through the kasd the new process did
// not connect to waited out --route-timeout for a 503 while the agent was back at both peers).
func (s *Server) holders(agentID, service string, tried map[string]int, refusedAs map[string]registry.Holder) ([]holder, error) {
	conns, err := s.table.pickAll(agentID, service)
	if err != nil {
		return nil, err
	}
	var out, silent []holder
	now := time.Now()
	for _, c := range conns {
		switch {
		case tried[c.id] > 0:
		case c.silent(now) || c.suspect.Load() || c.quietBusy.Load():
			// Nothing received for a while (a paused or dead replica, a dark path): after
			// every other holder, peers included.
			silent = append(silent, localHolder{s: s, c: c})
		default:
			out = append(out, localHolder{s: s, c: c})
		}
	}
	if s.fleet != nil {
		skip := func(h registry.Holder) bool {
			id := h.Instance.ID
			if tried[id] < maxPeerAttempts {
				return false
			}
			if was, ok := refusedAs[id]; ok && heldAnew(was, h) {
				delete(tried, id)
				delete(refusedAs, id)
				return false
			}
			return true
		}
		for _, h := range s.fleet.holders(agentID, skip, s.peerSeq.Add(1)) {
			out = append(out, peerHolder{s: s, inst: h.Instance, seen: h, agentID: agentID})
		}
	}
	return append(out, silent...), nil
}

// holderAgain returns the holder keyed again, if it still holds the agent, for the one retry of
// an idempotent request when no other holder is there: its stream failed, not necessarily its
// connection (an agent that ended a stream before its head), and waiting for another holder
// held the client until --route-timeout for a 502 it could have had at once. A holder that is
// gone (its connection closed) is not there: the wait for another goes on.
func (s *Server) holderAgain(tgt *target, tried map[string]int, again string) []holder {
	n := tried[again]
	delete(tried, again)
	hs, _ := s.holders(tgt.agentID, tgt.service, tried, nil)
	tried[again] = n
	for _, h := range hs {
		if h.key() == again {
			return []holder{h}
		}
	}
	return nil
}

// localHolder is one of this kasd's connections to the agent.
type localHolder struct {
	s *Server
	c *agentConn
}

func (h localHolder) route() string { return "local" }
func (h localHolder) key() string   { return h.c.id }

func (h localHolder) send(ctx context.Context, f *api.Request, body *httpstream.Body) (*http.Response, error) {
	s, e := h.s, h.c.entry
	if !s.stillAdmitted(ctx, h.c) { // reverify.go
		return nil, revokedError(h.c)
	}
	if !s.table.startRequest(e, s.cfg.MaxInflightPerAgent) {
		s.m.limitRejections.WithLabelValues("max_inflight_per_agent").Inc()
		return nil, &api.Error{Code: api.CodeOverloaded, Message: "too many requests in flight to agent " + h.c.agentID, RetryAfter: time.Second}
	}
	mark := h.c.qc.ConnectionStats().LargestSentAppData
	h.c.streamStarted() // a connection the agent leaves is closed once its streams are done
	// The agent's connection may grant no stream for a long time (its limit of concurrent
	// streams taken by responses that go on): that wait is bounded as the wait for the head is,
	// and the request, not sent, may go to another holder.
	// The wait for a stream is kasd's bound, whatever the client allows its head: a saturated
	// connection should pass the request to another holder, not keep it for an hour.
	octx, cancel := context.WithTimeout(ctx, s.cfg.ResponseHeaderTimeout)
	st, err := h.c.qc.OpenStreamSync(octx)
	cancel()
	if err != nil {
		e.inflight.Add(-1)
		h.c.streamDone()
		if ctx.Err() != nil {
			return nil, contextError(ctx.Err())
		}
		if octx.Err() != nil {
			return nil, s.attemptError(notSent(&api.Error{Code: api.CodeDeadlineExceeded,
				Message: fmt.Sprintf("agent %s granted no stream within %s", h.c.agentID, s.cfg.ResponseHeaderTimeout),
				Err:     httpstream.ErrHeaderTimeout}), "agent "+h.c.agentID)
		}
		return nil, notSent(httpstream.StreamError(err))
	}
	s.m.openStreams.Inc()
	sc := quic.NewStreamConn(h.c.qc, st)
	resp, err := httpstream.RoundTrip(ctx, sc, f, body, &httpstream.Options{
		ResponseHeaderTimeout: s.headerTimeout(ctx), // deadline.go: the client's, if longer
		Go:                    s.goOwned,
		Done: func(clean bool, sent, recv int64) {
			e.inflight.Add(-1)
			s.m.streamDone(sent, recv)
			h.c.streamDone()
		},
	})
	if err != nil && ctx.Err() == nil && untaken(sc, mark) {
		err = unacknowledged(err)
	}
	return resp, s.attemptError(err, "agent "+h.c.agentID)
}

// untaken reports whether the request on sc certainly did not reach its peer's application:
// the peer sent nothing on the stream (an answer, even a malformed one or a reset, means it took
// the request, whether or not its acknowledgement has arrived yet) and acknowledged no packet
// sent after mark (unacked).
func untaken(sc *quic.StreamConn, mark uint64) bool {
	return !sc.Answered() && unacked(sc.Conn(), mark)
}

// unacked reports whether the peer of qc has acknowledged no packet sent after mark (a
// LargestSentAppData read before the request was written): whatever the request's packets
// carried, its QUIC stack never processed them. Counting packets received instead (the rule
// before) misjudged a loaded host: packets the peer sent before it died, still queued in this
// process's socket, arrived after the request was sent and looked like an answer (14 requests
// lost in one chaos agent-kill run at load 28).
func unacked(qc *quicgo.Conn, mark uint64) bool {
	return qc.ConnectionStats().LargestAckedAppData <= mark
}

// unacknowledged marks a failure on a connection whose peer acknowledged nothing sent after the
// request was written (unacked): the peer was already gone (killed, partitioned, paused) and
// never took the request, since a live peer acknowledges within its 1 ms max_ack_delay. The
// request may go to another holder like one that was never sent. (The one case this misjudges,
// a peer that processed the request and died within that millisecond, or whose acknowledgement
// was lost just before it died, is the price of not failing every request sent into a dead
// connection before it is noticed.)
func unacknowledged(err error) error {
	var re *httpstream.RemoteError
	if errors.As(err, &re) || errors.Is(err, errNotSent) {
		return err
	}
	e := httpstream.StreamError(err)
	if e.Code == api.CodeBadRequest {
		return err // the client's body failed (bad chunking, a trailer over net/http's 4 KiB): its fault, said as it is
	}
	return &api.Error{Code: e.Code, Message: e.Message + " (the peer acknowledged nothing sent after the request)", Err: fmt.Errorf("%w: %w", errNotSent, err)}
}

// peerHolder is another kasd that holds the agent.
type peerHolder struct {
	s       *Server
	inst    registry.Instance
	seen    registry.Holder // its holding of the agent as the registry listed it when picked
	agentID string
}

// heldAnew reports whether the registry lists a peer's holding of an agent (now) with something
// it did not list when the peer refused (was): more connections, or a process it did not hold
// then (a restarted agentd, or one connected to it anew: a later Since), which also catches a
// dead connection closed as a new one opened. Fewer connections of the same processes (the dead
// ones closed one by one) is no news: asking again would only spend attempts on refusals.
func heldAnew(was, now registry.Holder) bool {
	if now.Connections > was.Connections {
		return true // also where the processes published are cut short (registry's maxAgentValueSize)
	}
	for _, r := range now.Replicas {
		if !slices.Contains(was.Replicas, r) {
			return true
		}
	}
	return false
}

func (h peerHolder) route() string { return "forwarded" }
func (h peerHolder) key() string   { return h.inst.ID }

func (h peerHolder) send(ctx context.Context, f *api.Request, body *httpstream.Body) (*http.Response, error) {
	s := h.s
	resp, err := s.fleet.forward(ctx, h.inst, h.agentID, f, body)
	s.m.forwarded.WithLabelValues(s.m.peerLabel(h.inst.ID), resultLabel(err)).Inc()
	return resp, s.attemptError(err, "peer "+h.inst.ID)
}

func notSent(e *api.Error) error {
	return &api.Error{Code: e.Code, Message: e.Message, Err: fmt.Errorf("%w: %w", errNotSent, e)}
}

// attemptError counts the limits an attempt hit and names who failed in the message.
func (s *Server) attemptError(err error, who string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, httpstream.ErrHeaderTimeout) {
		s.m.limitRejections.WithLabelValues("response_header_timeout").Inc()
	} else {
		s.countPeerLimit(err)
	}
	var re *httpstream.RemoteError
	if errors.As(err, &re) || errors.Is(err, errNotSent) {
		return err
	}
	if s.isClosed() && closedForShutdown(err) {
		// Not the agent's failure: this kasd closed the connection at the end of its
		// --shutdown-grace while the request waited for its answer (a stream already answering
		// ends with the shutting_down trailer: proxy.go). The code stays agent_failed, which is
		// not retryable: shutting_down is, and its Retry-After would have clients (client-go
		// among them) send again a request that reached the agent and may have been executed.
		return &api.Error{Code: api.CodeAgentFailed, Message: "kasd shut down before " + who + " answered (the request was still in flight when its --shutdown-grace ended; it reached the agent and may have been executed)", Err: err}
	}
	var e *api.Error
	if errors.As(err, &e) && (e.Code == api.CodeProtocol || e.Code == api.CodeAgentFailed) {
		// The client should see whom to blame; a protocol violation is the agent's failure.
		return &api.Error{Code: api.CodeAgentFailed, Message: who + ": " + e.Message, Err: err}
	}
	if errors.As(err, &e) && errors.Is(err, httpstream.ErrHeaderTimeout) {
		return &api.Error{Code: e.Code, Message: who + ": " + e.Message, Err: err} // whose head was late
	}
	return err
}

// closedForShutdown reports whether err is this kasd's own close of the connection it
// happened on, as Close closes agent connections and peer links (quic.ConnCodeShutdown, local).
func closedForShutdown(err error) bool {
	var ae *quicgo.ApplicationError
	return errors.As(err, &ae) && !ae.Remote && ae.ErrorCode == quic.ConnCodeShutdown
}

// countPeerLimit counts, in kasd_limit_rejections_total, a limit of the stream protocol that
// what an agent or a peer sent hit (err from its response head, or from its body: trailers
// over the limits, a data frame over MaxDataSize, body bytes past the content length), and any
// other protocol error as protocol_error.
func (s *Server) countPeerLimit(err error) {
	switch {
	case errors.Is(err, api.ErrFrameTooLarge), errors.Is(err, api.ErrHeadTooLarge):
		s.m.limitRejections.WithLabelValues("response_head_too_large").Inc()
	case errors.Is(err, httpstream.ErrTooManyInformational):
		s.m.limitRejections.WithLabelValues("too_many_informational").Inc()
	case api.CodeOf(err) == api.CodeProtocol:
		s.m.limitRejections.WithLabelValues("protocol_error").Inc()
	}
}

func resultLabel(err error) string {
	if err == nil {
		return "ok"
	}
	c := api.CodeOf(err)
	var re *httpstream.RemoteError
	if errors.As(err, &re) && !remoteAnswers[c] {
		c = api.CodeAgentFailed // a code a remote may not answer with is its failure (proxy.go)
	}
	return c.String()
}

func (s *Server) observeWait(from time.Time) {
	if !from.IsZero() {
		s.m.routeWait.Observe(time.Since(from).Seconds())
	}
}
