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

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
)

// lengthService answers the length of the request body it read to the end.
func lengthService(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "length %d", n)
	}))
	t.Cleanup(s.Close)
	return s
}

// --response-header-timeout counts from the request body's last byte, not from the request's
// start: an upload that takes longer than it, moving all along, to a service that answers once it
// has read it (most do), is not cut with 504 while its bytes still flow. Local and forwarded.
func TestSlowUploadOutlastsHeaderTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	upload := func() io.Reader { return &trickle{n: 12, interval: 150 * time.Millisecond} } // 1.8 s, 12 KiB
	want := fmt.Sprintf("length %d", 12*1024)

	t.Run("local", func(t *testing.T) {
		e := newEnv(t, func(c *kasdConfig) { c.ResponseHeaderTimeout = timeout })
		a := e.startAgent("alpha", "pod-1", map[string]string{"web": lengthService(t).URL})
		waitConnected(t, a, 1)
		resp := e.do("POST", "/api/v1/agents/alpha/proxy/web/", upload())
		if body := readAll(t, resp); resp.StatusCode != 200 || body != want {
			t.Fatalf("%d %q (%s), want 200 %q", resp.StatusCode, body, resp.Header.Get("Qkas-Error"), want)
		}
	})
	t.Run("forwarded", func(t *testing.T) {
		f := newFleetEnv(t, 0)
		f.config = func(c *kasd.Config) { c.ResponseHeaderTimeout = timeout }
		n1, n2 := f.startNode("n1"), f.startNode("n2")
		f.nodes = append(f.nodes, n1, n2)
		f.startAgent("alpha", "pod-1", lengthService(t).URL, []*node{n1}, 1)
		f.waitHolders("alpha", "n1")
		f.warmLinks(n2, "alpha", 3)
		if status, body := f.do(n2, "POST", "alpha", "/", upload()); status != 200 || body != want {
			t.Fatalf("%d %q, want 200 %q", status, body, want)
		}
	})
}

// The header timeout still bounds a request whose service neither reads its body nor answers:
// waiting for the agent to take the body's bytes is the agent's time.
func TestUnreadUploadTimesOut(t *testing.T) {
	e := newEnv(t, func(c *kasdConfig) { c.ResponseHeaderTimeout = 500 * time.Millisecond })
	release := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // reads nothing, answers nothing
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(stuck.Close)
	t.Cleanup(func() { close(release) })
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": stuck.URL})
	waitConnected(t, a, 1)
	// A raw connection: the response comes while the client is still sending (net/http's
	// client may report its failed write instead).
	c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/ HTTP/1.1\r\nHost: kasd\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", e.token(), 1<<30)
	go func() { _, _ = io.Copy(c, io.LimitReader(zeros{}, 1<<30)) }()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(api.HeaderError) != api.CodeDeadlineExceeded.String() {
		t.Fatalf("after %v: %d %s %q, want 504 deadline_exceeded", time.Since(start).Round(time.Millisecond), resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
	if !strings.Contains(body, "no response head") {
		t.Errorf("body %q", body)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
