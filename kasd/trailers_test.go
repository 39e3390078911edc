package kasd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A response with declared trailers and an empty body (a gRPC-style "trailers only" answer) is
// a valid response: agentd sends its head from Finish, after the body copy set the trailers,
// which must not travel in the head ("Trailer:X-Status" is no field name: 502 protocol_error).
// The trailers then reach the HTTP/1.1 client (kasd's writeResponse flushes the head of an
// empty framed body, which net/http would otherwise send with Content-Length: 0).
func TestServiceDeclaredTrailersEmptyBody(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Status")
		w.WriteHeader(200)
		w.Header().Set("X-Status", "7")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Trailer.Get("X-Status") != "7" {
		t.Errorf("trailers %v (Content-Length %d), want X-Status: 7", resp.Trailer, resp.ContentLength)
	}
}

// A service's declaration of the trailers its body ends with (Trailer: X-Sum, X-Count) reaches
// the client with them, as through httputil.ReverseProxy: it was dropped as hop-by-hop
// (independent differential review).
func TestServiceTrailerDeclarationReachesClient(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum, X-Count")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Sum", "abc")
		w.Header().Set("X-Count", "4")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "body" || resp.Trailer.Get("X-Sum") != "abc" || resp.Trailer.Get("X-Count") != "4" {
		t.Fatalf("%d %q trailers %v", resp.StatusCode, body, resp.Trailer)
	}
	// net/http's client takes the declaration into resp.Trailer's keys before the body.
	raw, _ := rawGet(t, strings.TrimPrefix(e.api.URL, "http://"), "/api/v1/agents/alpha/proxy/web/", e.token())
	if !strings.Contains(raw, "\r\nTrailer: ") || !strings.Contains(raw, "X-Sum") || !strings.Contains(raw, "X-Count") {
		t.Errorf("response head without the service's Trailer declaration:\n%s", raw)
	}
}

// Trailers a service sets without declaring them (http.TrailerPrefix, as Go services and
// gRPC-style servers do) reach the client, as they do through httputil.ReverseProxy.
func TestServiceUndeclaredResponseTrailers(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("body"))
		w.(http.Flusher).Flush()
		w.Header().Set(http.TrailerPrefix+"X-Sum", "abc")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	// Direct to the service, the trailer is there.
	dr, err := http.Get(svc.URL)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(dr.Body)
	dr.Body.Close()
	if dr.Trailer.Get("X-Sum") != "abc" {
		t.Fatalf("direct: trailers %v", dr.Trailer)
	}
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "body" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Trailer.Get("X-Sum") != "abc" {
		t.Errorf("through kasd: trailers %v, want X-Sum: abc", resp.Trailer)
	}
}
