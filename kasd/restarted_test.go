package kasd_test

import (
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
)

// scaleKeepAlive makes idle silence slow to notice (17s, as at the daemons' 25s keep-alive), so
// that only the registry's replica signal can explain a fast retirement.
func scaleKeepAlive(c *kasd.Config) {
	c.AgentKeepAlivePeriod = 15 * time.Second
	c.ResponseHeaderTimeout = 30 * time.Second
}

// An agent process killed while kas-0 holds its connection, restarted, and reconnected to kas-1
// only: kas-0 learns from the registry that the replica runs as a newer process, probes its
// connection, finds it dead and retires it, so that the requests kas-0 had sent into it (never
// acknowledged) and every later one go to kas-1, long before the connection would be judged
// silent (3s busy, 17s idle) or time out.
func TestReplicaRestartedElsewhereRetiresOldConnection(t *testing.T) {
	f := newFleetEnv(t, 0)
	f.config = scaleKeepAlive
	k0, k1 := f.startNode("kas-0"), f.startNode("kas-1")
	f.nodes = append(f.nodes, k0, k1)
	svc := echoService(t, "web")

	relay := newUDPRelay(t, k0.agentLn.Addr().String())
	qc, d := agentHandshakeTo(t, f.caFile, relay.pc.LocalAddr().String(), &api.Hello{
		Version: api.ProtocolVersion, Token: f.tokens["alpha"], AgentVersion: "old",
		Replica: "pod-1", Process: "old-process", Services: []string{"web"},
	})
	t.Cleanup(func() { qc.CloseWithError(0, ""); d.Close() })
	f.waitHolders("alpha", "kas-0")

	relay.blackhole.Store(true) // the process is killed: nothing it sent or would answer gets through
	killed := time.Now()
	type result struct {
		status int
		took   time.Duration
	}
	var wg sync.WaitGroup
	results := make(chan result, 60)
	get := func() {
		start := time.Now()
		st, _ := f.get(k0, "alpha", "/x")
		results <- result{st, time.Since(start)}
	}
	for range 30 { // sent into the dead connection while the agent is down
		wg.Go(get)
	}
	time.Sleep(300 * time.Millisecond)
	a := f.startAgent("alpha", "pod-1", svc.URL, []*node{k1}, 1) // the restarted process
	waitConnected(t, a, 1)
	for counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "restarted_elsewhere"}) != 1 {
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("kas-0 did not retire the dead process's connection within 5s (silent_closed=%v)",
				counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("retired %v after the kill", time.Since(killed).Round(time.Millisecond))
	for range 30 { // after the retirement: forwarded to kas-1
		wg.Go(get)
	}
	wg.Wait()
	close(results)
	var slowest time.Duration
	for r := range results {
		if r.status != 200 {
			t.Errorf("request failed: %d", r.status)
		}
		slowest = max(slowest, r.took)
	}
	t.Logf("slowest request %v", slowest.Round(time.Millisecond))
	if n := counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}); n != 0 {
		t.Errorf("silent_closed = %v: the connection was judged by silence, not by the newer process", n)
	}
}

// A killed process's last packets, still on their way (queued in kasd's socket or a router)
// when kasd probes its connection, are no answer to the probe: only an acknowledgement of a
// packet sent after the probe is. Counting packets received instead judged the dead process
// alive, kept its connection and sent requests into it until it went silent.
func TestStalePacketsAreNoAnswerToProbe(t *testing.T) {
	f := newFleetEnv(t, 0)
	f.config = scaleKeepAlive
	k0, k1 := f.startNode("kas-0"), f.startNode("kas-1")
	f.nodes = append(f.nodes, k0, k1)
	svc := echoService(t, "web")

	relay := newUDPRelay(t, k0.agentLn.Addr().String())
	qc, control, _, d := agentHandshakeFull(t, f.caFile, relay.pc.LocalAddr().String(), &api.Hello{
		Version: api.ProtocolVersion, Token: f.tokens["alpha"], AgentVersion: "old",
		Replica: "pod-1", Process: "old-process", Services: []string{"web"},
	})
	t.Cleanup(func() { qc.CloseWithError(0, ""); d.Close() })
	f.waitHolders("alpha", "kas-0")

	// The process's last words: held on the way to kas-0, then it dies.
	relay.hold.Store(true)
	if err := api.WriteFrame(control, &api.Ping{Padding: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	for relay.heldCount() == 0 {
		time.Sleep(time.Millisecond)
	}
	relay.blackhole.Store(true)
	killed := time.Now()
	downBefore := relay.droppedDown.Load()

	a := f.startAgent("alpha", "pod-1", svc.URL, []*node{k1}, 1) // the restarted process
	waitConnected(t, a, 1)
	// kas-0 probes the old connection (the first datagram it sends since the kill); the held
	// packets arrive while it waits for the answer.
	for relay.droppedDown.Load() == downBefore {
		if time.Since(killed) > 10*time.Second {
			t.Fatal("kas-0 sent nothing to the old connection: no probe")
		}
		time.Sleep(time.Millisecond)
	}
	if n := relay.flush(); n == 0 {
		t.Fatal("nothing held")
	}
	for counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "restarted_elsewhere"}) != 1 {
		if n := counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "suspect_alive"}); n != 0 {
			t.Fatalf("kas-0 judged the dead process alive from packets it sent before it died (suspect_alive=%v)", n)
		}
		if time.Since(killed) > 5*time.Second {
			t.Fatal("kas-0 did not retire the dead process's connection within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two live processes under one replica name (a misconfiguration): the probe is answered, and
// neither connection is closed.
func TestReplicaNameSharedByLiveProcessesKeepsBoth(t *testing.T) {
	f := newFleetEnv(t, 0)
	f.config = scaleKeepAlive
	k0, k1 := f.startNode("kas-0"), f.startNode("kas-1")
	f.nodes = append(f.nodes, k0, k1)
	svc := echoService(t, "web")
	first := f.startAgent("alpha", "pod-1", svc.URL, []*node{k0}, 1)
	waitConnected(t, first, 1)
	time.Sleep(50 * time.Millisecond) // the second process connects measurably later
	second := f.startAgent("alpha", "pod-1", svc.URL, []*node{k1}, 1)
	waitConnected(t, second, 1)
	for counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "suspect_alive"}) != 1 {
		if n := counter(t, k0.promReg, "kasd_agent_connections_total", map[string]string{"result": "restarted_elsewhere"}); n != 0 {
			t.Fatal("a live connection was retired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if first.Connected() != 1 || second.Connected() != 1 {
		t.Errorf("connections: first %d, second %d; want both kept", first.Connected(), second.Connected())
	}
	if st, body := f.get(k0, "alpha", "/x"); st != 200 {
		t.Errorf("GET through kas-0: %d %s", st, body)
	}
}
