package kasd_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
)

// A stream still running when kasd closes at the end of its shutdown grace ends cleanly, its
// trailer saying shutting_down, as the API server ends its watches when it stops: the client
// reconnects knowing why. It was cut mid-body (a 200 ending in "unexpected EOF", no reason;
// found by an independent rolling-restart run with 60 s SSE streams and a 30 s grace). A body
// of known length cut the same way is still cut: it cannot end as if complete.
func TestStreamEndsCleanlyAtShutdownGrace(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.ShutdownGrace = time.Second })
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", "1000000")
		} else {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		streamEvents(w, r, 50*time.Millisecond)
	}))
	t.Cleanup(svc.Close)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)

	open := func(path string) (*http.Response, *bufio.Reader) {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web"+path, nil)
		br := bufio.NewReader(resp.Body)
		if line, err := br.ReadString('\n'); resp.StatusCode != 200 || err != nil || !strings.HasPrefix(line, "data: 0") {
			t.Fatalf("%s: %d %q %v", path, resp.StatusCode, line, err)
		}
		return resp, br
	}
	stream, sbr := open("/stream")
	defer stream.Body.Close()
	sized, zbr := open("/sized")
	defer sized.Body.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.server().Shutdown(ctx); err == nil {
		t.Error("Shutdown with two requests in flight at the end of the grace reported no error")
	}
	if _, err := io.ReadAll(sbr); err != nil {
		t.Fatalf("the stream was cut (%v) after %v, want it ended cleanly", err, time.Since(start))
	}
	if got := stream.Trailer.Get(api.HeaderError); got != api.CodeShuttingDown.String() {
		t.Errorf("stream trailer %s = %q, want %q", api.HeaderError, got, api.CodeShuttingDown)
	}
	if _, err := io.ReadAll(zbr); err == nil {
		t.Error("a body of known length cut at the shutdown ended as if complete")
	}
}

// A request that arrived before the drain began and is answered after it closes its connection
// too (Connection: close), as those that arrive while draining do: its client's next request
// on the connection raced the drain's close, and a POST written as it closed was lost (26-138
// per kasd SIGTERM with --drain-delay 0 in an independent rolling-restart run).
func TestAnswerAfterDrainBeganClosesConnection(t *testing.T) {
	e := newEnv(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(svc.Close)
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)

	if resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/fast", nil); readAll(t, resp) != "ok" || resp.Close {
		t.Fatalf("before the drain: close %v", resp.Close)
	}
	type result struct {
		close bool
		body  string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/slow"), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := e.client.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{close: resp.Close, body: string(b), err: err}
	}()
	<-arrived
	e.server().BeginDrain()
	close(release)
	r := <-done
	if r.err != nil || r.body != "ok" || !r.close {
		t.Fatalf("answered after the drain began: %q %v, Connection: close %v; want it", r.body, r.err, r.close)
	}
}

// Shutdown does not close the Server while Config.ShutdownWaitsFor holds it (kasd's main: the
// API server has client connections open): a request that arrived on a keep-alive connection
// after those in flight had ended found the Server closed and got 503 shutting_down (an
// independent rolling-restart run: a GET 0.5 s after the drain delay). Held, it is forwarded
// to the agent's holder as before the drain.
func TestShutdownWaitsForClientConnections(t *testing.T) {
	var hold atomic.Bool
	hold.Store(true)
	f := newFleetEnv(t, 0)
	f.config = func(c *kasd.Config) {
		c.ShutdownGrace = 10 * time.Second
		c.ShutdownWaitsFor = hold.Load
	}
	f.nodes = append(f.nodes, f.startNode("kas-0"), f.startNode("kas-1"))
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	t.Cleanup(svc.Close)
	waitConnected(t, f.startAgent("alpha", "pod", svc.URL, f.nodes[1:2], 1), 1)
	f.waitHolders("alpha", "kas-1")
	f.warmLinks(f.nodes[0], "alpha", 4)

	done := make(chan error, 1)
	go func() { done <- f.nodes[0].srv.Shutdown(context.Background()) }()
	time.Sleep(1500 * time.Millisecond) // nothing in flight, peers told to leave
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while held", err)
	default:
	}
	if code, body := f.get(f.nodes[0], "alpha", "/"); code != 200 || body != "ok" {
		t.Fatalf("a request during the held shutdown: %d %q", code, body)
	}
	hold.Store(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return once released")
	}
}

// streamEvents writes "data: N\n\n" events to w, flushed, every interval until the request
// ends or a write fails: a service streaming server-sent events.
func streamEvents(w http.ResponseWriter, r *http.Request, interval time.Duration) {
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(interval):
		}
	}
}
