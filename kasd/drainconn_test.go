package kasd_test

import (
	"context"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"
)

// While draining, the client API still answers, but closes each keep-alive connection after its
// response (Connection: close), so clients move to new connections (through the load balancer)
// instead of sending a request into an idle connection just as the drain's end closes it.
func TestDrainClosesKeepAliveConnections(t *testing.T) {
	e := newEnv(t)
	// The agents list: it answers 200 while draining too (the agents themselves are asked to
	// move, so a proxied request may find none).
	get := func() (close bool, reused bool) {
		t.Helper()
		var got bool
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { got = i.Reused }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", e.url("/api/v1/agents"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "{") {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		return resp.Close, got
	}
	get()
	if c, reused := get(); c || !reused {
		t.Fatalf("before the drain: Connection close %v, reused %v; want a kept connection", c, reused)
	}
	e.srv.BeginDrain()
	if c, reused := get(); !c || !reused {
		t.Fatalf("draining: Connection close %v (reused %v); want the connection closed after the response", c, reused)
	}
	if c, reused := get(); !c || reused {
		t.Fatalf("draining, next request: Connection close %v, reused %v; want a new connection, closed again", c, reused)
	}
}

// A kasd that drains with no other kasd to take its agents (a single kasd restarting) keeps
// routing its clients' requests to them for its drain delay: the agent keeps serving on the
// connection that got GoAway until its redial succeeds or kasd closes it (make before break).
// It used to leave at once, and every request of the drain delay got 503 agent_not_connected.
func TestDrainWithNoOtherKasdKeepsServing(t *testing.T) {
	e := newEnv(t)
	a := e.startAgent("alpha", "r1", map[string]string{"web": echoService(t, "r1").URL})
	waitConnected(t, a, 1)
	e.srv.BeginDrain()
	deadline := time.Now().Add(1500 * time.Millisecond)
	n := 0
	for time.Now().Before(deadline) {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
		if body := readAll(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d during the drain: %d %s", n, resp.StatusCode, body)
		}
		n++
		time.Sleep(20 * time.Millisecond)
	}
	if n < 3 {
		t.Fatalf("only %d requests in the drain delay", n)
	}
}
