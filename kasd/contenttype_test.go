package kasd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// A response without Content-Type reaches the client without one: kasd's net/http used to add
// one it guessed from the body ("text/html; charset=utf-8" for an HTML-looking body), next to
// the X-Content-Type-Options: nosniff kasd sends. One the service sent is kept.
func TestNoContentTypeNotGuessed(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/typed" {
			w.Header().Set("Content-Type", "application/x-typed")
		} else {
			w.Header()["Content-Type"] = nil // as a service that sends none
		}
		_, _ = io.WriteString(w, "<html><body>hello</body></html>")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	for path, want := range map[string][]string{"/untyped": nil, "/typed": {"application/x-typed"}} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+path, nil)
		body := readAll(t, resp)
		if got := resp.Header.Values("Content-Type"); resp.StatusCode != 200 || len(got) != len(want) || len(want) == 1 && got[0] != want[0] {
			t.Errorf("%s: %d Content-Type %q, want %q (body %q)", path, resp.StatusCode, got, want, body)
		}
	}
}
