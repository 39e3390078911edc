package kasd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/quic"
)

// TestReplacedReplicaKeepsInFlightRequests: agentd is replaced by a newer process of the
// same replica (an in-place upgrade: the new process starts, then the old one is stopped
// gracefully) while 150 requests (GETs and POSTs, bodies checked) are in flight on the old
// process. The old process is alive and serving them: none of them may fail.
func TestReplacedReplicaKeepsInFlightRequests(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(600 * time.Millisecond)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %x", r.Method, len(b), sha256.Sum256(b))
	}))
	t.Cleanup(svc.Close)
	// The old process, stopped (drained) by the test after the new one connected.
	oldCtx, stopOld := context.WithCancel(context.Background())
	old := startAgentCtx(t, e, oldCtx, "alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, old, 1)

	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[string]int{}
	n := 0
	for i := range 150 {
		wg.Go(func() {
			method, body := "GET", []byte(nil)
			if i%2 == 1 {
				method, body = "POST", bytes.Repeat([]byte{byte(i)}, 1+i*97)
			}
			want := fmt.Sprintf("%s %d %x", method, len(body), sha256.Sum256(body))
			resp := e.do(method, "/api/v1/agents/alpha/proxy/web/x", bytes.NewReader(body), "Qkas-Timeout", "10s")
			got := readAll(t, resp)
			mu.Lock()
			defer mu.Unlock()
			n++
			if resp.StatusCode != 200 || got != want {
				failed[fmt.Sprintf("%s %d %.90s", method, resp.StatusCode, got)]++
			}
		})
	}
	time.Sleep(200 * time.Millisecond) // every request is at the old process, in its service
	newer := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, newer, 1)
	stopOld() // the old process drains: it finishes what it holds
	wg.Wait()
	if len(failed) > 0 {
		t.Errorf("requests in flight on the replaced (live, draining) process failed: %v of %d", failed, n)
	}
}

// startAgentCtx is env.startAgent with a Run context the test ends (a graceful stop).
func startAgentCtx(t *testing.T, e *env, ctx context.Context, id, replica string, services map[string]string) *agentd.Agent {
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	svcs := map[string]*url.URL{}
	for name, raw := range services {
		u, _ := url.Parse(raw)
		svcs[name] = u
	}
	a, err := agentd.New(agentd.Config{
		KasAddresses: []string{e.agentUDP}, Token: e.tokens[id], TLS: tlsConf, Services: svcs, Replica: replica,
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { <-done })
	return a
}

// TestTwoLiveProcessesOfOneReplicaDoNotEvictEachOther: two live agentd processes under one
// replica name (Replica defaults to the host name: two agentd on one host) connect to the same
// kasd. Both are kept, as at different instances (suspect_alive). Until the same instance
// probed instead of closing, each connect closed the other's connection, which reconnected and
// closed the first: the connections churned forever (108 replacements in 3s) and requests on
// them failed.
func TestTwoLiveProcessesOfOneReplicaDoNotEvictEachOther(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "host-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	b := e.startAgent("alpha", "host-1", map[string]string{"web": svc.URL})
	waitConnected(t, b, 1)
	time.Sleep(3 * time.Second)
	replaced := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "replaced"})
	accepted := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "accepted"})
	t.Logf("in 3s: %v connections accepted, %v replaced", accepted, replaced)
	if replaced > 1 {
		t.Errorf("two live processes of one replica evicted each other %v times in 3s", replaced)
	}
	// Both kept, the earlier one probed once (and logged once), and both serve.
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "suspect_alive"}); n != 1 {
		t.Errorf("suspect_alive = %v, want 1", n)
	}
	if a.Connected() != 1 || b.Connected() != 1 {
		t.Errorf("connections: first %d, second %d; want both kept", a.Connected(), b.Connected())
	}
	for range 20 {
		if resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil); resp.StatusCode != 200 {
			t.Errorf("GET: %d %s", resp.StatusCode, readAll(t, resp))
		} else {
			readAll(t, resp)
		}
	}
}

// Two live processes of one replica, each holding several connections (opened one at a time):
// the earlier process is probed once, when the newer one first connects, and kept. A second
// connection of the earlier process does not make the newer one suspect (only a process first
// seen after another's connections is evidence that the other restarted), and a second
// connection of the newer process does not probe the earlier one again (nor log it again).
func TestLiveProcessesOfOneReplicaAreProbedOnce(t *testing.T) {
	e := newEnv(t)
	closed := map[string]<-chan struct{}{}
	closed["earlier 1"] = e.deadReplica("alpha", "host-1", "earlier", []string{"web"})
	closed["newer 1"] = e.deadReplica("alpha", "host-1", "newer", []string{"web"})
	start := time.Now()
	for counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "suspect_alive"}) != 1 {
		if time.Since(start) > 2*time.Second {
			t.Fatal("the earlier process's connection was not probed and kept")
		}
		time.Sleep(20 * time.Millisecond)
	}
	closed["earlier 2"] = e.deadReplica("alpha", "host-1", "earlier", []string{"web"})
	closed["newer 2"] = e.deadReplica("alpha", "host-1", "newer", []string{"web"})
	time.Sleep(time.Second) // several probe waits
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "suspect_alive"}); n != 1 {
		t.Errorf("suspect_alive = %v after second connections of both processes, want 1", n)
	}
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "replaced"}); n != 0 {
		t.Errorf("replaced = %v, want 0", n)
	}
	for name, ch := range closed {
		select {
		case <-ch:
			t.Errorf("connection %s was closed", name)
		default:
		}
	}
}
