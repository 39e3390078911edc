package kasd

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/httpstream"
)

// HeaderTimeout lets a client bound one proxied request: a Go duration ("30s") or seconds ("30").
// The deadline travels to the agent, which enforces it on the service request too.
const HeaderTimeout = "Qkas-Timeout"

// HeaderRequestID is set on every proxied response.
const HeaderRequestID = "Qkas-Request-Id"

const (
	agentsPath = "/api/v1/agents"
	proxyInfix = "/proxy/"
)

// Handler returns the client API:
//
//	GET /api/v1/agents                                   connected agents
//	ANY /api/v1/agents/{agent}/proxy/{service}/{path...} proxy to a service behind an agent
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveAPI)
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	p := r.URL.EscapedPath()
	switch {
	case p == agentsPath || p == agentsPath+"/":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			api.WriteHTTPError(w, &api.Error{Code: api.CodeMethodNotAllowed, Message: r.Method + " is not allowed on " + agentsPath})
			return
		}
		s.serveAgents(w, r)
	case strings.HasPrefix(p, agentsPath+"/"):
		if hasDotSegment(p) {
			api.WriteHTTPError(w, api.Errorf(api.CodeBadRequest, "path may not contain . or .. segments"))
			return
		}
		agentID, service, rest, ok := parseProxyPath(p[len(agentsPath)+1:])
		if !ok {
			api.WriteHTTPError(w, api.Errorf(api.CodeNotFound, "unknown API path; use %s/{agent}/proxy/{service}/{path}", agentsPath))
			return
		}
		s.serveProxy(w, r, agentID, service, rest)
	default:
		api.WriteHTTPError(w, api.Errorf(api.CodeNotFound, "unknown API path %q", r.URL.Path))
	}
}

// parseProxyPath splits "{agent}/proxy/{service}/{rest}" (escaped). rest keeps its escaping and
// has a leading slash.
func parseProxyPath(p string) (agentID, service, rest string, ok bool) {
	agentEsc, after, found := strings.Cut(p, "/")
	if !found || !strings.HasPrefix("/"+after, proxyInfix) {
		return "", "", "", false
	}
	after = after[len(proxyInfix)-1:]
	serviceEsc, rest, _ := strings.Cut(after, "/")
	rest = "/" + rest
	if hasDotSegment(rest) {
		return "", "", "", false
	}
	var err error
	if agentID, err = url.PathUnescape(agentEsc); err != nil || !agentIDRE.MatchString(agentID) {
		return "", "", "", false
	}
	if service, err = url.PathUnescape(serviceEsc); err != nil || !serviceNameRE.MatchString(service) {
		return "", "", "", false
	}
	return agentID, service, rest, true
}

var agentIDRE = serviceNameRE

// hasDotSegment reports a "." or ".." path element in the escaped path, also when it is
// percent-encoded or hidden behind an encoded slash or backslash: the path below {service} must
// never climb out of the service's base URL on a backend that normalises paths.
func hasDotSegment(escaped string) bool {
	for _, seg := range strings.Split(escaped, "/") {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return true
		}
		for _, part := range strings.FieldsFunc(dec, func(r rune) bool { return r == '/' || r == '\\' }) {
			if part == "." || part == ".." {
				return true
			}
		}
		if dec == "." || dec == ".." {
			return true
		}
	}
	return false
}

// authenticate verifies the client's JWT.
func (s *Server) authenticate(r *http.Request) (*auth.ClientClaims, error) {
	tok, err := auth.BearerToken(r)
	if err != nil {
		return nil, err
	}
	return s.cfg.ClientAuth.Verify(tok)
}

func (s *Server) serveAgents(w http.ResponseWriter, r *http.Request) {
	claims, err := s.authenticate(r)
	if err != nil {
		s.m.apiErrors.WithLabelValues(api.CodeOf(err).String()).Inc()
		api.WriteHTTPError(w, err)
		return
	}
	all := s.listAgents()
	agents := all[:0]
	for _, a := range all {
		if claims.AllowsAgent(a.ID) {
			agents = append(agents, a)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Agents []AgentInfo `json:"agents"`
	}{agents})
}

