package gitlab

import (
	"context"
	"errors"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/qkas/qkas/api"
)

// ValidateModule checks a module name: 1 to 64 of [a-z0-9_-]. The name is both a path
// segment and a metrics label value.
func ValidateModule(module string) error {
	if module == "" {
		return api.Errorf(api.CodeBadRequest, "module name is empty")
	}
	if len(module) > maxModuleNameLen {
		return api.Errorf(api.CodeBadRequest, "module name is longer than %d bytes", maxModuleNameLen)
	}
	for i := 0; i < len(module); i++ {
		b := module[i]
		if !('a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '_' || b == '-') {
			return api.Errorf(api.CodeBadRequest, "module name may only contain [a-z0-9_-]")
		}
	}
	return nil
}

// CleanModulePath validates rawPath, the escaped path after /modules/{module}/, so that once
// appended to GitLab's /api/v4/internal/kubernetes/modules/{module}/ it cannot reach anything
// outside that prefix, whoever decodes it. It returns the escaped path to append (rawPath
// itself: nothing is rewritten, a suspicious path is refused) or an *api.Error with
// CodeBadRequest that says why.
//
// Refused: more than 4096 bytes; any byte that is not an RFC 3986 path character
// (control bytes, NUL, space, backslash, '?', '#', non-ASCII); malformed percent escapes;
// empty segments ("//", a leading "/"), except one trailing "/"; a first segment that looks
// like a URL scheme ("http:"); segments that decode (once or twice) to "." or "..", or to
// something containing "/", "\" or a control byte (%2f, %5c, %2e%2e, %252e%252e, %00...).
func CleanModulePath(rawPath string) (string, error) {
	if len(rawPath) > maxModulePathLen {
		return "", badPath("path is longer than %d bytes", maxModulePathLen)
	}
	if rawPath == "" {
		return "", nil
	}
	for i := 0; i < len(rawPath); i++ {
		if !isPathByte(rawPath[i]) {
			return "", badPath("path contains the byte %q", rawPath[i])
		}
	}
	segments := strings.Split(rawPath, "/")
	if isSchemeLike(segments[0]) {
		return "", badPath("path looks like an absolute URL")
	}
	for i, seg := range segments {
		if seg == "" {
			if i == len(segments)-1 && i > 0 {
				continue // one trailing slash
			}
			return "", badPath("path has an empty segment")
		}
		if err := checkSegment(seg); err != nil {
			return "", err
		}
	}
	return rawPath, nil
}

// checkSegment checks one escaped segment, decoded once and, if it still holds escapes,
// twice: a server or framework that decodes twice must see nothing dangerous either.
func checkSegment(seg string) error {
	s := seg
	for round := 0; round < 2; round++ {
		dec, err := url.PathUnescape(s)
		if err != nil {
			return badPath("path has a malformed percent escape")
		}
		if dec == "." || dec == ".." {
			return badPath("path has a dot segment")
		}
		for j := 0; j < len(dec); j++ {
			switch b := dec[j]; {
			case b == '/':
				return badPath("path has an encoded slash")
			case b == '\\':
				return badPath("path has an encoded backslash")
			case b < 0x20 || b == 0x7f:
				return badPath("path has an encoded control byte")
			}
		}
		if !strings.Contains(dec, "%") {
			return nil
		}
		s = dec
	}
	return nil
}

func badPath(format string, args ...any) error {
	return api.Errorf(api.CodeBadRequest, "invalid module path: "+format, args...)
}

// isPathByte reports whether b may appear in an escaped path (RFC 3986 pchar, '/', '%').
func isPathByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("-._~!$&'()*+,;=:@/%", b) >= 0
}

// isSchemeLike reports whether seg starts with a URL scheme ("http:", "javascript:").
func isSchemeLike(seg string) bool {
	i := strings.IndexByte(seg, ':')
	if i <= 0 {
		return false
	}
	for j := 0; j < i; j++ {
		b := seg[j]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || j > 0 && ('0' <= b && b <= '9' || b == '+' || b == '-' || b == '.')) {
			return false
		}
	}
	return true
}

type agentTokenKey struct{}

// WithAgentToken returns ctx carrying the agent token of the connection a request came from.
// ModuleHandler presents exactly this token to GitLab.
func WithAgentToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, agentTokenKey{}, token)
}

// AgentTokenFrom returns the agent token set by WithAgentToken.
func AgentTokenFrom(ctx context.Context) (string, bool) {
	t, ok := ctx.Value(agentTokenKey{}).(string)
	return t, ok && t != ""
}

