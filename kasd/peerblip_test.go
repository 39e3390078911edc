package kasd_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// startNodeViaRelay is startNode with the peer address published in the registry replaced by a
// relay in front of the node's peer listener.
func (f *fleetEnv) startNodeViaRelay(id string) (*node, *udpRelay) {
	t := f.t
	cert, _, err := quic.DevCertificate(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{id: id, promReg: prometheus.NewRegistry()}
	if nd.agentLn, err = quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.peerLn, err = quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNPeer), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	relay := newUDPRelay(t, nd.peerLn.Addr().String())
	if nd.etcd, err = registry.NewClient(registry.ClientConfig{Endpoints: f.etcd.Endpoints()}); err != nil {
		t.Fatal(err)
	}
	log := zerolog.Nop()
	if testing.Verbose() {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Str("node", id).Logger()
	}
	nd.reg, err = registry.New(nd.etcd, registry.Config{TTL: f.ttl}, registry.Instance{ID: id, PeerAddr: relay.pc.LocalAddr().String()}, log, nd.promReg)
	if err != nil {
		t.Fatal(err)
	}
	nd.srv, err = kasd.New(kasd.Config{
		InstanceID:   id,
		AgentAuth:    kasd.TokenFileAuth{Store: f.store},
		ClientAuth:   &auth.Verifier{Key: f.secret, AllowAnyAgent: true},
		RouteTimeout: 3 * time.Second,
		Fleet:        &kasd.FleetConfig{Registry: nd.reg, PeerSecret: f.peerKey},
		Log:          &log,
		Registerer:   nd.promReg,
	})
	if err != nil {
		t.Fatal(err)
	}
	nd.wg.Go(func() { _ = nd.srv.ServeAgents(context.Background(), nd.agentLn) })
	nd.wg.Go(func() { _ = nd.srv.ServePeers(context.Background(), nd.peerLn) })
	nd.api = httptest.NewServer(nd.srv.Handler())
	return nd, relay
}

// (found by review) A peer link that was lost and can be dialled again: requests that started while it was down
// and are still within RouteTimeout must go to the peer once PeerRetryDelay has passed, not wait
// for a registry change that never comes and fail with 503. Here the path from kas-1 to kas-0
// (alpha's only holder) is dark for 1.5 s (the link's idle timeout is 1 s), then healthy again;
// kas-1 sends a GET to alpha every 50 ms. No request's bytes reached kas-0 while it was dark
// (nothing passed), and every request has at least 3.5 s of its RouteTimeout (the daemons' 5 s,
// counted from its arrival) after the path healed: enough for the link to be found lost, the
// retry delay, and a dial that failed in the dark to time out.
func TestPeerLinkBlipRequestsRetryAfterRedialDelay(t *testing.T) {
	f := newFleetEnv(t, 0)
	n0, relay := f.startNodeViaRelay("kas-0")
	f.config = func(c *kasd.Config) { c.RouteTimeout = 5 * time.Second }
	f.nodes = append(f.nodes, n0, f.startNode("kas-1"))
	// The service notes each request it served: one it served whose answer was lost in the dark
	// (it passed the relay just before the blackhole) may fail with 502 agent_failed.
	var seen sync.Map
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Query().Get("i"), true)
		time.Sleep(10 * time.Millisecond)
		fmt.Fprintf(w, "alpha %s 0", r.Method)
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod-a", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	f.warmLinks(f.nodes[1], "alpha", 3)

	type result struct {
		id         string
		start, end time.Time
		code       int
		body       string
	}
	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var next atomic.Int64
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			id := fmt.Sprint(next.Add(1))
			wg.Go(func() {
				start := time.Now()
				code, body := f.get(f.nodes[1], "alpha", "/?i="+id)
				mu.Lock()
				results = append(results, result{id, start, time.Now(), code, body})
				mu.Unlock()
			})
		}
	})
	time.Sleep(300 * time.Millisecond)
	relay.blackhole.Store(true)
	darkAt := time.Now()
	time.Sleep(1500 * time.Millisecond)
	relay.blackhole.Store(false)
	healed := time.Now()
	time.Sleep(4 * time.Second)
	close(stop)
	wg.Wait()
	var badAfterHeal, badDuring, ok int
	for _, r := range results {
		good := r.code == 200 && strings.HasPrefix(r.body, "alpha GET")
		_, served := seen.Load(r.id)
		switch {
		case good:
			ok++
		case served && r.code == http.StatusBadGateway && strings.Contains(r.body, "agent_failed"):
			t.Logf("served, answer lost in the dark: started %v after the dark began: %d %.150s", r.start.Sub(darkAt).Round(time.Millisecond), r.code, r.body)
		case r.start.After(healed):
			badAfterHeal++
			if badAfterHeal <= 5 {
				t.Logf("started %v after the heal, answered %v later: %d %.150s", r.start.Sub(healed).Round(time.Millisecond), r.end.Sub(r.start).Round(time.Millisecond), r.code, r.body)
			}
		default:
			badDuring++
			if badDuring <= 3 {
				t.Logf("started %v after the dark began, answered %v later: %d %.150s", r.start.Sub(darkAt).Round(time.Millisecond), r.end.Sub(r.start).Round(time.Millisecond), r.code, r.body)
			}
		}
	}
	t.Logf("%d ok, %d failed that started in the dark, %d failed that started after the heal", ok, badDuring, badAfterHeal)
	if badAfterHeal > 0 || badDuring > 0 {
		t.Errorf("%d requests that started after the path to kas-0 healed failed, and %d that started while it was dark (none reached kas-0; all had at least 3.5 s of RouteTimeout left after the heal)", badAfterHeal, badDuring)
	}
}

// A request that never reached an agent because the path to its only holder stayed dark for the
// whole route timeout gets 503 agent_not_connected, so that the client knows it was not
// processed and may send it again, whatever its method: not the 502 agent_failed of a request
// that may have been executed. Concurrent POSTs, none of which the service may see.
func TestNeverSentRequestIsUnavailable(t *testing.T) {
	f := newFleetEnv(t, 0)
	n0, relay := f.startNodeViaRelay("kas-0")
	f.nodes = append(f.nodes, n0, f.startNode("kas-1"))
	var served atomic.Int64
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			served.Add(1)
		}
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod-a", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	f.warmLinks(f.nodes[1], "alpha", 3)

	relay.blackhole.Store(true) // kas-1's path to kas-0 goes dark for longer than the route timeout
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	for i := range 40 {
		wg.Go(func() {
			code, body := f.do(f.nodes[1], "POST", "alpha", "/", strings.NewReader(strings.Repeat("x", 100+i)))
			key := fmt.Sprint(code)
			if code == http.StatusServiceUnavailable && strings.Contains(body, "agent_not_connected") {
				key = "503 agent_not_connected"
			} else {
				t.Logf("%d %.200s", code, body)
			}
			mu.Lock()
			codes[key]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if n := served.Load(); n != 0 {
		t.Fatalf("the service saw %d POSTs through a dark path", n)
	}
	if codes["503 agent_not_connected"] != 40 {
		t.Errorf("answers %v, want all 40 503 agent_not_connected: none reached the agent", codes)
	}
}
