package kasd_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// Through a real agentd, a service that sends a body where its framing says there is none (a
// HEAD answer with a body, a common bug) does not have that body taken for the answer to the
// next client's request: agentd put the connection back in its pool with the bytes unread, and
// the next GET got them as its response ("smuggled"), every later answer on that connection
// shifted by one.
func TestServiceExtraBytesNotNextClientsResponse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
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
					answer := "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
					if req.Method == http.MethodHead {
						answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
					}
					if _, err := io.WriteString(c, answer); err != nil {
						return
					}
				}
			})
		}
	})
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": "http://" + ln.Addr().String()})
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
