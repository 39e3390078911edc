package kasd

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// moduleHeadTimeout bounds reading the head of a stream an agent opened.
const moduleHeadTimeout = 30 * time.Second

// serveAgentStreams serves the streams the agent of c opens on its connection until the
// connection ends or ctx is done, then waits for every stream it started: GitLab module
// requests (kind gitlab), each proxied by Config.Modules with that connection's agent token
// (without Config.Modules they are refused at once with not_found, never left unanswered),
// and, with api.FeatureControlOnStreams, the agent's connection-level messages.
//
// Budgets (docs/security.md): a stream beyond Config.MaxStreamsFromAgent open streams of
// this agent, across its connections, is reset with quic.StreamCodeOverloaded as soon as it is
// accepted (no goroutine, no head read), counted as max_agent_streams_per_agent (agentd answers
// its caller 503 overloaded; it was StreamCodeRefused, which said shutting_down); a request
// beyond Config.ModulesRatePerAgent is answered overloaded, counted as modules_rate_per_agent.
//
// A stream's request context derives from ctx: it ends when the stream ends (the agent reset
// it), when the connection ends, or when ctx is canceled, so a handler waiting on GitLab
// returns promptly and the wait for the streams does not wait for GitLab's timeouts.
func (s *Server) serveAgentStreams(ctx context.Context, c *agentConn) {
	var streams sync.WaitGroup
	defer streams.Wait()
	for {
		st, err := c.qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		sc := quic.NewStreamConn(c.qc, st)
		if !s.budgets.acquireStream(c.agentID, s.cfg.MaxStreamsFromAgent) {
			s.m.limitRejections.WithLabelValues("max_agent_streams_per_agent").Inc()
			sc.Abort(quic.StreamCodeOverloaded)
			continue
		}
		streams.Go(func() {
			defer s.budgets.releaseStream(c.agentID)
			s.serveAgentStream(ctx, c, sc)
		})
	}
}

// serveAgentStream serves one stream the agent of c opened: a GitLab module request or, when
// the agent sends its connection-level messages on streams (api.FeatureControlOnStreams), a
// Ping or GoAway followed by FIN.
func (s *Server) serveAgentStream(ctx context.Context, c *agentConn, sc *quic.StreamConn) {
	if !c.controlOnStreams {
		s.serveModuleStream(ctx, c, sc, nil)
		return
	}
	_ = sc.SetReadDeadline(time.Now().Add(moduleHeadTimeout))
	m, err := api.ReadFrame(sc)
	if err != nil {
		s.refuseAgentStreamHead(sc, err)
		return
	}
	_ = sc.SetReadDeadline(time.Time{})
	switch m := m.(type) {
	case *api.Request:
		s.serveModuleStream(ctx, c, sc, m)
	case *api.GoAway, *api.Ping:
		s.controlMessage(c, m)
		_ = sc.Close()
	default:
		s.m.limitRejections.WithLabelValues("protocol_error").Inc()
		httpstream.Refuse(sc, api.Errorf(api.CodeProtocol, "a stream from an agent starts with request, go_away or ping, not %s", m.Type()))
	}
}

// refuseAgentStreamHead refuses a stream the agent opened whose head could not be read, and
// counts it: over api.MaxHeadSize (or api.MaxHeaderFields) as agent_stream_head_too_large, not
// within moduleHeadTimeout as agent_stream_head_timeout, anything else malformed as
// protocol_error.
func (s *Server) refuseAgentStreamHead(sc *quic.StreamConn, err error) {
	reason := "protocol_error"
	switch {
	case errors.Is(err, api.ErrFrameTooLarge), errors.Is(err, api.ErrHeadTooLarge):
		reason = "agent_stream_head_too_large"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		reason = "agent_stream_head_timeout"
	}
	s.m.limitRejections.WithLabelValues(reason).Inc()
	httpstream.Refuse(sc, api.Errorf(api.CodeProtocol, "bad stream head: %v", err))
}

// serveModuleStream proxies one agent request to GitLab's modules endpoint with the token of the
// connection it arrived on, never another agent's.
func (s *Server) serveModuleStream(ctx context.Context, c *agentConn, sc *quic.StreamConn, head *api.Request) {
	check := func(f *api.Request) *api.Error {
		if e := s.checkModuleRequest(f); e != nil {
			if e.Code == api.CodeProtocol {
				s.m.limitRejections.WithLabelValues("protocol_error").Inc()
			}
			return e
		}
		if wait, ok := s.budgets.allowModuleRequest(c.agentID, s.cfg.ModulesRatePerAgent, s.cfg.ModulesBurstPerAgent); !ok {
			s.m.limitRejections.WithLabelValues("modules_rate_per_agent").Inc()
			return &api.Error{Code: api.CodeOverloaded, RetryAfter: wait,
				Message: "this agent makes more than its share of GitLab module requests (--modules-rate-per-agent)"}
		}
		return nil
	}
	handle := func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		// The module in the head and in the path must agree, so metrics and checks see the
		// truth.
		if !strings.HasPrefix(r.URL.EscapedPath(), "/modules/"+f.Service+"/") {
			httpstream.WriteError(w, api.Errorf(api.CodeBadRequest, "path must start with /modules/%s/", f.Service))
			return
		}
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		mw := &moduleWatch{agentID: c.agentID, module: f.Service, requestID: f.RequestID}
		st := mw.stall.startConn(s.cfg.ModuleStallTimeout, sc, s, mw)
		defer st.stop()
		if body := st.reader(&mw.r, r.Body); body != r.Body {
			r.Body = &moduleBody{stallReader: &mw.r, limit: s.cfg.ModuleStallTimeout}
		}
		s.cfg.Modules.ServeHTTP(st.writer(&mw.w, w), r.WithContext(gitlab.WithAgentToken(r.Context(), c.token)))
	}
	if head == nil {
		// httpstream.Serve, with the refusal of a bad head counted.
		_ = sc.SetReadDeadline(time.Now().Add(moduleHeadTimeout))
		f, err := httpstream.ReadRequest(sc)
		if err != nil {
			s.refuseAgentStreamHead(sc, err)
			return
		}
		_ = sc.SetReadDeadline(time.Time{})
		head = f
	}
	res := httpstream.ServeHead(ctx, sc, head, check, handle)
	// GitLab's answer over the limits of a stream: the agent got service_unavailable (a head)
	// or a reset after the body (trailers); counted here, as agentd counts its services'.
	if res.HeadError != nil {
		s.m.limitRejections.WithLabelValues("module_response_head_too_large").Inc()
	}
	if res.TrailerError != nil {
		s.m.limitRejections.WithLabelValues("module_response_trailers_too_large").Inc()
	}
}