// moduleRoute is what ModuleHandler decided for one request; Rewrite and the hooks read it
// from the request context.
type moduleRoute struct {
	target *url.URL // GitLab's URL for the request, without query
	token  string
	status int // response status, set by ModifyResponse; 0: no answer
}

type moduleRouteKey struct{}

// ModuleHandler serves requests whose URL path is /modules/{module}/{path...} (plus query)
// by proxying them to GitLab's /api/v4/internal/kubernetes/modules/{module}/{path...}.
// Bodies are streamed both ways; redirects are returned as they are; hop-by-hop headers and
// Cookie are dropped; Authorization, Gitlab-Agentk-Api-Request and Gitlab-Agent-Api-Request
// are replaced by the agent token from the request context (WithAgentToken). A request
// without one gets 401: that is a wiring bug in the caller.
func (c *Client) ModuleHandler() http.Handler {
	return http.HandlerFunc(c.serveModule)
}

func (c *Client) serveModule(w http.ResponseWriter, r *http.Request) {
	token, ok := AgentTokenFrom(r.Context())
	if !ok {
		api.WriteHTTPError(w, api.Errorf(api.CodeUnauthenticated, "no agent token in request context"))
		return
	}
	module, rest, err := splitModulePath(r.URL.EscapedPath())
	if err != nil {
		// Counted too (an agent sending bad paths is seen): under a label no module can have.
		c.metrics.moduleRequests.WithLabelValues(labelInvalidModule, strconv.Itoa(api.CodeOf(err).HTTPStatus())).Inc()
		api.WriteHTTPError(w, err)
		return
	}
	label := c.metrics.moduleLabel(module)
	cleaned, err := CleanModulePath(rest)
	var target *url.URL
	if err == nil {
		target, err = c.moduleURL(module, cleaned)
	}
	if err != nil {
		c.metrics.moduleRequests.WithLabelValues(label, strconv.Itoa(api.CodeOf(err).HTTPStatus())).Inc()
		api.WriteHTTPError(w, err)
		return
	}
	if err := c.waitRateLimit(r.Context()); err != nil {
		code := codeRateLimited // kasd's own refusal: not GitLab failing to answer ("error")
		if api.CodeOf(err) == api.CodeClientCanceled {
			code = strconv.Itoa(api.CodeClientCanceled.HTTPStatus())
		}
		c.metrics.moduleRequests.WithLabelValues(label, code).Inc()
		api.WriteHTTPError(w, err)
		return
	}
	route := &moduleRoute{target: target, token: token}
	start := time.Now()
	// Counted in a defer: ReverseProxy aborts with http.ErrAbortHandler when the body copy
	// fails (GitLab cut its answer short, the agent went away mid-body), and such requests
	// were sent to GitLab too.
	defer func() {
		c.metrics.duration.WithLabelValues(endpointModules).Observe(time.Since(start).Seconds())
		code := codeLabel(route.status)
		c.metrics.requests.WithLabelValues(endpointModules, code).Inc()
		c.metrics.moduleRequests.WithLabelValues(label, code).Inc()
	}()
	c.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), moduleRouteKey{}, route)))
}

// splitModulePath splits an escaped "/modules/{module}/{rest}" into a valid module name
// and the (unchecked) escaped rest.
func splitModulePath(p string) (module, rest string, err error) {
	const prefix = "/modules/"
	if !strings.HasPrefix(p, prefix) {
		return "", "", api.Errorf(api.CodeBadRequest, "path must start with %s", prefix)
	}
	p = p[len(prefix):]
	module, rest, _ = strings.Cut(p, "/")
	if err := ValidateModule(module); err != nil {
		return "", "", err
	}
	return module, rest, nil
}

// moduleURL returns GitLab's URL for module and an escaped path accepted by CleanModulePath.
func (c *Client) moduleURL(module, escapedPath string) (*url.URL, error) {
	escaped := c.base.EscapedPath() + ModulesPathPrefix + module + "/" + escapedPath
	p, err := url.PathUnescape(escaped)
	if err != nil {
		return nil, badPath("path has a malformed percent escape")
	}
	return &url.URL{Scheme: c.base.Scheme, Host: c.base.Host, Path: p, RawPath: escaped}, nil
}

func (c *Client) newModuleProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:        c.rewriteModule,
		Transport:      c.transport,
		FlushInterval:  -1,
		ModifyResponse: c.modifyModuleResponse,
		ErrorHandler:   c.moduleError,
		ErrorLog:       c.cfg.ErrorLog,
	}
}

