package kasd

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
)

// What kasd does for agentd's built-in kubernetes service (the cluster's API server): its
// errors are Kubernetes Status objects, and impersonation comes from the token only.
//
// kasd knows a request is for the kubernetes service by the service name in its path,
// /api/v1/agents/{agent}/proxy/kubernetes/..., not by what the agent announces. The errors
// that matter most to a kubectl user happen before any agent was asked or when none answers
// (a token for another agent, the agent not connected, a timeout): the name in the path is
// all kasd has then, on the origin kasd of a forwarded request as well. The name is the one
// agentd gives its built-in service (a URL service cannot take it while the built-in one is on:
// agentd.Config refuses a name that is both); a URL service someone names "kubernetes" on an
// agent without it is, in practice, an API server too, and for anything else a Status is
// still JSON with a message and the Qkas-Error header. No wire change, no Hello field.

// kubernetesService is the name of agentd's built-in Kubernetes API service.
const kubernetesService = "kubernetes"

// isKubernetes reports whether requests for service get Kubernetes answers.
func isKubernetes(service string) bool { return service == kubernetesService }

// writeProxyError answers a proxied request with err, the one place where kasd writes an error
// for a request to a service: a Kubernetes Status on the kubernetes service (text on its
// discovery paths, see kubeDiscoveryPath), qkas's JSON error on every other (all with the
// Qkas-Error header). r may be nil once the request's head was answered (upgrades). The
// message is made public first (publicError): the full cause of a replaced message goes to the
// log with the request id.
func (s *Server) writeProxyError(w http.ResponseWriter, r *http.Request, tgt *target, err error) {
	err = s.publicError(tgt, err)
	if s.draining.Load() {
		w.Header().Set("Connection", "close") // as writeResponse: the drain began meanwhile
	}
	switch {
	case !isKubernetes(tgt.service):
		api.WriteHTTPError(w, err)
	case r != nil && r.URL != nil && kubeDiscoveryPath(r.URL.Path):
		api.WriteKubeText(w, err)
	default:
		api.WriteKubeStatus(w, err)
	}
}

// kubeDiscoveryPath reports whether p (the client's whole path) is one whose body client-go's
// discovery reads raw (Result.Raw: /api, /apis, /version, /openapi/v2, /openapi/v3): there a
// Status is never decoded, and kubectl prints "unknown" unless the body is text. The error
// goes out as text/plain (api.WriteKubeText) on those paths only.
func kubeDiscoveryPath(p string) bool {
	_, rest, ok := strings.Cut(p, "/proxy/"+kubernetesService+"/")
	return ok && kubeDiscovery(rest)
}

// kubeDiscovery reports whether rest, a path below the API server's root with or without its
// leading slash, is one of client-go's raw discovery paths (kubeDiscoveryPath).
func kubeDiscovery(rest string) bool {
	switch strings.Trim(rest, "/") {
	case "api", "apis", "version", "openapi/v2", "openapi/v3":
		return true
	}
	return false
}

// writePathError answers a request whose path kasd cannot serve — dot segments, a malformed
// proxy path, an unknown API path — before any target was resolved (no agent, no request id).
// A path that names the kubernetes service (/api/v1/agents/{anything}/proxy/kubernetes/...)
// gets a Kubernetes Status like every other error of that service (text on its discovery
// paths), and so does a Kubernetes API path sent to kasd's root (/api/..., /apis/...,
// /version, /openapi/...: kubectl proxy without --append-server-path, or a kubeconfig whose
// server lacks the proxy prefix), whose message then says where the API is. Any other path
// gets qkas's JSON error. Counted in kasd_api_errors_total by code.
func (s *Server) writePathError(w http.ResponseWriter, r *http.Request, err error) {
	s.m.apiErrors.WithLabelValues(api.CodeOf(err).String()).Inc()
	p := r.URL.EscapedPath()
	rest, ok := kubeServiceRest(p)
	if !ok && kubeRootPath(p) {
		rest, ok = p, true
		var e *api.Error
		if errors.As(err, &e) {
			err = &api.Error{Code: e.Code, Message: e.Message + ": kasd serves an agent's Kubernetes API at " +
				agentsPath + "/{agent}/proxy/" + kubernetesService + "/ (kubectl proxy needs --append-server-path)"}
		}
	}
	switch {
	case !ok:
		api.WriteHTTPError(w, err)
	case kubeDiscovery(rest):
		api.WriteKubeText(w, err)
	default:
		api.WriteKubeStatus(w, err)
	}
}