// listAgents merges the local table with the fleet's view.
func (s *Server) listAgents() []AgentInfo {
	local := s.table.list(s.cfg.InstanceID)
	byID := map[string]*AgentInfo{}
	for i := range local {
		a := &local[i]
		a.Instances = []InstanceInfo{{ID: s.cfg.InstanceID, Connections: len(a.Connections)}}
		byID[a.ID] = a
	}
	if s.fleet == nil {
		return local
	}
	out := local
	for id, holders := range s.fleet.reg.Agents() {
		var inst []InstanceInfo
		for _, h := range holders {
			if h.Instance.ID == s.cfg.InstanceID {
				continue // the local table is fresher than the registry for this instance
			}
			inst = append(inst, InstanceInfo{ID: h.Instance.ID, APIAddr: h.Instance.APIAddr, Connections: h.Connections})
		}
		if a := byID[id]; a != nil {
			a.Instances = append(a.Instances, inst...)
		} else if len(inst) > 0 {
			out = append(out, AgentInfo{ID: id, Instances: inst, Connections: []ConnectionInfo{}})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// target is what the API handler resolved for one proxied request; the transport reads it from
// the request context.
type target struct {
	agentID   string
	service   string
	requestID string
	meta      []api.KV
	deadline  time.Time

	route string // set by the transport: "local" (later "forwarded")
}

type targetKey struct{}

func (s *Server) serveProxy(w http.ResponseWriter, r *http.Request, agentID, service, rest string) {
	start := time.Now()
	claims, err := s.authenticate(r)
	if err != nil {
		s.m.apiErrors.WithLabelValues(api.CodeOf(err).String()).Inc()
		api.WriteHTTPError(w, err)
		return
	}
	if !claims.AllowsAgent(agentID) {
		s.m.apiErrors.WithLabelValues(api.CodeForbidden.String()).Inc()
		api.WriteHTTPError(w, api.Errorf(api.CodeForbidden, "this token may not reach agent %s", agentID))
		return
	}
	tgt := &target{
		agentID:   agentID,
		service:   service,
		requestID: s.newRequestID(),
		meta:      impersonationMeta(claims.Impersonate),
	}
	ctx := r.Context()
	if v := r.Header.Get(HeaderTimeout); v != "" {
		d, err := parseTimeout(v)
		if err != nil || d <= 0 {
			api.WriteHTTPError(w, api.Errorf(api.CodeBadRequest, "%s header: want a duration such as 30s", HeaderTimeout))
			return
		}
		d = min(d, s.cfg.MaxRequestTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		tgt.deadline, _ = ctx.Deadline()
	}
	ctx = context.WithValue(ctx, targetKey{}, tgt)
	r2 := r.WithContext(ctx)
	r2.URL = &url.URL{Path: mustUnescape(rest), RawPath: rest, RawQuery: r.URL.RawQuery}
	w.Header().Set(HeaderRequestID, tgt.requestID)

	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	rec := &httpstream.StatusRecorder{ResponseWriter: w}
	s.proxy.ServeHTTP(rec, r2)
	route := tgt.route
	if route == "" {
		route = "none"
	}
	s.m.observe(route, rec.Status(), time.Since(start))
}

func mustUnescape(p string) string {
	u, err := url.PathUnescape(p)
	if err != nil {
		return p
	}
	return u
}

// parseTimeout reads a Qkas-Timeout value: seconds ("30", "0.5") or a Go duration ("30s").
// Values too large to represent are clamped; non-finite or non-positive ones are errors.
func parseTimeout(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(n) || n <= 0 {
			return 0, errors.New("not a positive number")
		}
		if n > float64(math.MaxInt64/int64(time.Second)) {
			return time.Duration(math.MaxInt64), nil
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	return time.ParseDuration(v)
}

func (s *Server) newRequestID() string {
	return s.cfg.InstanceID + "-" + strconv.FormatUint(s.reqSeq.Add(1), 36)
}

// impersonationMeta turns the JWT's impersonate claim into request metadata for the agent.
func impersonationMeta(imp *auth.Impersonation) []api.KV {
	if imp == nil || imp.User == "" {
		return nil
	}
	meta := []api.KV{{Key: "impersonate-user", Value: imp.User}}
	for _, g := range imp.Groups {
		meta = append(meta, api.KV{Key: "impersonate-group", Value: g})
	}
	return meta
}

// newProxy builds the ReverseProxy whose Transport opens a stream per request.
func (s *Server) newProxy() http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			tgt := pr.In.Context().Value(targetKey{}).(*target)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = tgt.service
			pr.Out.Host = tgt.service
			pr.SetXForwarded()
			// The caller's credentials are for kasd, never for the service behind the agent.
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del(HeaderTimeout)
			// kasd answers 100-continue to its client itself; the agent side reads the body as
			// it arrives.
			pr.Out.Header.Del("Expect")
			for k := range pr.Out.Header {
				if strings.HasPrefix(k, "Impersonate-") {
					delete(pr.Out.Header, k)
				}
			}
		},
		Transport: &streamTransport{s: s},
		// 0: ReverseProxy flushes at once for Server-Sent Events and for bodies of unknown
		// length (chunked streams, watches), and lets fixed-length bodies leave in one write.
		FlushInterval: 0,
		BufferPool:    copyBuffers,
		ErrorHandler:  s.proxyError,
	}
}

func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	e := asAPIError(err, api.CodeAgentFailed)
	if r.Context().Err() == context.Canceled {
		// The client went away; nobody reads this answer, but count it as what it was.
		s.m.apiErrors.WithLabelValues("client_canceled").Inc()
	} else {
		s.m.apiErrors.WithLabelValues(e.Code.String()).Inc()
	}
	if tgt, _ := r.Context().Value(targetKey{}).(*target); tgt != nil {
		s.log.Debug().Str("agent_id", tgt.agentID).Str("request_id", tgt.requestID).Str("code", e.Code.String()).Str("error", e.Message).Msg("proxy error")
	}
	api.WriteHTTPError(w, e)
}