// rewriteModule builds the request to GitLab. ReverseProxy has already removed the
// hop-by-hop headers it knows (Connection and what it lists, Keep-Alive, Proxy-*, TE,
// Trailer, Transfer-Encoding, Upgrade) and X-Forwarded-*/Forwarded, but it re-adds
// "Te: trailers" and, for upgrade requests, Connection/Upgrade: those are dropped here too.
func (c *Client) rewriteModule(pr *httputil.ProxyRequest) {
	route := pr.In.Context().Value(moduleRouteKey{}).(*moduleRoute)
	out := pr.Out
	u := *route.target
	u.RawQuery = pr.In.URL.RawQuery
	out.URL = &u
	out.Host = "" // GitLab's, from the URL

	h := out.Header
	for _, k := range []string{"Connection", "Upgrade", "Te", "Proxy-Connection", "Proxy-Authorization", "Proxy-Authenticate", "Keep-Alive", "Trailer", "Transfer-Encoding"} {
		h.Del(k)
	}
	// GitLab authenticates kas requests by the JWT and the agent token only; an agent's
	// request must not ride on a user's session, nor on any other credential GitLab reads: a
	// personal, job or other internal API's token (an independent review got Private-Token
	// and Job-Token through). Rack reads '_' in a field name as '-': a name that is one of
	// these or of the headers kasd sets, spelt with underscores, is dropped too.
	h.Del("Cookie")
	for k := range h {
		if gitlabCredential(k) {
			delete(h, k)
		}
	}
	// GitLab does not honour Idempotency-Key, but Go's transport takes a body-less request
	// that carries it as replayable and sends it again when a reused connection fails before
	// any response byte: a POST would run twice. Only safe methods are ever repeated.
	switch out.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		h.Del("Idempotency-Key")
		h.Del("X-Idempotency-Key")
	}
	// Authorization and the agent token headers are replaced, never passed on: GitLab would
	// act on a token the caller put there, whoever's it is.
	setAgentToken(h, route.token)
	if err := c.signRequest(out); err != nil {
		// Cannot happen short of crypto/rand failing. Send no JWT: GitLab answers 401.
		h.Del(JWTHeader)
	}
}

// gitlabCredentials are request headers GitLab authenticates by, besides those kasd sets
// (JWTHeader, the agent token headers, Authorization), canonical.
var gitlabCredentials = map[string]bool{
	"Private-Token": true, "Job-Token": true, "Deploy-Token": true,
	"Gitlab-Workhorse-Api-Request": true, "Gitlab-Shell-Api-Request": true,
	"Gitlab-Kas-Api-Request": true, "Gitlab-Agentk-Api-Request": true, "Gitlab-Agent-Api-Request": true,
	"Authorization": true,
}

// gitlabCredential reports whether a caller's field named k (canonical) would reach GitLab as
// a credential, with '_' read as '-' (Rack's header names).
func gitlabCredential(k string) bool {
	if gitlabCredentials[k] {
		return true
	}
	if !strings.Contains(k, "_") {
		return false
	}
	return gitlabCredentials[http.CanonicalHeaderKey(strings.ReplaceAll(k, "_", "-"))]
}

func (c *Client) modifyModuleResponse(resp *http.Response) error {
	if route, ok := resp.Request.Context().Value(moduleRouteKey{}).(*moduleRoute); ok {
		route.status = resp.StatusCode
	}
	return nil
}

// moduleError answers a request that got no response from GitLab.
func (c *Client) moduleError(w http.ResponseWriter, r *http.Request, err error) {
	ctx := r.Context()
	if ctx.Err() != nil {
		// The caller went away or its deadline passed; the answer may not be read. A caller
		// that went away is counted as 499, not as GitLab failing to answer.
		err := ctxError(ctx)
		if route, ok := ctx.Value(moduleRouteKey{}).(*moduleRoute); ok && api.CodeOf(err) == api.CodeClientCanceled {
			route.status = api.CodeClientCanceled.HTTPStatus()
		}
		api.WriteHTTPError(w, err)
		return
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		// Such as client_timeout: the agent stopped sending the body (kasd's
		// --module-stall-timeout). GitLab did not fail; the status says what the agent got.
		if route, ok := ctx.Value(moduleRouteKey{}).(*moduleRoute); ok {
			route.status = ae.Code.HTTPStatus()
		}
		api.WriteHTTPError(w, ae)
		return
	}
	api.WriteHTTPError(w, unavailable("module request failed", err))
}
