package kasd

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/httpstream"
	"github.com/qkas/qkas/quic"
)

// moduleHeadTimeout bounds reading the head of a stream an agent opened.
const moduleHeadTimeout = 30 * time.Second

// serveAgentStreams serves the streams an agent opens on its connection: GitLab module requests
// (kind gitlab), each proxied by Config.Modules with that connection's agent token; without
// Config.Modules they are refused at once with not_found, never left unanswered. It returns a
// function that stops serving and waits for the accept loop and every stream it started.
//
// A stream's request context ends when the stream ends (the agent reset it), when the
// connection ends, or when stop is called, so a handler waiting on GitLab returns promptly and
// stop does not wait for GitLab's timeouts.
func (s *Server) serveAgentStreams(c *agentConn) (stop func()) {
	ctx, cancel := context.WithCancel(c.qc.Context())
	var streams sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			st, err := c.qc.AcceptStream(ctx)
			if err != nil {
				return
			}
			sc := quic.NewStreamConn(c.qc, st)
			streams.Go(func() { s.serveModuleStream(ctx, c, sc) })
		}
	}()
	return func() {
		cancel()
		<-done // no stream is added once the accept loop has returned
		streams.Wait()
	}
}

// serveModuleStream proxies one agent request to GitLab's modules endpoint with the token of the
// connection it arrived on, never another agent's.
func (s *Server) serveModuleStream(ctx context.Context, c *agentConn, sc *quic.StreamConn) {
	httpstream.Serve(ctx, sc, moduleHeadTimeout, s.checkModuleRequest, func(w *httpstream.ResponseWriter, r *http.Request, f *api.Request) {
		// The module in the head and in the path must agree, so metrics and checks see the
		// truth.
		if !strings.HasPrefix(r.URL.EscapedPath(), "/modules/"+f.Service+"/") {
			httpstream.WriteError(w, api.Errorf(api.CodeBadRequest, "path must start with /modules/%s/", f.Service))
			return
		}
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		s.cfg.Modules.ServeHTTP(w, r.WithContext(gitlab.WithAgentToken(r.Context(), c.token)))
	})
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
