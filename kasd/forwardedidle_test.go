package kasd_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/qkas/qkas/kasd"
)

// idleStreamService sends one event, then nothing until its client goes away, which it reports
// on gone.
func idleStreamService(t *testing.T, gone chan<- struct{}) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: 0\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // a quiet watch: nothing more until it is canceled
		gone <- struct{}{}
	}))
	t.Cleanup(s.Close)
	return s
}

// readFirstThenLeave reads the first line of a streamed response and closes the client's
// connection mid-stream.
func readFirstThenLeave(t *testing.T, client *http.Client, url, tok string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: 0\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	resp.Body.Close() // mid-stream: net/http closes the connection
	client.CloseIdleConnections()
}

// A client that leaves an idle stream (a watch, an SSE stream between events) through the
// forwarded route must end the request at the agent and at the service, as on the local route:
// otherwise every abandoned watch holds a stream to the agent and a connection to the service
// until the service happens to send something.
func TestForwardedClientGoneEndsIdleStream(t *testing.T) {
	f := newFleetEnv(t, 2)
	gone := make(chan struct{}, 4)
	svc := idleStreamService(t, gone)
	a := f.startAgent("alpha", "pod-1", svc.URL, []*node{f.nodes[1]}, 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-1")
	for _, tc := range []struct {
		route string
		nd    *node
	}{{"local", f.nodes[1]}, {"forwarded", f.nodes[0]}} {
		readFirstThenLeave(t, f.client, tc.nd.api.URL+"/api/v1/agents/alpha/proxy/web/watch", f.token())
		select {
		case <-gone:
		case <-time.After(5 * time.Second):
			t.Errorf("%s route: the client left 5s ago, the service's request is still open", tc.route)
		}
	}
}

// The consequence of abandoned idle forwarded streams staying open at the holder: they hold
// its per-agent in-flight slots, so that after MaxInflightPerAgent clients have left a quiet
// watch through another kasd, the agent is "overloaded" for everyone.
func TestForwardedAbandonedStreamsHoldInflightSlots(t *testing.T) {
	f := newFleetEnv(t, 1)
	f.config = func(c *kasd.Config) { c.MaxInflightPerAgent = 2 }
	f.nodes = append(f.nodes, f.startNode("kas-1"))
	gone := make(chan struct{}, 8)
	svc := idleStreamService(t, gone)
	a := f.startAgent("alpha", "pod-1", svc.URL, []*node{f.nodes[1]}, 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-1")
	for range 2 {
		readFirstThenLeave(t, f.client, f.nodes[0].api.URL+"/api/v1/agents/alpha/proxy/web/watch", f.token())
	}
	time.Sleep(2 * time.Second) // the clients left long ago
	req, _ := http.NewRequest("GET", f.nodes[1].api.URL+"/api/v1/agents/alpha/proxy/web/watch", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("a new request after two clients left: %d %s", resp.StatusCode, b)
	}
}
