package kasd_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/kasd"
)

// TestBusyDeadConnectionFailsOverFast: with keep-alives every 15s (the daemons' defaults for
// large fleets) an idle connection is judged silent only after 22.5s, but one that requests are
// using and that has gone dark is probed and closed within a few seconds, and its requests go to
// the agent's other connection: none fails, none waits for the 45s idle timeout.
func TestBusyDeadConnectionFailsOverFast(t *testing.T) {
	// Probe after 3s of silence, closed a second later, plus the 500ms sampling on each side.
	took := busyDeadFailover(t, 0)
	if took > 8*time.Second {
		t.Errorf("requests to the dark connection took %v to fail over, want a few seconds (idle timeout 45s)", took)
	}
}

// TestBusySilenceSetsFailover: with Config.AgentBusySilence at 1s (the kasd command's
// --agent-busy-silence default) the dark connection's requests fail over within 2s of their
// start (1s of silence, half a second of grace, 250 ms ticks); at the 3s default the silence
// alone is longer than that. Requests that arrive once the dark connection has been quiet for a
// quarter of that go to the live connection first: they are answered before the dark one is
// even closed.
func TestBusySilenceSetsFailover(t *testing.T) {
	took := busyDeadFailover(t, time.Second)
	if took >= defaultBusySilenceForTest {
		t.Errorf("requests to the dark connection took %v to fail over with a busy silence of 1s; the default's silence alone is %v", took, defaultBusySilenceForTest)
	}
}

// defaultBusySilenceForTest is kasd's default Config.AgentBusySilence.
const defaultBusySilenceForTest = 3 * time.Second

// busyDeadFailover runs 40 requests at an agent whose first connection has just gone dark
// (keep-alives every 15s: its idle silence is far away) while its second is live, checks that
// none failed and the dark connection was closed as silent, and returns how long the slowest
// took.
func busyDeadFailover(t *testing.T, busySilence time.Duration) time.Duration {
	t.Helper()
	const keepAlive = 15 * time.Second
	e := newEnv(t, func(c *kasd.Config) {
		c.AgentKeepAlivePeriod = keepAlive
		c.AgentBusySilence = busySilence
		c.ResponseHeaderTimeout = 30 * time.Second
	})
	scaleQUIC := func(c *agentd.Config) {
		c.QUIC.KeepAlivePeriod, c.QUIC.MaxIdleTimeout = keepAlive, 3*keepAlive
	}
	svc := echoService(t, "web")
	relay := newUDPRelay(t, e.agentUDP)
	dark := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, scaleQUIC, func(c *agentd.Config) {
		c.KasAddresses = []string{relay.pc.LocalAddr().String()}
	})
	waitConnected(t, dark, 1)
	live := e.startAgent("alpha", "pod-2", map[string]string{"web": svc.URL}, scaleQUIC)
	waitConnected(t, live, 1)
	// Both connections are idle and quiet for a moment: neither is judged silent at 15s.
	time.Sleep(3500 * time.Millisecond)
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}); n != 0 {
		t.Fatalf("%v idle connections closed as silent with keep-alives every %v", n, keepAlive)
	}

	relay.blackhole.Store(true)
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 40 {
		wg.Go(func() {
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil, "Qkas-Timeout", "15s")
			readAll(t, resp)
			if resp.StatusCode != 200 {
				failed.Add(1)
			}
		})
	}
	if busySilence > 0 {
		// The dark connection is marked quiet while busy a quarter of the busy silence after its
		// requests were first seen (a tick or two on an idle host; later on a loaded one: the
		// requests sent before the mark may go either way, so the claim starts at the mark).
		waitCounter(t, e.reg, "kasd_agent_connections_quiet_busy_total", nil, 1)
		if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}); n != 0 {
			t.Fatalf("the dark connection was closed before it was marked quiet")
		}
		var late sync.WaitGroup
		var slow atomic.Int64
		for range 20 {
			late.Go(func() {
				resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil, "Qkas-Timeout", "15s")
				readAll(t, resp)
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
				if counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}) > 0 {
					slow.Add(1) // answered only once the dark connection was closed
				}
			})
		}
		late.Wait()
		if n := slow.Load(); n > 0 {
			t.Errorf("%d of 20 requests sent after the dark connection was marked quiet while busy waited for it to be closed", n)
		}
	}
	wg.Wait()
	took := time.Since(start)
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of 40 requests failed", n)
	}
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}); n != 1 {
		t.Errorf("silent_closed = %v, want the dark connection closed", n)
	}
	t.Logf("requests on the dark connection failed over after at most %v", took)
	return took
}