// kubeServiceRest returns the part after /proxy/kubernetes of an escaped path of the form
// /api/v1/agents/{agent}/proxy/kubernetes[/rest], whatever {agent} and rest hold (they may be
// what made the path unservable); the service segment may be percent-encoded.
func kubeServiceRest(p string) (rest string, ok bool) {
	after, found := strings.CutPrefix(p, agentsPath+"/")
	if !found {
		return "", false
	}
	_, after, found = strings.Cut(after, "/") // the agent segment
	if !found {
		return "", false
	}
	if after, found = strings.CutPrefix(after, proxyInfix[1:]); !found {
		return "", false
	}
	svc, rest, _ := strings.Cut(after, "/")
	if dec, err := url.PathUnescape(svc); err != nil || !isKubernetes(dec) {
		return "", false
	}
	return "/" + rest, true
}

// kubeRootPath reports whether p, a path kasd does not serve, is one a Kubernetes client sends
// to an API server's root. kasd's own /api/v1/agents/... paths are not.
func kubeRootPath(p string) bool {
	if p == agentsPath || strings.HasPrefix(p, agentsPath+"/") {
		return false
	}
	switch p {
	case "/api", "/apis", "/version":
		return true
	}
	return strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/apis/") || strings.HasPrefix(p, "/openapi/")
}

// publicError returns err as the client may see it. A message that carries what a client must
// not see — an address inside the agent's cluster or kasd's network, the text of a dial, TLS
// or socket error — is replaced by a generic one for its code that names the request id; the
// original goes to the log under that id. The agent already sends public messages (agentd's
// services describe a failure without addresses); this is the backstop for every path, also
// kasd's own (peer handshakes, QUIC errors).
func (s *Server) publicError(tgt *target, err error) error {
	var e *api.Error
	if !errors.As(err, &e) || e == nil {
		e = asAPIError(err, api.CodeInternal)
	}
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if tgt.dl != nil && e.Code == api.CodeDeadlineExceeded {
		if m := tgt.dl.message(); m != "" {
			return &api.Error{Code: e.Code, Message: m, Err: err}
		}
	}
	if !leaksInternals(msg) {
		return err
	}
	s.log.Warn().Str("agent_id", tgt.agentID).Str("service", tgt.service).Str("request_id", tgt.requestID).
		Str("code", e.Code.String()).Str("error", msg).AnErr("cause", e.Err).Msg("error message withheld from the client")
	return &api.Error{Code: e.Code, Message: genericMessage(e.Code, tgt), RetryAfter: e.RetryAfter, Err: err}
}

// genericMessage says what failed without saying how, and where the details are.
func genericMessage(c api.Code, tgt *target) string {
	var what string
	switch c {
	case api.CodeServiceUnavailable:
		what = "agent " + tgt.agentID + " could not reach service " + tgt.service
	case api.CodeAgentFailed, api.CodeProtocol:
		what = "the connection to agent " + tgt.agentID + " failed"
	case api.CodeDeadlineExceeded:
		what = "the request timed out"
	default:
		what = c.String()
	}
	if tgt.requestID == "" {
		return what + " (the cause is in kasd's log)"
	}
	return what + " (the cause is in the log under request id " + tgt.requestID + ")"
}

