package kasd_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// A response with declared trailers and an empty body (a gRPC-style "trailers only" answer) is
// a valid response: agentd sends its head from Finish, after the body copy set the trailers,
// which must not travel in the head ("Trailer:X-Status" is no field name: 502 protocol_error).
// That the trailers then reach an HTTP/1.1 client is kasd's writeResponse's part (an empty
// framed body must not be given Content-Length: 0), tested with it.
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
}
