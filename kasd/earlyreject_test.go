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

// rejectService answers 403 "nope\n" at once, reading none of the request body (as a service
// that refuses an upload by its headers does).
func rejectService(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, "nope\n")
	}))
	t.Cleanup(s.Close)
	return s
}

const earlyRejectUpload = 20 << 20

// A service's early answer to an upload it does not read reaches the client whole, however much
// of the upload is still on its way: over HTTP/1.1 kasd used to end the connection's reads at
// once when its handler returned, so the close reset the connection, often before the client
// had read the answer ("connection reset by peer" where the service's 403 was due).
func TestEarlyRejectReachesHTTP1Client(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": rejectService(t).URL})
	waitConnected(t, a, 1)
	for i := range 15 {
		chunked := i%3 == 1 // curl -T of a pipe, or any client streaming a body of unknown length
		// curl adds Expect: 100-continue to uploads over 1 MiB: kasd answers 100 itself, and
		// net/http then closes at once after the handler (it lingers only for a body it knows:
		// closedRequestBodyEarly), resetting 22 of 40 of curl's uploads before the answer.
		expect := i%3 == 2
		c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		framing := fmt.Sprintf("Content-Length: %d", earlyRejectUpload)
		if chunked {
			framing = "Transfer-Encoding: chunked"
		}
		if expect {
			framing += "\r\nExpect: 100-continue"
		}
		fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/ HTTP/1.1\r\nHost: kasd\r\nAuthorization: Bearer %s\r\n%s\r\n\r\n", e.token(), framing)
		resp, err := uploadLikeCurl(c, earlyRejectUpload, chunked)
		if err != nil {
			c.Close()
			t.Fatalf("request %d (chunked %v, expect %v): %v", i, chunked, expect, err)
		}
		b, err := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != http.StatusForbidden || string(b) != "nope\n" || err != nil {
			t.Fatalf("request %d (chunked %v, expect %v): %d %q %v, want 403 \"nope\\n\"", i, chunked, expect, resp.StatusCode, b, err)
		}
	}
}

// uploadLikeCurl sends n bytes on c (in chunks of the chunked coding, if chunked) as curl sends an upload: it looks for an answer between
// writes, and a failed write (a reset) ends the request, whatever answer was on its way.
func uploadLikeCurl(c net.Conn, n int, chunked bool) (*http.Response, error) {
	br := bufio.NewReader(c)
	chunk := make([]byte, 64<<10)
	if chunked { // one chunk of the chunked coding: 65,528 bytes and 8 of framing
		copy(chunk, "fff8\r\n")
		copy(chunk[len(chunk)-2:], "\r\n")
	}
	deadline := time.Now().Add(30 * time.Second)
	off := 0 // in chunk: a write cut by its deadline goes on where it stopped
	for sent := 0; time.Now().Before(deadline); {
		if sent < n {
			_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			w, err := c.Write(chunk[off:])
			sent += w
			off = (off + w) % len(chunk)
			if ne, ok := err.(net.Error); err != nil && (!ok || !ne.Timeout()) {
				return nil, fmt.Errorf("upload failed after %d bytes, before an answer was read: %w", sent, err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := br.Peek(1); err == nil {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err == nil && resp.StatusCode == http.StatusContinue {
				continue // the go-ahead of Expect: 100-continue
			}
			return resp, err
		}
	}
	return nil, fmt.Errorf("no answer")
}

// The same over HTTP/2: the answer's body must not be cut.
func TestEarlyRejectReachesHTTP2Client(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": rejectService(t).URL})
	waitConnected(t, a, 1)
	srv := httptest.NewUnstartedServer(e.server().Handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	client := srv.Client()
	client.Timeout = 30 * time.Second
	for i := range 10 {
		req, _ := http.NewRequest("POST", srv.URL+"/api/v1/agents/alpha/proxy/web/", io.LimitReader(zeros{}, earlyRejectUpload))
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusForbidden || string(b) != "nope\n" || err != nil {
			t.Fatalf("request %d: %s %d %q %v, want HTTP/2 403 \"nope\\n\"", i, resp.Proto, resp.StatusCode, b, err)
		}
	}
}
