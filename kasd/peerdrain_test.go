package kasd_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// crash stops a node as kill -9 does: its registry stops first, so nothing it held is
// unpublished (the lease is left to expire), then its sockets and server go.
func (f *fleetEnv) crash(nd *node) {
	nd.stopped = true
	_ = nd.reg.Close()
	nd.api.CloseClientConnections()
	nd.api.Close()
	nd.agentLn.Close()
	nd.peerLn.Close()
	nd.srv.Close()
	nd.wg.Wait()
	nd.etcd.Close()
}

// TestPeerCrashedDuringDrainGetsTypedErrors: kas-0 drains (GoAway to kas-1, which closes its idle link to
// it) and dies before its lease expires, so the registry still names it as a holder of alpha
// for the TTL (as after any kill -9: here a stale claim stands for the agents kas-0 held when
// it died, which otherwise race away on GoAway). 200 concurrent requests to kas-1 for alpha must
// each get a typed HTTP error, never a dropped connection.
func TestPeerCrashedDuringDrainGetsTypedErrors(t *testing.T) {
	f := newFleetEnv(t, 0)
	f.ttl = 15 * time.Second // the dead kasd's keys outlive the test's load
	f.nodes = append(f.nodes, f.startNode("kas-0"), f.startNode("kas-1"))
	svc := namedService(t, "beta")
	b := f.startAgent("beta", "pod", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, b, 1)
	f.waitHolders("beta", "kas-0")
	f.warmLinks(f.nodes[1], "beta", 4) // kas-1's link to kas-0 is up
	f.nodes[0].reg.SetAgentConnections("alpha", 1)
	f.waitHolders("alpha", "kas-0")

	f.nodes[0].srv.BeginDrain()
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, f.nodes[1].promReg, "kasd_peer_links_drained_total", "", "") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("kas-1 never closed its link to the draining kas-0")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.crash(f.nodes[0])
	time.Sleep(1200 * time.Millisecond) // past the peer retry delay: the next request redials
	t.Logf("after crash: holders of alpha %v", f.nodes[1].reg.Holders("alpha"))

	var wg sync.WaitGroup
	var mu sync.Mutex
	typed, dropped, sample := 0, map[string]int{}, map[string]int{}
	client := &http.Client{Timeout: 20 * time.Second}
	tok := f.token()
	for range 200 {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", f.nodes[1].api.URL+"/api/v1/agents/alpha/proxy/web/x", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				msg := err.Error()
				if i := strings.LastIndex(msg, ": "); i >= 0 {
					msg = msg[i+2:]
				}
				dropped[msg]++
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 && strings.Contains(string(b), `"error":`) {
				sample[fmt.Sprintf("%d %.100s", resp.StatusCode, b)]++
				typed++
			} else {
				dropped[fmt.Sprintf("%d %.80s", resp.StatusCode, b)]++
			}
		})
	}
	wg.Wait()
	t.Logf("%d typed errors; sample: %v", typed, sample)
	if len(dropped) > 0 {
		t.Errorf("requests without a typed answer: %v", dropped)
	}
}

// TestStatusProbeOfPeerCrashedDuringDrain: the same fault, seen only by the status page
// (no request traffic). Polling kas-1's status while kas-0's lease is still alive must not
// crash kas-1. On the current code the probe goroutine panics and takes the process (here: the
// test binary) down.
func TestStatusProbeOfPeerCrashedDuringDrain(t *testing.T) {
	f := newFleetEnv(t, 0)
	f.ttl = 15 * time.Second
	f.nodes = append(f.nodes, f.startNode("kas-0"), f.startNode("kas-1"))
	svc := namedService(t, "alpha")
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	f.warmLinks(f.nodes[1], "alpha", 2)
	f.nodes[0].srv.BeginDrain()
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, f.nodes[1].promReg, "kasd_peer_links_drained_total", "", "") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("kas-1 never closed its link to the draining kas-0")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.crash(f.nodes[0])
	tok := f.token()
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); {
		st, err := statusFor(t, f.nodes[1].srv, tok)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Peers {
			if p.ID == "kas-0" {
				t.Logf("kas-0: %s", p.State)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}
