package kasd_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// A streaming response (SSE, a watch, logs -f) whose service sends its head at once but its
// first event only later must reach the client as a head at once: kasd's
// ResponseHeaderTimeout (and a client's Qkas-Timeout) bound the wait for the head, and the
// docs say "the API server sends headers of a watch or a log stream at once".
func TestStreamHeadBeforeFirstEvent(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.ResponseHeaderTimeout = time.Second })
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush() // the head leaves the service now
		select {
		case <-time.After(2500 * time.Millisecond): // a quiet stream: first event later
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: first\n\n")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"events": svc.URL})
	waitConnected(t, a, 1)
	start := time.Now()
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/events/", nil)
	headAfter := time.Since(start)
	body := readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d after %v (%s): the service sent its head at once", resp.StatusCode, headAfter, body)
	}
	if headAfter > time.Second {
		t.Errorf("response head reached the client after %v; the service sent it at once", headAfter)
	}
}

// kasd passes on the trailers of a framed response whose body is empty (a gRPC-style
// "trailers only" answer): net/http must not be left to compute Content-Length: 0 for it,
// which drops the trailers on HTTP/1.1 (httputil.ReverseProxy flushes the head for this).
func TestEmptyFramedBodyKeepsTrailers(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		out := api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1, Flags: api.FlagFramed})
		out = api.AppendFrame(out, &api.Trailers{Header: []api.KV{{Key: "X-Status", Value: "7"}}})
		sc.Write(out)
		sc.Close()
	})
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Trailer.Get("X-Status") != "7" {
		t.Errorf("trailers %v (Content-Length %d, TE %v), want X-Status: 7", resp.Trailer, resp.ContentLength, resp.TransferEncoding)
	}
}

// kasd's own part of the head delay: an agent that sends the head of a streamed response at
// once and its first bytes two seconds later; the client must get the head at once.
func TestKasdFlushesStreamHead(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		sc.Write(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1, Header: []api.KV{{Key: "Content-Type", Value: "text/event-stream"}}}))
		time.Sleep(2 * time.Second)
		sc.Write([]byte("data: first\n\n"))
		sc.Close()
	})
	start := time.Now()
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
	headAfter := time.Since(start)
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "data: first\n\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if headAfter > time.Second {
		t.Errorf("the head reached the client after %v; the agent sent it at once", headAfter)
	}
}

// A quiet stream (no event yet) ended by the client's Qkas-Deadline must still say so: the
// documented trailer Qkas-Error: deadline_exceeded. Without it, the client gets a clean,
// complete, empty 200.
func TestDeadlineOnQuietStreamKeepsTrailer(t *testing.T) {
	e := newEnv(t)
	e.startFakeAgent("alpha", []string{"web"}, func(sc *quic.StreamConn, f *api.Request) {
		sc.Write(api.AppendFrame(nil, &api.Response{Status: 200, ContentLength: -1, Header: []api.KV{{Key: "Content-Type", Value: "text/event-stream"}}}))
		sc.Read(make([]byte, 1))    // FIN of the request
		time.Sleep(5 * time.Second) // nothing to say yet; kasd resets the stream before that
		sc.Close()
	})
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil, kasd.HeaderDeadline, "1s")
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if got := resp.Trailer.Get(api.HeaderError); got != "deadline_exceeded" {
		t.Errorf("trailer %s = %q (Content-Length %d), want deadline_exceeded", api.HeaderError, got, resp.ContentLength)
	}
}
