package kasd

import (
	"net/http"
	"strings"

	"github.com/qkas/qkas/api"
)

// Web apps under the prefix. A service is reached at
// /api/v1/agents/{agent}/proxy/{service}/, the prefix. kasd tells the service where it is
// (X-Forwarded-Prefix, with X-Forwarded-Host and X-Forwarded-Proto set in setHead; the client's
// own values are dropped), and keeps the service's references to itself under the prefix:
// Location, Content-Location, Refresh and, for web apps (origin.go), the Path of Set-Cookie,
// when they are absolute paths or absolute URLs on the host the client used. A reference that
// is already under the prefix (a service told its external URL, such as Prometheus with
// --web.external-url) or relative is left alone. Only headers are touched: bodies stream
// through unchanged.

// HeaderForwardedPrefix tells the service the path prefix it is served under.
const HeaderForwardedPrefix = "X-Forwarded-Prefix"

// forwardedPrefix is the service's root as the client addressed it, without a trailing slash:
// cut from the client's path when it ends with rest (no allocation), else built.
func forwardedPrefix(r *http.Request, agentID, service, rest string) string {
	p := r.URL.RawPath
	if p == "" {
		p = r.URL.Path
	}
	if len(p) > len(rest) && strings.HasSuffix(p, rest) && strings.HasPrefix(p, agentsPath+"/") {
		return p[:len(p)-len(rest)]
	}
	// Names are validName, which needs no escaping.
	return agentsPath + "/" + agentID + proxyInfix + service
}

// requestHygiene finishes the head kasd sends to the service: X-Forwarded-Prefix and
// X-Request-Id (both dropped from the client's headers by setHead, whose slice has room for
// them), and counts the client's forwarding headers that were dropped.
func (s *Server) requestHygiene(f *api.Request, r *http.Request, tgt *target) {
	for _, k := range clientForwardingHeaders {
		if _, ok := r.Header[k]; ok {
			s.m.hygiene.forwardedDropped.Inc()
			break
		}
	}
	f.Header = append(f.Header,
		api.KV{Key: HeaderForwardedPrefix, Value: tgt.prefix},
		api.KV{Key: HeaderXRequestID, Value: tgt.requestID})
}

// clientForwardingHeaders are the headers only kasd sets (setHead drops the client's; this list
// only counts them). X-Forwarded-For is not among them: kasd appends to the client's.
var clientForwardingHeaders = []string{"Forwarded", "X-Forwarded-Host", "X-Forwarded-Proto", HeaderForwardedPrefix}

// responseHygiene applies, to the head of a proxied response before it is written, the origin
// policy (origin.go), the request id headers (a service's X-Request-Id is replaced by the
// request's), and the prefix rewriting of the service's references to itself.
func (s *Server) responseHygiene(h http.Header, r *http.Request, tgt *target) {
	if vs := h[HeaderXRequestID]; len(vs) != 1 || vs[0] != tgt.requestID {
		h[HeaderXRequestID] = []string{tgt.requestID} // the service sent its own
	}
	if vs := h[HeaderRequestID]; len(vs) != 1 || vs[0] != tgt.requestID {
		h[HeaderRequestID] = []string{tgt.requestID}
	}
	webApp := s.applyOriginPolicy(h, tgt)
	for _, k := range [...]string{"Location", "Content-Location"} {
		if vs := h[k]; len(vs) > 0 {
			if v, ok := rewriteRef(vs[0], tgt.prefix, r.Host); ok {
				h[k] = []string{v}
			}
		}
	}
	if vs := h["Refresh"]; len(vs) > 0 {
		if v, ok := rewriteRefresh(vs[0], tgt.prefix, r.Host); ok {
			h["Refresh"] = []string{v}
		}
	}
	if webApp {
		if vs := h["Set-Cookie"]; len(vs) > 0 {
			out := make([]string, len(vs))
			for i, v := range vs {
				out[i] = rewriteCookiePath(v, tgt.prefix)
			}
			h["Set-Cookie"] = out
		}
	}
}

