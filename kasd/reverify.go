package kasd

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qkas/qkas/api"
)

// An agent's admission by GitLab lasts as long as GitLab's answer is cached
// (--gitlab-cache-ttl); a connection stays up much longer. Revoking an agent's token at GitLab
// must not leave a connection that goes on receiving clients' requests (their bodies and
// headers) on the revoked token's behalf. So a connection in use is checked again: the first
// request routed to it once the TTL has passed since its token was last admitted asks GitLab
// (through the client's cache, so one question per token) before it is sent. A token GitLab
// now refuses (401, 403, or another agent) has every connection that authenticated with it
// closed, as a revoked token in a reloaded tokens file does (agentauth.go), and the request
// goes to another holder or gets 503 agent_not_connected. GitLab not answering changes nothing
// (the admission stands, as a cached one does while GitLab is down) and is asked again after
// reverifyRetry. A connection that carries no request is not asked about: it receives
// nothing, and it is checked before the first request it would carry.

// reverifiedAuth is an AgentAuthenticator whose admission of a token lasts reverifyAfter
// (GitLabAuth). reverify checks a token again, asking its source whatever it cached, without the
// per-source failure budget of a new connection (SourceLimitedAuth).
type reverifiedAuth interface {
	reverifyAfter() time.Duration
	reverify(ctx context.Context, token string) (agentID string, err error)
}

const (
	// reverifyRetry is how soon a connection is checked again when GitLab did not answer.
	reverifyRetry = 30 * time.Second
	// reverifyTimeout bounds one check (the GitLab client's own timeout bounds the question).
	reverifyTimeout = 10 * time.Second
	// reverifyWait is how long a request waits for its connection's check before it goes on
	// regardless: GitLab slow or down must not hold requests (the check goes on, and a token
	// found revoked then closes the connection, its requests with it).
	reverifyWait = time.Second
)

// reverifyState is a connection's side of the check.
type reverifyState struct {
	// due is when the connection's token is to be checked again (unix nanoseconds); 0 when its
	// authenticator's admissions do not expire.
	due atomic.Int64
	mu  sync.Mutex    // guards running
	run chan struct{} // the check under way, closed when it ends; nil if none
}

// stillAdmitted reports whether c may carry a request: false once its token was found revoked
// (c is closed then). When c's check is due, one check runs (on a goroutine of the Server, not
// bound to any request), and the request waits for it up to reverifyWait or its own end.
func (s *Server) stillAdmitted(ctx context.Context, c *agentConn) bool {
	if s.reverifier == nil {
		return true
	}
	if time.Now().UnixNano() < c.reverify.due.Load() {
		return !c.revoked.Load() // not due: no lock on the request path
	}
	c.reverify.mu.Lock()
	run := c.reverify.run
	if run == nil && time.Now().UnixNano() >= c.reverify.due.Load() && !c.revoked.Load() {
		run = make(chan struct{})
		c.reverify.run = run
		if !s.goOwned(func() { s.reverify(c, run) }) {
			c.reverify.run = nil
			close(run) // closing: no check
		}
	}
	c.reverify.mu.Unlock()
	if run != nil {
		t := time.NewTimer(reverifyWait)
		select {
		case <-run:
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return !c.revoked.Load()
}

// reverify checks c's token and closes run when done.
func (s *Server) reverify(c *agentConn, run chan struct{}) {
	defer func() {
		c.reverify.mu.Lock()
		c.reverify.run = nil
		c.reverify.mu.Unlock()
		close(run)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), reverifyTimeout)
	asked := make(chan struct{})
	go func() { // ends with the question: Close does not wait for GitLab
		select {
		case <-s.quit:
			cancel()
		case <-asked:
		}
	}()
	id, err := s.reverifier.reverify(ctx, c.token)
	close(asked)
	cancel()
	switch {
	case err == nil && id == c.agentID:
		c.reverify.due.Store(time.Now().Add(s.reverifier.reverifyAfter()).UnixNano())
		s.m.reverifications.WithLabelValues("ok").Inc()
	case err == nil || hasCode(err, api.CodeUnauthenticated) || hasCode(err, api.CodeForbidden):
		s.m.reverifications.WithLabelValues("revoked").Inc()
		why := "GitLab no longer admits its token"
		if err == nil {
			why = "its token now names agent " + id
		}
		s.revokeToken(c.token, why)
	default:
		s.m.reverifications.WithLabelValues("unavailable").Inc()
		c.reverify.due.Store(time.Now().Add(reverifyRetry).UnixNano())
	}
}

// revokeToken closes every connection that authenticated with token.
func (s *Server) revokeToken(token, why string) {
	for _, c := range s.table.all() {
		if c.token == token {
			s.revoke(c, why)
		}
	}
}

// revokedError is the error of a request whose connection's token was found revoked: not
// sent, so it may go to another holder.
func revokedError(c *agentConn) error {
	return notSent(api.Errorf(api.CodeAgentNotConnected, "agent %s's token was revoked", c.agentID))
}