// checkModuleRequest vets the head of a stream an agent opened.
func (s *Server) checkModuleRequest(f *api.Request) *api.Error {
	switch {
	case f.Kind != api.KindGitLab:
		return api.Errorf(api.CodeProtocol, "agents may only open streams of kind gitlab, not %s", f.Kind)
	case s.cfg.Modules == nil:
		s.m.apiErrors.WithLabelValues("gitlab_not_configured").Inc()
		return api.Errorf(api.CodeNotFound, "this kasd has no GitLab configured (--gitlab-url)")
	}
	if err := gitlab.ValidateModule(f.Service); err != nil {
		return api.Errorf(api.CodeBadRequest, "module %q: %v", f.Service, err)
	}
	return nil
}

// agentBudgets counts, per agent id, the streams it has open towards kasd and its rate of
// module requests. Its zero value is ready to use. An agent's entry lives while it has a
// stream open or its rate bucket is not full again, so the map holds at most the agents that
// used the modules endpoint recently (each admitted by authentication): entries of idle agents
// are swept when the map has doubled since the last sweep.
type agentBudgets struct {
	mu        sync.Mutex // guards the fields below
	agents    map[string]*agentBudget
	lastSwept int // len(agents) after the last sweep
}

type agentBudget struct {
	streams int
	limiter *rate.Limiter // nil until the agent's first module request
}

// acquireStream counts one more open stream for agentID; false (nothing counted) if it has
// max already.
func (b *agentBudgets) acquireStream(agentID string, max int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entryLocked(agentID)
	if e.streams >= max {
		return false
	}
	e.streams++
	return true
}

func (b *agentBudgets) releaseStream(agentID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.agents[agentID]; e != nil {
		e.streams--
		b.forgetIfIdleLocked(agentID, e, time.Now())
	}
}

// allowModuleRequest takes a token from agentID's module request bucket; if it has none, it
// says how long until it has one.
func (b *agentBudgets) allowModuleRequest(agentID string, r float64, burst int) (time.Duration, bool) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entryLocked(agentID)
	if e.limiter == nil {
		e.limiter = rate.NewLimiter(rate.Limit(r), burst)
	}
	if e.limiter.AllowN(now, 1) {
		return 0, true
	}
	return time.Duration((1 - e.limiter.TokensAt(now)) / r * float64(time.Second)), false
}

func (b *agentBudgets) entryLocked(agentID string) *agentBudget {
	if b.agents == nil {
		b.agents = map[string]*agentBudget{}
	}
	e := b.agents[agentID]
	if e == nil {
		if len(b.agents) >= 2*max(b.lastSwept, 512) {
			now := time.Now()
			for id, old := range b.agents {
				b.forgetIfIdleLocked(id, old, now)
			}
			b.lastSwept = len(b.agents)
		}
		e = &agentBudget{}
		b.agents[agentID] = e
	}
	return e
}

// forgetIfIdleLocked drops agentID's entry when it holds nothing: no open stream and a full
// rate bucket (a new entry would be the same).
func (b *agentBudgets) forgetIfIdleLocked(agentID string, e *agentBudget, now time.Time) {
	if e.streams == 0 && (e.limiter == nil || e.limiter.TokensAt(now) >= float64(e.limiter.Burst())) {
		delete(b.agents, agentID)
	}
}

// moduleWatch is the --module-stall-timeout watch of one GitLab module request (stall.go): the
// agent plays the client's part, and its stream's deadlines end a read or write that waited the
// limit.
type moduleWatch struct {
	agentID, module, requestID string

	stall clientStall
	r     stallReader
	w     stallWriter
}

// reportStall counts and logs a module request whose agent the limit gave up on.
func (m *moduleWatch) reportStall(s *Server, read bool) {
	s.m.limitRejections.WithLabelValues("module_stall").Inc()
	what := "stopped reading GitLab's response"
	if read {
		what = "stopped sending its request body"
	}
	s.log.Info().Str("agent_id", m.agentID).Str("module", m.module).Str("request_id", m.requestID).
		Dur("module_stall_timeout", s.cfg.ModuleStallTimeout).Msg("GitLab module request ended: the agent " + what)
}

// moduleBody is the body of a module request as GitLab's client reads it: a read the limit
// ended fails with client_timeout, which the modules handler answers as such (408), not as
// GitLab failing.
type moduleBody struct {
	*stallReader
	limit time.Duration
}

func (b *moduleBody) Read(p []byte) (int, error) {
	n, err := b.stallReader.Read(p)
	if err != nil && b.c.firedRead() {
		err = &api.Error{Code: api.CodeClientTimeout, Err: err,
			Message: fmt.Sprintf("the agent sent no byte of its request body for %v (--module-stall-timeout)", b.limit)}
	}
	return n, err
}
