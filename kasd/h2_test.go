package kasd_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// h2API serves e's API over TLS with HTTP/2 (as kasd does with --api-tls-*).
func h2API(t *testing.T, e *env) *httptest.Server {
	srv := httptest.NewUnstartedServer(e.server().Handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// rvService answers /status?code=N with N and no body, and /echo with the request's trailers.
func rvService(t *testing.T) string {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/echo" {
			io.Copy(io.Discard, r.Body)
			b, _ := json.Marshal(r.Trailer)
			w.Write(b)
			return
		}
		var code int
		fmt.Sscan(r.URL.Query().Get("code"), &code)
		if code == 304 {
			w.Header().Set("ETag", `"x"`)
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(svc.Close)
	return svc.URL
}

// RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204; in a 304 only the length the
// 200 would have had. Over HTTP/1.1 net/http removes it; over HTTP/2 kasd's Content-Length: 0
// went out as is (an HTTP/2 black-box review).
func TestHTTP2NoContentLengthOn204And304(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": rvService(t)})
	waitConnected(t, a, 1)
	srv := h2API(t, e)
	for _, code := range []int{204, 304} {
		req, _ := http.NewRequest("GET", srv.URL+fmt.Sprintf("/api/v1/agents/alpha/proxy/web/status?code=%d", code), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != code {
			t.Fatalf("%s %d", resp.Proto, resp.StatusCode)
		}
		if v, ok := resp.Header["Content-Length"]; ok {
			t.Errorf("HTTP/2 %d carries Content-Length: %v (HTTP/1.1 carries none)", code, v)
		}
	}
}
