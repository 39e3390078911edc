package kasd

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/httpserve"
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
	if s.draining.Load() {
		// Draining: the connection is closed after this response (HTTP/2: a graceful GOAWAY),
		// so that a client that keeps connections alive opens its next one through the load
		// balancer, which is taking this instance out, instead of racing the close of its idle
		// connection when the drain ends (a request written just then is lost).
		w.Header().Set("Connection", "close")
	}
	p := httpserve.EscapedPath(r) // as the client escaped it: %2F stays (r.URL.EscapedPath() may lose it)
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
			s.writePathError(w, r, api.Errorf(api.CodeBadRequest, "path may not contain . or .. segments"))
			return
		}
		agentID, service, rest, ok := parseProxyPath(p[len(agentsPath)+1:])
		if !ok {
			s.writePathError(w, r, proxyPathError(p[len(agentsPath)+1:]))
			return
		}
		s.serveProxy(w, r, agentID, service, rest)
	default:
		s.writePathError(w, r, api.Errorf(api.CodeNotFound, "unknown API path %q", r.URL.Path))
	}
}

// parseProxyPath splits "{agent}/proxy/{service}/{rest}" (escaped). rest keeps its escaping and
// has a leading slash. It allocates nothing unless a name is percent-encoded.
func parseProxyPath(p string) (agentID, service, rest string, ok bool) {
	agentEsc, after, found := strings.Cut(p, "/")
	if !found || !strings.HasPrefix(after, proxyInfix[1:]) {
		return "", "", "", false
	}
	after = after[len(proxyInfix)-1:]
	serviceEsc, rest := after, "/"
	if i := strings.IndexByte(after, '/'); i >= 0 {
		serviceEsc, rest = after[:i], after[i:]
	}
	if hasDotSegment(rest) {
		return "", "", "", false
	}
	var err error
	if agentID, err = url.PathUnescape(agentEsc); err != nil || !validName(agentID) {
		return "", "", "", false
	}
	if service, err = url.PathUnescape(serviceEsc); err != nil || !validName(service) {
		return "", "", "", false
	}
	return agentID, service, rest, true
}

// proxyPathError says why parseProxyPath refused p: a path of the proxy's shape whose agent id
// or service name is not one is the client's mistake, told as such (400, with the rule); any
// other path is unknown (404).
func proxyPathError(p string) error {
	agentEsc, after, found := strings.Cut(p, "/")
	if found && strings.HasPrefix(after, proxyInfix[1:]) {
		serviceEsc, _, _ := strings.Cut(after[len(proxyInfix)-1:], "/")
		if err := nameError("agent id", agentEsc); err != nil {
			return err
		}
		if err := nameError("service name", serviceEsc); err != nil {
			return err
		}
	}
	return api.Errorf(api.CodeNotFound, "unknown API path; use %s/{agent}/proxy/{service}/{path}", agentsPath)
}

// nameError says what is wrong with the escaped agent id or service name esc, or nil.
func nameError(what, esc string) error {
	s, err := url.PathUnescape(esc)
	switch {
	case err != nil:
		return api.Errorf(api.CodeBadRequest, "invalid %s: bad percent-encoding", what)
	case s == "":
		return api.Errorf(api.CodeBadRequest, "empty %s", what)
	case len(s) > maxNameLen:
		return api.Errorf(api.CodeBadRequest, "%s longer than %d characters", what, maxNameLen)
	case !validName(s):
		return api.Errorf(api.CodeBadRequest, "invalid %s %q: letters, digits, '.', '_' and '-', starting with a letter or digit", what, s)
	}
	return nil
}

// maxNameLen is the longest agent id or service name (validName).
const maxNameLen = 63

// validName reports whether s is a valid agent ID or service name: serviceNameRE,
// ^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$, written out because it runs on every request.
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// hasDotSegment reports a "." or ".." path element in the escaped path, also when it is
// percent-encoded or hidden behind an encoded slash or backslash: the path below {service} must
// never climb out of the service's base URL on a backend that normalises paths. Only segments
// with a percent sign are decoded (an unescaped segment is its own decoding).
func hasDotSegment(escaped string) bool {
	for seg := range strings.SplitSeq(escaped, "/") {
		if strings.IndexByte(seg, '%') >= 0 {
			dec, err := url.PathUnescape(seg)
			if err != nil {
				return true
			}
			seg = dec
		}
		if hasDotElement(seg) {
			return true
		}
	}
	return false
}

// hasDotElement reports whether s, split at slashes and backslashes, has a "." or ".." part,
// with or without a ";parameter" after it.
func hasDotElement(s string) bool {
	for s != "" {
		part := s
		if i := strings.IndexAny(s, `/\`); i >= 0 {
			part, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		if i := strings.IndexByte(part, ';'); i >= 0 {
			// "..;x" is ".." with a path parameter to servlet containers (Tomcat, Jetty,
			// Spring), which strip it before resolving the path: a way out of the service's
			// base path on a Java backend.
			part = part[:i]
		}
		if part == "." || part == ".." {
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
	out := s.table.list(s.cfg.InstanceID)
	// Indexes, not pointers: appending to out below may move it.
	byID := make(map[string]int, len(out))
	for i := range out {
		out[i].Instances = []InstanceInfo{{ID: s.cfg.InstanceID, Connections: len(out[i].Connections)}}
		byID[out[i].ID] = i
	}
	if s.fleet == nil {
		return out
	}
	for id, holders := range s.fleet.reg.Agents() {
		var inst []InstanceInfo
		for _, h := range holders {
			if h.Instance.ID == s.cfg.InstanceID {
				continue // the local table is fresher than the registry for this instance
			}
			inst = append(inst, InstanceInfo{ID: h.Instance.ID, APIAddr: h.Instance.APIAddr, Connections: h.Connections})
		}
		if i, ok := byID[id]; ok {
			out[i].Instances = append(out[i].Instances, inst...)
		} else if len(inst) > 0 {
			out = append(out, AgentInfo{ID: id, Instances: inst, Connections: []ConnectionInfo{}})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
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
	return s.idPrefix + strconv.FormatUint(s.reqSeq.Add(1), 36)
}

// requestMeta turns the verified JWT into request metadata for the holder and the agent: the
// caller (its sub, for their access lines: api.MetaCaller) and its impersonate claim.
func requestMeta(c *auth.ClientClaims) []api.KV {
	imp := c.Impersonate
	if c.Subject == "" && (imp == nil || imp.User == "") {
		return nil
	}
	var meta []api.KV
	if c.Subject != "" {
		meta = append(meta, api.KV{Key: api.MetaCaller, Value: c.Subject})
	}
	if imp == nil || imp.User == "" {
		return meta
	}
	meta = append(meta, api.KV{Key: "impersonate-user", Value: imp.User})
	for _, g := range imp.Groups {
		meta = append(meta, api.KV{Key: "impersonate-group", Value: g})
	}
	return meta
}
