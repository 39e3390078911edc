package kasd

import (
	"net/http"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/httpstream"
)

// serveAgentStreams serves the streams an agent opens on its connection: GitLab module requests
// (kind gitlab), each proxied by Config.Modules with that connection's agent token; without
// Config.Modules they are refused at once with not_found, never left unanswered. It returns a
// function that stops serving and waits for the server goroutine.
func (s *Server) serveAgentStreams(c *agentConn) (stop func()) {
	ln := httpstream.NewListener(c.qc, func(req *api.Request) *api.Error {
		if req.Kind != api.KindGitLab {
			return api.Errorf(api.CodeProtocol, "agents may only open streams of kind gitlab, not %s", req.Kind)
		}
		if s.cfg.Modules == nil {
			s.m.apiErrors.WithLabelValues("gitlab_not_configured").Inc()
			return api.Errorf(api.CodeNotFound, "this kasd has no GitLab configured (--gitlab-url)")
		}
		if err := gitlab.ValidateModule(req.Service); err != nil {
			return api.Errorf(api.CodeBadRequest, "module %q: %v", req.Service, err)
		}
		return nil
	}, c)
	srv := &http.Server{
		Handler:           http.HandlerFunc(s.serveModule),
		ConnContext:       httpstream.ConnContext,
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    1 << 20,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		_ = srv.Close()
		<-done
	}
}

// serveModule proxies one agent request to GitLab's modules endpoint with the token of the
// connection it arrived on, never another agent's.
func (s *Server) serveModule(w http.ResponseWriter, r *http.Request) {
	sc := httpstream.FromContext(r.Context())
	c, _ := sc.Data().(*agentConn)
	req := sc.Request()
	if c == nil || req == nil {
		api.WriteHTTPError(w, api.Errorf(api.CodeInternal, "module stream without an agent"))
		return
	}
	// The module in the frame and in the path must agree, so metrics and checks see the truth.
	if !strings.HasPrefix(r.URL.EscapedPath(), "/modules/"+req.Service+"/") {
		api.WriteHTTPError(w, api.Errorf(api.CodeBadRequest, "path must start with /modules/%s/", req.Service))
		return
	}
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	s.cfg.Modules.ServeHTTP(w, r.WithContext(gitlab.WithAgentToken(r.Context(), c.token)))
}
