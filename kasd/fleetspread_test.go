package kasd_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

// forwardedTo counts, at nd, the requests forwarded with success to each of peers.
func (f *fleetEnv) forwardedTo(nd *node, peers ...string) []float64 {
	out := make([]float64, len(peers))
	for i, p := range peers {
		out[i] = counter(f.t, nd.promReg, "kasd_forwarded_requests_total", map[string]string{"peer": p, "result": "ok"})
	}
	return out
}

// getWithID sends a GET through nd with the client's own X-Request-Id.
func (f *fleetEnv) getWithID(nd *node, agent, id string) int {
	req, _ := http.NewRequest("GET", nd.api.URL+"/api/v1/agents/"+agent+"/proxy/web/", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	req.Header.Set("X-Request-Id", id)
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A kasd that holds no connection of an agent spreads the requests it forwards over every peer
// that holds one: whether or not clients bring their own request ids, and after a peer drained
// and came back under the same id and address. (The round robin followed the counter of
// request ids kasd makes, which clients with their own ids never advance, so every forwarded
// request went to one peer; and a peer whose drained link had closed stayed last for good.)
func TestFleetForwardedSpreadsOverHolders(t *testing.T) {
	f := newFleetEnv(t, 3)
	origin, h1, h2 := f.nodes[0], f.nodes[1], f.nodes[2]
	svc := namedService(t, "svc")
	f.startAgent("alpha", "r1", svc.URL, []*node{h1, h2}, 2)
	f.waitHolders("alpha", "kas-1", "kas-2")
	f.warmLinks(origin, "alpha", 10)

	spread := func(what string, send func(i int) int) {
		t.Helper()
		before := f.forwardedTo(origin, "kas-1", "kas-2")
		const n = 40
		for i := range n {
			if code := send(i); code != http.StatusOK {
				t.Fatalf("%s: request %d: %d", what, i, code)
			}
		}
		after := f.forwardedTo(origin, "kas-1", "kas-2")
		a, b := after[0]-before[0], after[1]-before[1]
		if a+b != n || a < n/4 || b < n/4 {
			t.Errorf("%s: %v requests forwarded to kas-1 and %v to kas-2, want both about %d", what, a, b, n/2)
		}
	}
	spread("client request ids", func(i int) int { return f.getWithID(origin, "alpha", "client-"+strconv.Itoa(i)) })
	spread("kasd's request ids", func(int) int { code, _ := f.get(origin, "alpha", "/"); return code })

	// kas-2 drains (origin's link to it closes once its requests are done) and comes back
	// under the same id and addresses.
	agentAddr, peerAddr := h2.agentLn.Addr().String(), h2.peerLn.Addr().String()
	f.drain(h2)
	f.waitHolders("alpha", "kas-1")
	f.nodes[2] = f.startNodeAt("kas-2", agentAddr, peerAddr, nil)
	f.waitHolders("alpha", "kas-1", "kas-2")
	time.Sleep(time.Second) // past PeerRetryDelay of the closed link
	spread("after kas-2 came back", func(int) int { code, _ := f.get(origin, "alpha", "/"); return code })
}
