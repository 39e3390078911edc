package kasd_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A client that half-closes its connection after its request (net/http reads that as the
// client gone and ends the request's context) must not be told the request succeeded: kasd sent
// "200 OK" with an empty body when the route ended early, and ended a streamed body with its
// last chunk, as if complete, when the half-close came mid-body (found by a differential review
// against the service direct). Now the connection closes without a response, or with the body
// cut.
func TestHalfClosedClientGetsNoFakeResponse(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
			_, _ = io.WriteString(w, "hello world")
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			streamEvents(w, r, 20*time.Millisecond)
		}
	}))
	t.Cleanup(svc.Close)
	defer close(release)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)

	send := func(path string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /api/v1/agents/alpha/proxy/web%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", path, e.token())
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		return c, bufio.NewReader(c)
	}

	t.Run("before the response", func(t *testing.T) {
		c, br := send("/slow")
		time.Sleep(100 * time.Millisecond) // the request is with the service
		_ = c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(br)
		if len(got) > 0 {
			t.Fatalf("a half-closed client got %q (%v); want the connection closed without a response", got, err)
		}
	})
	t.Run("mid-stream", func(t *testing.T) {
		c, br := send("/stream")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || len(resp.TransferEncoding) == 0 {
			t.Fatalf("stream: %d %v", resp.StatusCode, resp.TransferEncoding)
		}
		first := make([]byte, 8)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		rest, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("the stream ended as if complete after the client half-closed (%d more bytes): want it cut", len(rest))
		}
	})
}
