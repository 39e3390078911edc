// Package gitlabtest is a stand-in GitLab for tests. It checks what GitLab checks on every
// internal kas request, in GitLab's order: first the Gitlab-Kas-Api-Request JWT (HS256 only,
// signed with the shared secret, iss "gitlab-kas", aud containing "gitlab", exp/nbf/iat valid
// with a 1s leeway), then the agent token, from the header the GitLab version it plays reads
// it from (TokenLookup; by default today's GitLab: Gitlab-Agentk-Api-Request, else
// Gitlab-Agent-Api-Request, never Authorization). A failed check is a 401 with a JSON message,
// as GitLab answers. It records every request it receives.
package gitlabtest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/gitlab"
)

// Leeway is the clock leeway the stand-in allows on exp, nbf and iat.
const Leeway = time.Second

// Recorded is one request the stand-in received.
type Recorded struct {
	Method      string
	Path        string // decoded
	EscapedPath string // as sent
	RawQuery    string
	Header      http.Header
	UserAgent   string
	AgentID     int64  // agent whose token was presented; 0 if none or unknown/revoked
	BodyLen     int64  // bytes of the request body the handler read
	Rejected    string // why the stand-in refused it ("" if it did not): "down", "jwt: ...", "agent token"
	Time        time.Time
}

// TokenLookup is where the stand-in reads the agent token from, as one GitLab version does
// (lib/gitlab/auth/auth_finders.rb, cluster_agent_token_from_authorization_token).
type TokenLookup int

const (
	// LookupCurrent is today's GitLab: the Gitlab-Agentk-Api-Request header if the request
	// has it (even empty), else Gitlab-Agent-Api-Request. Authorization is not read.
	LookupCurrent TokenLookup = iota
	// LookupTransitional is GitLab during the move away from Authorization (issue 406582):
	// "Authorization: Bearer" if the request has an Authorization header, else
	// Gitlab-Agentk-Api-Request.
	LookupTransitional
	// LookupAuthorization is GitLab before that move: "Authorization: Bearer" only.
	LookupAuthorization
)

// Lookups lists every TokenLookup, for tests that run against each GitLab version.
var Lookups = []TokenLookup{LookupCurrent, LookupTransitional, LookupAuthorization}

func (l TokenLookup) String() string {
	switch l {
	case LookupCurrent:
		return "current"
	case LookupTransitional:
		return "transitional"
	case LookupAuthorization:
		return "authorization"
	}
	return "unknown"
}

// The headers GitLab has read the agent token from besides Authorization.
const (
	agentkTokenHeader = "Gitlab-Agentk-Api-Request"
	agentTokenHeader  = "Gitlab-Agent-Api-Request"
)

type agent struct {
	info    gitlab.AgentInfo
	revoked bool
}

// Server is a stand-in GitLab. Its methods are safe for concurrent use.
type Server struct {
	URL string

	srv    *httptest.Server
	secret []byte

	mu             sync.Mutex // guards the fields below
	agents         map[string]*agent
	down           bool
	lookup         TokenLookup
	modules        map[string]http.Handler
	agentInfo      http.Handler
	requests       []Recorded
	agentInfoCalls int
}

// New starts a stand-in GitLab that verifies JWTs with secret. t.Cleanup closes it.
func New(t testing.TB, secret []byte) *Server {
	t.Helper()
	s := &Server{
		secret:  append([]byte(nil), secret...),
		agents:  make(map[string]*agent),
		modules: make(map[string]http.Handler),
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and closes its connections. It is idempotent.
func (s *Server) Close() {
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// AddAgent makes token a valid agent token for info (re-adding un-revokes it).
func (s *Server) AddAgent(token string, info gitlab.AgentInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agents[token] = &agent{info: info}
}

// RevokeAgent makes token invalid: GitLab answers 401 for it.
func (s *Server) RevokeAgent(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.agents[token]; ok {
		a.revoked = true
	}
}

// SetDown makes the server answer 503 to everything (true) or serve again (false).
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// SetTokenLookup makes the stand-in read agent tokens as the GitLab version l stands for.
func (s *Server) SetTokenLookup(l TokenLookup) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lookup = l
}

// SetModuleHandler sets what modules/{module}/... answers once the JWT and agent token are
// verified. nil restores the default: a JSON echo (see Echo).
func (s *Server) SetModuleHandler(module string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h == nil {
		delete(s.modules, module)
		return
	}
	s.modules[module] = h
}

// SetAgentInfoHandler replaces agent_info's answer (after the JWT and token checks passed),
// e.g. to answer 403, 500, a malformed body or slowly. nil restores the default.
func (s *Server) SetAgentInfoHandler(h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agentInfo = h
}

// Requests returns a copy of what the server has received so far, in completion order.
func (s *Server) Requests() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Recorded(nil), s.requests...)
}

