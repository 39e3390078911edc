package kasd_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A query with bytes net/http's server accepts raw but a request frame's target may not carry
// (UTF-8 sent unencoded, as curl does; a '#') reaches the service percent-encoded, which its
// query parser decodes to the same values. The client got 502 protocol_error ("bad request
// head: ... not an origin-form request target"), blamed on the agent, with every holder asked
// in turn.
func TestRawQueryBytesReachService(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.RawQuery+" "+r.URL.Query().Get("x"))
	}))
	defer svc.Close()
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	host := strings.TrimPrefix(e.api.URL, "http://")
	for _, tc := range []struct{ query, want string }{
		{"x=\xc3\xa9t\xc3\xa9", "x=%C3%A9t%C3%A9 \xc3\xa9t\xc3\xa9"},
		{"x=a#b", "x=a%23b a#b"},
		{"x=%C3%A9&y=\x7e", "x=%C3%A9&y=~ \xc3\xa9"}, // already valid: unchanged
	} {
		head, body := rawGet(t, host, "/api/v1/agents/alpha/proxy/web/q?"+tc.query, e.token())
		if !strings.HasPrefix(head, "HTTP/1.1 200 ") || body != tc.want {
			t.Errorf("query %q: %q, body %q; want 200 %q", tc.query, strings.SplitN(head, "\r\n", 2)[0], body, tc.want)
		}
	}
}

// An escaped slash in a proxied path stays escaped on its way to the service, also when the
// path holds bytes net/http's URL would have escaped ('|', '{', raw UTF-8): url.URL drops its
// RawPath then, and kasd, reading r.URL.EscapedPath(), sent "group/project" for
// "group%2Fproject" — two path segments for one (found by a differential review).
func TestEscapedSlashReachesService(t *testing.T) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RequestURI)
	}))
	defer svc.Close()
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	host := strings.TrimPrefix(e.api.URL, "http://")
	for _, tc := range []struct{ path, want string }{
		{"/group%2Fproject/files", "/group%2Fproject/files"},
		{"/group%2Fproject/files/a|b", "/group%2Fproject/files/a%7Cb"},
		{"/a%2Fb/{x}?q=%2F", "/a%2Fb/%7Bx%7D?q=%2F"},
		{"/caf\xc3\xa9%2f", "/caf%C3%A9%2f"},
	} {
		head, body := rawGet(t, host, "/api/v1/agents/alpha/proxy/web"+tc.path, e.token())
		if !strings.HasPrefix(head, "HTTP/1.1 200 ") || body != tc.want {
			t.Errorf("path %q: %q, service saw %q; want 200 %q", tc.path, strings.SplitN(head, "\r\n", 2)[0], body, tc.want)
		}
	}
}

// rawGet sends a GET for target as written, bytes net/http's client would escape included, on
// a connection of its own, and returns the response's head and body.
func rawGet(t *testing.T, host, target, token string) (head, body string) {
	t.Helper()
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "GET "+target+" HTTP/1.1\r\nHost: kas\r\nConnection: close\r\nAuthorization: Bearer "+token+"\r\n\r\n")
	raw, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ = strings.Cut(string(raw), "\r\n\r\n")
	return head, body
}