// underPrefix reports whether path p is prefix or below it.
func underPrefix(p, prefix string) bool {
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	rest := p[len(prefix):]
	return rest == "" || rest[0] == '/' || rest[0] == '?' || rest[0] == '#'
}

// rewriteRef puts a reference of the service to itself under prefix: an absolute path
// ("/graph/" → prefix+"/graph/") or an absolute or scheme-relative URL on host, the host the
// client used. Other references (relative ones, other hosts, already under the prefix) are
// kept; ok is false then.
func rewriteRef(v, prefix, host string) (string, bool) {
	switch {
	case v == "":
		return v, false
	case v[0] == '/' && (len(v) == 1 || (v[1] != '/' && v[1] != '\\')):
		if underPrefix(v, prefix) {
			return v, false
		}
		return prefix + v, true
	}
	// scheme://host/... or //host/...
	i := strings.Index(v, "//")
	if i < 0 || (i > 0 && (v[i-1] != ':' || !isScheme(v[:i-1]))) {
		return v, false
	}
	authEnd := i + 2
	for authEnd < len(v) && v[authEnd] != '/' && v[authEnd] != '?' && v[authEnd] != '#' {
		authEnd++
	}
	if host == "" || !strings.EqualFold(v[i+2:authEnd], host) {
		return v, false
	}
	tail := v[authEnd:]
	if underPrefix(tail, prefix) {
		return v, false
	}
	if tail == "" || tail[0] != '/' {
		tail = "/" + tail
	}
	return v[:authEnd] + prefix + tail, true
}

func isScheme(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// rewriteRefresh rewrites the URL of a Refresh header ("5; url=/next", the URL possibly
// quoted) as rewriteRef does.
func rewriteRefresh(v, prefix, host string) (string, bool) {
	semi := strings.IndexByte(v, ';')
	if semi < 0 {
		semi = strings.IndexByte(v, ',')
	}
	if semi < 0 {
		return v, false
	}
	rest := strings.TrimLeft(v[semi+1:], " \t")
	if len(rest) < 4 || !strings.EqualFold(rest[:3], "url") {
		return v, false
	}
	after := strings.TrimLeft(rest[3:], " \t")
	if after == "" || after[0] != '=' {
		return v, false
	}
	u := strings.TrimLeft(after[1:], " \t")
	start := len(v) - len(u)
	end := len(v)
	if u != "" && (u[0] == '\'' || u[0] == '"') {
		q := u[0]
		start++
		if j := strings.IndexByte(v[start:], q); j >= 0 {
			end = start + j
		}
	}
	nu, ok := rewriteRef(v[start:end], prefix, host)
	if !ok {
		return v, false
	}
	return v[:start] + nu + v[end:], true
}

// rewriteCookiePath puts every Path attribute of a Set-Cookie value under prefix (a browser
// honours the last one: rewriting only the first let "Path=/a; Path=/" set a cookie for the
// whole origin). A cookie without Path gets the request path's directory from the browser,
// which is under the prefix already.
func rewriteCookiePath(v, prefix string) string {
	off := 0
	for off < len(v) {
		semi := strings.IndexByte(v[off:], ';')
		if semi < 0 {
			return v
		}
		off += semi + 1
		attr := v[off:]
		if j := strings.IndexByte(attr, ';'); j >= 0 {
			attr = attr[:j]
		}
		trimmed := strings.TrimLeft(attr, " \t")
		lead := len(attr) - len(trimmed)
		if len(trimmed) < 5 || !strings.EqualFold(trimmed[:4], "path") {
			continue
		}
		eq := strings.TrimLeft(trimmed[4:], " \t")
		if eq == "" || eq[0] != '=' {
			continue
		}
		val := strings.TrimSpace(eq[1:])
		if val == "" || val[0] != '/' || underPrefix(val, prefix) {
			continue
		}
		nv := prefix + val
		if val == "/" {
			nv = prefix + "/"
		}
		repl := "Path=" + nv
		v = v[:off+lead] + repl + v[off+len(attr):]
		off += lead + len(repl)
	}
	return v
}