// TestStalePacketsDoNotMakeARequestLookTaken: an agent dies with packets of its own still on
// their way to kasd (on a loaded host they sit in kasd's socket); kasd sends POSTs into the
// dead connection, then those packets arrive. They acknowledge nothing sent after the requests,
// so the requests were never processed: each goes to the agent's other connection and
// succeeds. Judged by "a packet arrived since the request was sent" (the rule before), they
// looked taken and failed with 502 (the chaos suite's agent-kill at load 28).
func TestStalePacketsDoNotMakeARequestLookTaken(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.ResponseHeaderTimeout = 30 * time.Second })
	svc := echoService(t, "web")
	relay := newUDPRelay(t, e.agentUDP)
	dark := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) {
		c.KasAddresses = []string{relay.pc.LocalAddr().String()}
		c.QUIC.KeepAlivePeriod = 200 * time.Millisecond // packets on their way at any moment
	})
	waitConnected(t, dark, 1)
	live := e.startAgent("alpha", "pod-2", map[string]string{"web": svc.URL})
	waitConnected(t, live, 1)

	// The agent "dies": nothing reaches it any more, and what it sent last is held back.
	relay.blackhole.Store(true)
	relay.hold.Store(true)
	for deadline := time.Now().Add(5 * time.Second); relay.heldCount() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the agent sent nothing to hold back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	var last atomic.Value
	for i := range 8 {
		wg.Go(func() {
			body := strings.Repeat("x", 100+i)
			resp := e.do("POST", "/api/v1/agents/alpha/proxy/web/x", strings.NewReader(body), "Qkas-Timeout", "15s")
			b := readAll(t, resp)
			if resp.StatusCode != 200 {
				failed.Add(1)
				last.Store(fmt.Sprintf("%d %s", resp.StatusCode, b))
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // the POSTs went out, some into the dead connection
	relay.hold.Store(false)            // blackhole stays: nothing new arrives
	n := relay.flush()
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of 8 POSTs failed after %d stale packets of the dead agent arrived; last: %v", f, n, last.Load())
	}
	if r := counter(t, e.reg, "kasd_retries_total", nil); r == 0 {
		t.Error("no request went to the dead connection first (kasd_retries_total 0): the test proves nothing")
	}
}

// TestRouteTimeoutCountsFromArrival: a request sent into an agent's only connection, which has
// gone dark, waits for the connection to be found dead (seconds) and then for another holder
// only as long as is left of --route-timeout counted from its arrival: the 503 follows the
// close at once, not a whole route timeout later (it came ~9.5s after an agentd kill -9 with
// the daemons' 5s).
func TestRouteTimeoutCountsFromArrival(t *testing.T) {
	const routeTimeout = 2 * time.Second
	e := newEnv(t, func(c *kasd.Config) {
		c.RouteTimeout = routeTimeout
		c.ResponseHeaderTimeout = 30 * time.Second
	})
	svc := echoService(t, "web")
	relay := newUDPRelay(t, e.agentUDP)
	dark := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) {
		c.KasAddresses = []string{relay.pc.LocalAddr().String()}
	})
	waitConnected(t, dark, 1)
	relay.blackhole.Store(true)

	closedAt := make(chan time.Time, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}) > 0 {
				closedAt <- time.Now()
				return
			}
		}
	}()
	start := time.Now()
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil, "Qkas-Timeout", "30s")
	body := readAll(t, resp)
	answered := time.Now()
	if resp.StatusCode != 503 || !strings.Contains(body, "agent_not_connected") {
		t.Fatalf("request to a dark connection: %d %s; want 503 agent_not_connected", resp.StatusCode, body)
	}
	var closed time.Time
	select {
	case closed = <-closedAt:
	case <-time.After(5 * time.Second):
		t.Fatal("the dark connection was not closed as silent")
	}
	t.Logf("answered %v after the request, %v after the dark connection was closed", answered.Sub(start), answered.Sub(closed))
	if closed.Sub(start) < routeTimeout {
		t.Fatalf("the connection was found dead %v after the request, within the route timeout (%v): the test needs a longer detection", closed.Sub(start), routeTimeout)
	}
	if late := answered.Sub(closed); late > routeTimeout/2 {
		t.Errorf("503 came %v after the connection was found dead, %v after the request; the route timeout (%v) was over when it was found dead", late, answered.Sub(start), routeTimeout)
	}
}
