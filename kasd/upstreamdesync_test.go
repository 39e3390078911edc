package kasd_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/qkas/qkas/api"
)

// rawHTTPService serves HTTP/1.1 on loopback, answering each request with the raw bytes answer
// returns (a service that breaks the rules net/http's server keeps), and returns its URL. An
// answer ending in "\x00close" closes the connection after the bytes before it.
func rawHTTPService(t *testing.T, answer func(req *http.Request) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					a, closeAfter := strings.CutSuffix(answer(req), "\x00close")
					if _, err := io.WriteString(c, a); err != nil || closeAfter {
						return
					}
				}
			})
		}
	})
	return "http://" + ln.Addr().String()
}

// Through a real agentd, a service that sends a body where its framing says there is none (a
// HEAD answer with a body, a common bug) does not have that body taken for the answer to the
// next client's request: agentd put the connection back in its pool with the bytes unread, and
// the next GET got them as its response ("smuggled"), every later answer on that connection
// shifted by one.
func TestServiceExtraBytesNotNextClientsResponse(t *testing.T) {
	svc := rawHTTPService(t, func(req *http.Request) string {
		if req.Method == http.MethodHead {
			return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
	})
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc})
	waitConnected(t, a, 1)

	for i := range 5 {
		req, _ := http.NewRequest(http.MethodHead, e.url("/api/v1/agents/alpha/proxy/web/page"), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		req, _ = http.NewRequest(http.MethodGet, e.url("/api/v1/agents/alpha/proxy/web/page"), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		if resp, err = e.client.Do(req); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !strings.Contains(got, "fresh") {
			t.Fatalf("GET %d after a HEAD: %d %q, want 200 \"fresh\"", i, resp.StatusCode, got)
		}
	}
}

// A service's response head that net/http's parser takes but HTTP does not allow on the wire
// reaches the client as HTTP allows it, not as a 502 blamed on the agent: a field name with a
// space ("Bad Name", which the stream protocol's decoder refuses) is dropped, and the fields a
// Connection field lists are dropped with it also when it says close (net/http deletes such a
// Connection field, and X-Foo reached the client). Both found by an independent differential
// review.
func TestServiceHeadFieldsCleaned(t *testing.T) {
	svc := rawHTTPService(t, func(req *http.Request) string {
		return "HTTP/1.1 200 OK\r\nBad Name: 2\r\nConnection: X-Foo, close\r\nX-Foo: secret\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
	})
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc})
	waitConnected(t, a, 1)
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("%d %q, want 200 \"ok\"", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Kept") != "yes" || resp.Header.Get("X-Foo") != "" || len(resp.Header["Bad Name"]) != 0 {
		t.Fatalf("header %v: want X-Kept, and neither X-Foo nor Bad Name", resp.Header)
	}
}

// A service whose response breaks after its head (a body short of its Content-Length, then
// the connection closed) is the service's failure: the client's response is cut, and kasd
// counts service_unavailable, not agent_failed ("the peer reset the stream", which blamed the
// agent; found by an independent differential review). If the break comes before kasd sent the
// head on, the client gets 502 service_unavailable.
func TestServiceBodyBreakIsNotAgentFailure(t *testing.T) {
	svc := rawHTTPService(t, func(req *http.Request) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello\x00close"
	})
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": svc})
	waitConnected(t, a, 1)
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/"), nil)
	req.Header.Set("Authorization", "Bearer "+e.token())
	if resp, err := e.client.Do(req); err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusBadGateway:
			// The break came before kasd had sent the head on: the client is told why.
			if got := resp.Header.Get(api.HeaderError); got != "service_unavailable" {
				t.Fatalf("502 %s %q %q, want service_unavailable", api.HeaderError, got, body)
			}
		case rerr == nil:
			t.Fatalf("%d %q: a response the service cut reached the client as complete", resp.StatusCode, body)
		}
	}
	waitCounter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "service_unavailable"}, 1)
	if n := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "agent_failed"}); n != 0 {
		t.Errorf("kasd_api_errors_total{code=agent_failed} = %v for the service's failure", n)
	}
}
