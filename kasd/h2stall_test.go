package kasd_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// README: --client-stall-timeout "over HTTP/2 ... ends the stream, not the connection". A
// stalled HTTP/2 upload's 408 carried Connection: close, which net/http's HTTP/2 server turns
// into a GOAWAY: the whole connection was drained and the client's next request needed a new
// connection (an HTTP/2 black-box review; Go's client reconnects in silence).
func TestClientStallHTTP2KeepsConnection(t *testing.T) {
	e := newEnv(t, withStall(testStall))
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		if f.Target == "/upload" {
			if _, err := io.Copy(io.Discard, sc); err == nil {
				_, _ = sc.Write(api.AppendFrame(nil, &api.Response{Status: 200}))
				_ = sc.Close()
			}
			return
		}
		_, _ = sc.Write(append(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: 2}), "ok"...))
		_ = sc.Close()
	})
	srv := httptest.NewUnstartedServer(e.server().Handler())
	srv.EnableHTTP2 = true
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	client := srv.Client()
	client.Timeout = 20 * time.Second
	get := func(method, path string, body io.Reader) *http.Response {
		req, _ := http.NewRequest(method, srv.URL+path, body)
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	r := get("GET", "/api/v1/agents/alpha/proxy/web/small", nil)
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("the first bytes")) }()
	resp := get("POST", "/api/v1/agents/alpha/proxy/web/upload", pr)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || resp.ProtoMajor != 2 {
		t.Fatalf("stalled upload: %d %s", resp.StatusCode, resp.Proto)
	}
	r = get("GET", "/api/v1/agents/alpha/proxy/web/small", nil)
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	if n := conns.Load(); n != 1 {
		t.Errorf("the client needed %d connections; a stalled HTTP/2 stream must end the stream, not the connection (GOAWAY after the 408)", n)
	}
}