// internalMarkers are texts of Go's dial, resolver, TLS and socket errors; they come with
// addresses, certificate names or both. (A bare "connection refused" is the agent's public
// description of a failure and names nothing.)
var internalMarkers = []string{
	"dial tcp", "dial udp", "lookup ", "x509:", "tls:", "remote error:", "read tcp", "write tcp",
	"read udp", "write udp", "connect:", "no such host", ".svc",
}

// leaksInternals reports whether msg holds an internal error text or an IP address (IPv4
// dotted quad, or an IPv6 literal in brackets).
func leaksInternals(msg string) bool {
	for _, m := range internalMarkers {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return hasIPv4(msg) || strings.Contains(msg, "]:")
}

// hasIPv4 reports four dot-separated runs of 1-3 digits.
func hasIPv4(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) || (i > 0 && (isDigit(s[i-1]) || s[i-1] == '.')) {
			continue
		}
		j, parts := i, 0
		for parts < 4 {
			k := j
			for k < len(s) && k-j < 4 && isDigit(s[k]) {
				k++
			}
			if k == j || k-j > 3 {
				break
			}
			parts++
			if parts == 4 || k >= len(s) || s[k] != '.' {
				j = k
				break
			}
			j = k + 1
		}
		if parts == 4 {
			return true
		}
	}
	return false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// refuseImpersonation returns a 403 for a request to the kubernetes service that carries
// Impersonate-* headers (any case), unless they ask for exactly the identity the token's
// impersonate claim grants — the same user and the same groups, nothing else — in which case
// the request passes as before (the headers are dropped by setHead and agentd sets them from
// the claim). Without this, `kubectl --as=alice` would silently run with the agent's or the
// claim's rights instead of alice's: broader rights for someone who asked for narrower ones.
// Other services are not Kubernetes API servers: their Impersonate-* headers are dropped.
func refuseImpersonation(service string, h http.Header, imp *auth.Impersonation) *api.Error {
	if !isKubernetes(service) {
		return nil
	}
	var user []string
	var groups []string
	var other []string
	for k, vs := range h {
		if len(k) < len("impersonate-") || !strings.EqualFold(k[:len("impersonate-")], "impersonate-") {
			continue
		}
		switch {
		case strings.EqualFold(k, "Impersonate-User"):
			user = append(user, vs...)
		case strings.EqualFold(k, "Impersonate-Group"):
			groups = append(groups, vs...)
		default:
			other = append(other, k)
		}
	}
	if user == nil && groups == nil && other == nil {
		return nil
	}
	if len(other) == 0 && imp != nil && len(user) == 1 && user[0] == imp.User && sameSet(groups, imp.Groups) {
		return nil
	}
	asked := "impersonation"
	switch {
	case len(other) > 0:
		slices.Sort(other)
		asked = "impersonation headers " + strings.Join(other, ", ")
	case len(user) == 1:
		asked = "impersonation of user " + quote(user[0])
		if len(groups) > 0 {
			asked += " with groups " + quote(strings.Join(groups, ","))
		}
	case len(groups) > 0:
		asked = "impersonation of groups " + quote(strings.Join(groups, ","))
	}
	granted := "it grants none"
	if imp != nil {
		granted = "it grants only user " + quote(imp.User)
		if len(imp.Groups) > 0 {
			granted += " with groups " + quote(strings.Join(imp.Groups, ","))
		}
	}
	return api.Errorf(api.CodeForbidden, "impersonation comes from the token's impersonate claim only: this request asks for %s, but %s. Drop --as/--as-group (Impersonate-* headers), or use a token whose impersonate claim names that identity", asked, granted)
}

// sameSet reports whether a and b hold the same strings, ignoring order and repeats.
func sameSet(a, b []string) bool {
	return slices.Equal(sortedCopy(a), sortedCopy(b))
}

// quote quotes s for a message, cut to 128 bytes: header values are the client's own.
func quote(s string) string {
	if len(s) > 128 {
		s = s[:128] + "..."
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