// AgentInfoCalls returns how many requests reached the agent_info path (whatever their outcome).
func (s *Server) AgentInfoCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agentInfoCalls
}

// Echo is the default module answer.
type Echo struct {
	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query"`
	BodyLength int64  `json:"body_length"`
	AgentID    int64  `json:"agent_id"`
}

type agentIDKey struct{}

// AgentIDFrom returns the id of the agent whose token the request presented; for use in
// handlers passed to SetModuleHandler.
func AgentIDFrom(r *http.Request) int64 {
	id, _ := r.Context().Value(agentIDKey{}).(int64)
	return id
}

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

const (
	apiPrefix     = "/api/v4/internal/kubernetes/"
	modulesPrefix = apiPrefix + "modules/"
)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	rec := Recorded{
		Method:      r.Method,
		Path:        r.URL.Path,
		EscapedPath: r.URL.EscapedPath(),
		RawQuery:    r.URL.RawQuery,
		Header:      r.Header.Clone(),
		UserAgent:   r.UserAgent(),
		Time:        time.Now(),
	}
	body := &countingReader{r: r.Body}
	r.Body = body
	defer func() {
		rec.BodyLen = body.n
		s.mu.Lock()
		s.requests = append(s.requests, rec)
		s.mu.Unlock()
	}()

	s.mu.Lock()
	down := s.down
	if r.URL.Path == gitlab.AgentInfoPath {
		s.agentInfoCalls++
	}
	s.mu.Unlock()
	if down {
		rec.Rejected = "down"
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"message": "503 Service Unavailable"})
		return
	}
	if err := s.verifyJWT(r.Header.Get(gitlab.JWTHeader)); err != nil {
		rec.Rejected = "jwt: " + err.Error()
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "401 Unauthorized"})
		return
	}
	info, ok := s.agentFor(r.Header)
	if !ok {
		rec.Rejected = "agent token"
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "401 Unauthorized"})
		return
	}
	rec.AgentID = info.AgentID
	r = r.WithContext(contextWithAgentID(r, info.AgentID))

	switch {
	case r.URL.Path == gitlab.AgentInfoPath && r.Method == http.MethodGet:
		s.mu.Lock()
		h := s.agentInfo
		s.mu.Unlock()
		if h != nil {
			h.ServeHTTP(w, r)
			return
		}
		writeJSON(w, http.StatusOK, info)
	case strings.HasPrefix(r.URL.Path, modulesPrefix):
		module, _, _ := strings.Cut(r.URL.Path[len(modulesPrefix):], "/")
		s.mu.Lock()
		h := s.modules[module]
		s.mu.Unlock()
		if h == nil {
			h = http.HandlerFunc(echo)
		}
		h.ServeHTTP(w, r)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "404 Not Found"})
	}
}

func echo(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	writeJSON(w, http.StatusOK, Echo{
		Method:     r.Method,
		Path:       r.URL.EscapedPath(),
		Query:      r.URL.RawQuery,
		BodyLength: n,
		AgentID:    AgentIDFrom(r),
	})
}

// verifyJWT checks the Gitlab-Kas-Api-Request header as GitLab does.
func (s *Server) verifyJWT(token string) error {
	if token == "" {
		return jwt.ErrTokenMalformed
	}
	_, err := jwt.Parse(token,
		func(*jwt.Token) (any, error) { return s.secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(gitlab.JWTIssuer),
		jwt.WithAudience(gitlab.JWTAudience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(Leeway),
	)
	return err
}

// agentFor finds the agent whose token h presents, where the GitLab version played reads it.
func (s *Server) agentFor(h http.Header) (gitlab.AgentInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var token string
	switch s.lookup {
	case LookupCurrent:
		if _, ok := h[agentkTokenHeader]; ok {
			token = h.Get(agentkTokenHeader)
		} else {
			token = h.Get(agentTokenHeader)
		}
	case LookupTransitional:
		if h.Get("Authorization") != "" {
			token = bearer(h.Get("Authorization"))
		} else {
			token = h.Get(agentkTokenHeader)
		}
	case LookupAuthorization:
		token = bearer(h.Get("Authorization"))
	}
	if token == "" {
		return gitlab.AgentInfo{}, false
	}
	a, ok := s.agents[token]
	if !ok || a.revoked {
		return gitlab.AgentInfo{}, false
	}
	return a.info, true
}

// bearer returns the token of an "Authorization: Bearer" (or "Token") header, "" if it has none.
func bearer(authorization string) string {
	for _, scheme := range []string{"Bearer ", "Token "} {
		if t, ok := strings.CutPrefix(authorization, scheme); ok {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func contextWithAgentID(r *http.Request, id int64) context.Context {
	return context.WithValue(r.Context(), agentIDKey{}, id)
}
