package agentd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func upstreamFor(t *testing.T, h http.Handler) (*upstream, *httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	up := newUpstream(u, time.Second, 4)
	t.Cleanup(up.CloseIdleConnections)
	return up, srv, &conns
}

func get(t *testing.T, up *upstream, srvURL, path string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", srvURL+path, nil)
	resp, err := up.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

// Sequential requests reuse one keep-alive connection, with fixed-length and chunked bodies.
func TestUpstreamReusesConnections(t *testing.T) {
	up, srv, conns := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
			return
		}
		io.WriteString(w, "hello")
	}))
	for i := range 10 {
		path := "/"
		want := "hello"
		if i%2 == 1 {
			path, want = "/chunked", "ab"
		}
		if _, body, err := get(t, up, srv.URL, path); err != nil || body != want {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 10 sequential requests, want 1", n)
	}
}

// A pooled connection the service closed while idle is detected before reuse (or retried once
// for a request without a body): the request succeeds on a new connection.
func TestUpstreamServiceClosedIdleConnection(t *testing.T) {
	up, srv, conns := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	if _, body, err := get(t, up, srv.URL, "/"); err != nil || body != "ok" {
		t.Fatalf("%q %v", body, err)
	}
	srv.CloseClientConnections() // the service drops its idle keep-alive connections
	time.Sleep(50 * time.Millisecond)
	if _, body, err := get(t, up, srv.URL, "/"); err != nil || body != "ok" {
		t.Fatalf("after the service closed the idle connection: %q %v", body, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// A response head over the limit is refused without reading it all.
func TestUpstreamResponseHeadLimit(t *testing.T) {
	up, srv, _ := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 64 {
			w.Header().Set("X-Big-"+string(rune('a'+i%26))+strings.Repeat("x", i), strings.Repeat("v", 64<<10))
		}
		io.WriteString(w, "ok")
	}))
	up.maxHead = 64 << 10
	_, _, err := get(t, up, srv.URL, "/")
	if !errors.Is(err, errResponseHeadTooLarge) {
		t.Fatalf("err = %v, want errResponseHeadTooLarge", err)
	}
}

// The request context ends a response that never comes.
func TestUpstreamContextEndsExchange(t *testing.T) {
	release := make(chan struct{})
	up, srv, _ := upstreamFor(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/", nil)
	start := time.Now()
	if _, err := up.RoundTrip(req); err == nil {
		t.Fatal("no error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}
