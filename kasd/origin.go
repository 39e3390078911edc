package kasd

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// The origin policy. Every service behind every agent is served on kasd's one API origin, so a
// service's HTML and scripts would run as kasd's origin, next to every other service of every
// other agent, and its cookies would be kasd's cookies. By default kasd therefore adds
// Content-Security-Policy: sandbox (the browser runs the page in a unique opaque origin: no
// scripts, no cookies, no same-origin access) and X-Content-Type-Options: nosniff to proxied
// responses, and drops Set-Cookie (counted as set_cookie_dropped). API clients (kubectl,
// Prometheus, promtool, curl) ignore all three.
//
// A service may be served as a web app instead (Config.WebApps, kasd's --web-app flag): no
// sandbox, and its cookies kept, their Path rewritten under the service's prefix
// (rewrite.go). The list lives at kasd, not in agentd's service configuration announced in
// Hello: the policy protects kasd's origin and the clients of every other agent, so it is the
// decision of whoever runs kasd; an agent (one cluster, possibly compromised) must not be able
// to lift it for itself. The risk, documented in the README: a web app's scripts run as kasd's
// origin and can read, in the browser, anything else served on it that the browser can reach,
// including other web apps' pages and cookies (Path is no security boundary); only list
// services as trusted as kasd itself.

// cspSandbox and noSniff are shared, never modified header values (len == cap, so an append
// elsewhere copies).
var (
	cspSandbox = []string{"sandbox"}
	noSniff    = []string{"nosniff"}
)

// webAppKey names one agent's service (service "*": all its services).
type webAppKey struct{ agent, service string }

// parseWebApps compiles Config.WebApps ("agent/service" or "agent/*").
func parseWebApps(list []string) (map[webAppKey]bool, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := make(map[webAppKey]bool, len(list))
	for _, e := range list {
		agent, service, ok := strings.Cut(e, "/")
		if !ok || !validName(agent) || (service != "*" && !validName(service)) {
			return nil, fmt.Errorf("web app %q: want agent/service or agent/*", e)
		}
		out[webAppKey{agent, service}] = true
	}
	return out, nil
}

// isWebApp reports whether the agent's service is served as a web app.
func (s *Server) isWebApp(agentID, service string) bool {
	set := s.cfg.webApps
	if len(set) == 0 {
		return false
	}
	return set[webAppKey{agentID, service}] || set[webAppKey{agentID, "*"}]
}

// applyOriginPolicy sets the origin policy headers on a proxied response head and reports
// whether the service is a web app.
func (s *Server) applyOriginPolicy(h http.Header, tgt *target) bool {
	h["X-Content-Type-Options"] = noSniff
	if s.isWebApp(tgt.agentID, tgt.service) {
		return true
	}
	if prior := h["Content-Security-Policy"]; len(prior) > 0 {
		// Every policy applies; the service's own stays, sandbox is added.
		h["Content-Security-Policy"] = append(prior[:len(prior):len(prior)], "sandbox")
	} else {
		h["Content-Security-Policy"] = cspSandbox
	}
	if _, ok := h["Set-Cookie"]; ok {
		delete(h, "Set-Cookie")
		s.m.hygiene.cookieDropped.Inc()
	}
	return false
}

// hygieneMetrics counts what the request hygiene removed or refused, by reason.
type hygieneMetrics struct {
	requestIDInvalid prometheus.Counter // a client's X-Request-Id was malformed: a new id was made
	forwardedDropped prometheus.Counter // a client sent Forwarded or X-Forwarded-Host/-Proto/-Prefix
	cookieDropped    prometheus.Counter // a service's Set-Cookie removed by the origin policy
}

func newHygieneMetrics(reg prometheus.Registerer) hygieneMetrics {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kasd_header_rejections_total",
		Help: "Headers kasd refused or removed, by reason: request_id_invalid (a client's malformed X-Request-Id, replaced), forwarded_header (a client's Forwarded or X-Forwarded-Host/-Proto/-Prefix, dropped), set_cookie_dropped (a service's Set-Cookie, removed by the origin policy).",
	}, []string{"reason"})
	reg.MustRegister(v)
	return hygieneMetrics{
		requestIDInvalid: v.WithLabelValues("request_id_invalid"),
		forwardedDropped: v.WithLabelValues("forwarded_header"),
		cookieDropped:    v.WithLabelValues("set_cookie_dropped"),
	}
}
