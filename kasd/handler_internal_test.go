package kasd

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
)

// A path of the proxy's shape with a name that is not one is a 400 that says which name and
// why; any other path under /api/v1/agents/ is an unknown path (404).
func TestProxyPathError(t *testing.T) {
	for _, tc := range []struct {
		path string
		code api.Code
		msg  string
	}{
		{strings.Repeat("a", 300) + "/proxy/web/", api.CodeBadRequest, "agent id longer than 63 characters"},
		{"-alpha/proxy/web/x", api.CodeBadRequest, `invalid agent id "-alpha": letters, digits`},
		{"%zz/proxy/web/", api.CodeBadRequest, "invalid agent id: bad percent-encoding"},
		{"alpha/proxy/" + strings.Repeat("s", 64), api.CodeBadRequest, "service name longer than 63 characters"},
		{"alpha/proxy/w%20b/", api.CodeBadRequest, `invalid service name "w b"`},
		{"alpha/proxy/", api.CodeBadRequest, "empty service name"},
		{"alpha/proxies/web/", api.CodeNotFound, "unknown API path"},
		{"alpha", api.CodeNotFound, "unknown API path"},
	} {
		if _, _, _, ok := parseProxyPath(tc.path); ok {
			t.Fatalf("parseProxyPath(%q) accepted it", tc.path)
		}
		err := proxyPathError(tc.path)
		if api.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: %v (%s), want %s containing %q", tc.path, err, api.CodeOf(err), tc.code, tc.msg)
		}
	}
}

// "..;x" (and ".;x") are dot segments to servlet containers, which strip a segment's path
// parameter before resolving the path: refused like ".." itself. A parameter on another
// segment is not.
func TestDotSegmentWithPathParameter(t *testing.T) {
	for p, want := range map[string]bool{
		"/proxy/web/..;/admin": true, "/a/.;x/b": true, "/a/%2e%2e;x": true, "/a/%2e%2e%3bx": true,
		"/a;b/c": false, "/a/b;..": false, "/..x;/y": false, "/a/b": false,
	} {
		if got := hasDotSegment(p); got != want {
			t.Errorf("hasDotSegment(%q) = %v, want %v", p, got, want)
		}
	}
}

// A restarted kasd keeps its instance id (a StatefulSet pod's name) but repeats none of the
// request or connection ids of the process before it: they carry a tag of the process. They
// were <instance>-<n>, from 1 at every start, so a log search for one id found requests and
// connections of every process the pod had run.
func TestIDsDifferAcrossProcesses(t *testing.T) {
	start := func() *Server {
		store, err := auth.ParseTokens([]byte("agents: []\n"))
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(Config{InstanceID: "kas-0", Registerer: prometheus.NewRegistry(), AgentAuth: TokenFileAuth{Store: store},
			ClientAuth: &auth.Verifier{Key: bytes.Repeat([]byte("k"), 32), AllowAnyAgent: true}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := start(), start()
	ra, rb := a.newRequestID(), b.newRequestID()
	if ra == rb || !strings.HasPrefix(ra, "kas-0-") || !validRequestID(ra) || !validRequestID(rb) {
		t.Errorf("first request ids of two processes of kas-0: %q and %q, want distinct valid ids starting kas-0-", ra, rb)
	}
	if tag := processTag(); len(tag) != 6 || strings.Trim(tag, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		t.Errorf("process tag %q, want 6 characters of [a-z2-7]", tag)
	}
}
