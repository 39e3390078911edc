package kasd

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
)

// ipv4RE is the reference for hasIPv4: a dotted quad of 1-3 digit runs, not inside a longer
// run of digits and dots on its left nor followed by a digit.
var ipv4RE = regexp.MustCompile(`(^|[^0-9.])[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}([^0-9]|$)`)

func TestLeaksInternals(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		leak bool
	}{
		{"kubernetes API server: dial tcp 10.96.0.1:443: connect: connection refused", true},
		{"peer kas-1 handshake: read udp 10.0.0.5:8152", true},
		{"tls: failed to verify certificate: x509: certificate signed by unknown authority", true},
		{"dial tcp [fd00::1]:443: i/o timeout", true},
		{"service web: lookup web.team.svc on 10.96.0.10:53: no such host", true},
		{"upstream 192.168.1.20 answered garbage", true},
		{"the Kubernetes API server could not be reached by the agent: connection refused", false},
		{"agent alpha is not connected", false},
		{"no response head within the Qkas-Timeout of 300ms", false},
		{"version 1.2.3 of the agent", false},
		{"kasd v1.37.2-kubetest", false},
	} {
		if got := leaksInternals(tc.msg); got != tc.leak {
			t.Errorf("leaksInternals(%q) = %v, want %v", tc.msg, got, tc.leak)
		}
	}
}

func FuzzHasIPv4(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "a1.2.3.4b", "1234.1.1.1", "1.2.3.4567", "1..2.3.4", "v1.37.2", "1.2.3.4.5", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := hasIPv4(s), ipv4RE.MatchString(s); got != want {
			t.Fatalf("hasIPv4(%q) = %v, reference %v", s, got, want)
		}
	})
}

func TestRefuseImpersonation(t *testing.T) {
	alice := &auth.Impersonation{User: "alice", Groups: []string{"dev", "ops"}}
	for _, tc := range []struct {
		name    string
		service string
		header  http.Header
		imp     *auth.Impersonation
		refuse  bool
	}{
		{"no headers", "kubernetes", http.Header{"Accept": {"*/*"}}, nil, false},
		{"other service", "web", http.Header{"Impersonate-User": {"root"}}, nil, false},
		{"user without claim", "kubernetes", http.Header{"Impersonate-User": {"alice"}}, nil, true},
		{"lower case", "kubernetes", http.Header{"impersonate-user": {"alice"}}, nil, true},
		{"extra only", "kubernetes", http.Header{"IMPERSONATE-EXTRA-SCOPES": {"x"}}, alice, true},
		{"exact claim", "kubernetes", http.Header{"Impersonate-User": {"alice"}, "Impersonate-Group": {"ops", "dev"}}, alice, false},
		{"missing group", "kubernetes", http.Header{"Impersonate-User": {"alice"}, "Impersonate-Group": {"dev"}}, alice, true},
		{"extra group", "kubernetes", http.Header{"Impersonate-User": {"alice"}, "Impersonate-Group": {"dev", "ops", "system:masters"}}, alice, true},
		{"claim plus uid", "kubernetes", http.Header{"Impersonate-User": {"alice"}, "Impersonate-Group": {"dev", "ops"}, "Impersonate-Uid": {"1"}}, alice, true},
		{"two users", "kubernetes", http.Header{"Impersonate-User": {"alice", "alice"}, "Impersonate-Group": {"dev", "ops"}}, alice, true},
		{"groups only", "kubernetes", http.Header{"Impersonate-Group": {"dev", "ops"}}, alice, true},
	} {
		e := refuseImpersonation(tc.service, tc.header, tc.imp)
		if (e != nil) != tc.refuse {
			t.Errorf("%s: %v, want refused=%v", tc.name, e, tc.refuse)
			continue
		}
		if e != nil && (e.Code != api.CodeForbidden || !strings.HasPrefix(e.Message, "impersonation comes from the token's impersonate claim only")) {
			t.Errorf("%s: %v", tc.name, e)
		}
	}
}

// FuzzKubeServiceRest: kubeServiceRest never panics, finds the kubernetes service exactly where
// parseProxyPath (the path every served request takes) finds it, with the same rest, and on
// paths parseProxyPath refuses only when their service segment decodes to "kubernetes".
func FuzzKubeServiceRest(f *testing.F) {
	for _, s := range []string{
		"/api/v1/agents/alpha/proxy/kubernetes/api/v1/pods", "/api/v1/agents/alpha/proxy/kubernetes",
		"/api/v1/agents/-alpha/proxy/kubernetes/version", "/api/v1/agents/a/proxy/kube%72netes/%2e%2e/x",
		"/api/v1/agents/a/proxy/web/kubernetes", "/api/v1/agents/proxy/proxy/kubernetes/", "/api/v1/agents/a/b/proxy/kubernetes",
		"/api/v1/agents//proxy/kubernetes/x", "/apis/apps/v1", "/api/v1/agents/a/proxy/%zz/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rest, ok := kubeServiceRest(p)
		if ok {
			if !strings.HasPrefix(rest, "/") || !strings.HasSuffix(p, rest[1:]) {
				t.Fatalf("%q: rest %q is not the path's tail", p, rest)
			}
			after := strings.TrimPrefix(p, agentsPath+"/")
			_, after, _ = strings.Cut(after, "/")
			svc, _, _ := strings.Cut(strings.TrimPrefix(after, "proxy/"), "/")
			if dec, err := url.PathUnescape(svc); err != nil || dec != kubernetesService {
				t.Fatalf("%q: found the kubernetes service in segment %q", p, svc)
			}
		}
		if tail, found := strings.CutPrefix(p, agentsPath+"/"); found {
			if _, service, prest, pok := parseProxyPath(tail); pok && service == kubernetesService && (!ok || prest != rest) {
				t.Fatalf("%q: parseProxyPath finds kubernetes with rest %q, kubeServiceRest (%q, %v)", p, prest, rest, ok)
			}
		}
	})
}
