package kasd

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/httpstream"
)

// serveAgentStreams serves the streams an agent opens on its connection: GitLab module requests
// (kind gitlab), each proxied by Config.Modules with that connection's agent token; without
// Config.Modules they are refused at once with not_found, never left unanswered. It returns a
// function that stops serving and waits for the server goroutine and every handler it started.
//
// A handler's context ends when its stream ends (the agent reset it, or it was closed), when the
// connection ends, or when stop is called, so a handler waiting on GitLab returns promptly and
// stop does not wait for GitLab's timeouts.
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
	// Every request context derives from base, which ends with the connection or with stop.
	base, cancel := context.WithCancel(c.qc.Context())
	h := &moduleHandlers{serve: s.serveModule}
	srv := &http.Server{
		Handler:           h,
		BaseContext:       func(net.Listener) context.Context { return base },
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
		cancel()
		_ = srv.Close()
		<-done
		h.closeAndWait()
	}
}

// moduleHandlers runs module handlers so that stop can wait for them: http.Server.Close does not
// wait for the handlers it started.
type moduleHandlers struct {
	serve func(http.ResponseWriter, *http.Request)

	mu       sync.Mutex     // guards the fields below
	closed   bool           // no handler starts once set
	handlers sync.WaitGroup // running handlers
}

func (h *moduleHandlers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		api.WriteHTTPError(w, api.Errorf(api.CodeShuttingDown, "the connection is closing"))
		return
	}
	h.handlers.Add(1)
	h.mu.Unlock()
	defer h.handlers.Done()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// The stream's context ends when the agent resets it (or it is closed): GitLab's request
	// ends with it rather than when net/http notices the stream is gone.
	if sc := httpstream.FromContext(ctx); sc != nil {
		defer context.AfterFunc(sc.Context(), cancel)()
	}
	h.serve(w, r.WithContext(ctx))
}

func (h *moduleHandlers) closeAndWait() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.handlers.Wait()
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
