package kasd_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
)

// deadReplica connects as agent id, replica and process, then sends nothing of its own (its
// QUIC stack still acknowledges what kasd sends, and its connection stays up until closed).
func (e *env) deadReplica(id, replica, process string, services []string) (closed <-chan struct{}) {
	e.t.Helper()
	qc, d := e.agentHandshake(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens[id], AgentVersion: "dead", Replica: replica, Process: process, Services: services})
	e.t.Cleanup(func() { qc.CloseWithError(0, ""); d.Close() })
	return qc.Context().Done()
}

// killedReplica connects as agent id, replica and process through a relay, then is killed:
// nothing gets through the relay any more, so kasd's probes go unanswered (and the test's end
// of the connection never learns that kasd closed it).
func (e *env) killedReplica(id, replica, process string, services []string) {
	e.t.Helper()
	relay := newUDPRelay(e.t, e.agentUDP)
	qc, d := agentHandshakeTo(e.t, e.caFile, relay.pc.LocalAddr().String(), &api.Hello{Version: api.ProtocolVersion,
		Token: e.tokens[id], AgentVersion: "killed", Replica: replica, Process: process, Services: services})
	e.t.Cleanup(func() { qc.CloseWithError(0, ""); d.Close() })
	relay.blackhole.Store(true)
}

// A replica that restarts (a new process, same replica name) retires its earlier, dead process's
// connection as soon as a probe goes unanswered (300 ms), long before the 3s silence threshold
// or the 6s idle timeout: no request is routed into the dead connection, which would otherwise
// swallow requests until then. (A live earlier process is kept: replica_replace_test.go.)
func TestRestartedReplicaRetiresOldConnection(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	e.killedReplica("alpha", "pod-1", "old-process", []string{"web"})
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	connected := time.Now()
	// Sent while the dead connection is suspect and probed: routed to the new process.
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for range 100 {
		wg.Go(func() {
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil, "Qkas-Timeout", "3s")
			body := readAll(t, resp)
			if resp.StatusCode != 200 {
				mu.Lock()
				failed++
				mu.Unlock()
				t.Logf("status %d: %s", resp.StatusCode, body)
			}
		})
	}
	for counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "replaced"}) != 1 {
		if time.Since(connected) > 2*time.Second {
			t.Fatalf("the earlier process's connection was not retired within 2s (silent_closed=%v)",
				counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("retired %v after the new process connected", time.Since(connected).Round(time.Millisecond))
	wg.Wait()
	if failed > 0 {
		t.Errorf("%d of 100 requests failed", failed)
	}
	if got := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "replaced"}); got != 1 {
		t.Errorf("kasd_agent_connections_total{result=replaced} = %v, want 1", got)
	}
	if got := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "suspect_alive"}); got != 0 {
		t.Errorf("kasd_agent_connections_total{result=suspect_alive} = %v, want 0", got)
	}
}

// Two connections of the same process (two slots) and of different replicas stay.
func TestSecondConnectionOfSameProcessStays(t *testing.T) {
	e := newEnv(t)
	first := e.deadReplica("alpha", "pod-1", "proc", []string{"web"})
	second := e.deadReplica("alpha", "pod-1", "proc", []string{"web"})
	other := e.deadReplica("alpha", "pod-2", "other", []string{"web"})
	time.Sleep(200 * time.Millisecond)
	for name, ch := range map[string]<-chan struct{}{"first": first, "second": second, "other": other} {
		select {
		case <-ch:
			t.Errorf("%s connection was closed", name)
		default:
		}
	}
}

// udpRelay forwards datagrams between one client and target until blackhole is set: then it
// drops everything, like a path gone dark or a process paused (SIGSTOP).
type udpRelay struct {
	pc        *net.UDPConn
	up        net.Conn
	blackhole atomic.Bool
	// droppedDown counts target -> client datagrams dropped by the blackhole.
	droppedDown atomic.Int64
	// hold keeps client -> target datagrams instead of passing them on, until flush.
	hold atomic.Bool
	mu   sync.Mutex // guards held
	held [][]byte
}

// flush passes on the datagrams held back, and says how many.
func (r *udpRelay) flush() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.held {
		_, _ = r.up.Write(b)
	}
	n := len(r.held)
	r.held = nil
	return n
}

func (r *udpRelay) heldCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.held)
}

func newUDPRelay(t *testing.T, target string) *udpRelay {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	r := &udpRelay{pc: pc, up: up}
	var client atomic.Pointer[net.UDPAddr]
	var wg sync.WaitGroup
	wg.Go(func() { // client -> target
		buf := make([]byte, 65536)
		for {
			n, addr, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			client.Store(addr)
			switch {
			case r.hold.Load():
				r.mu.Lock()
				r.held = append(r.held, append([]byte(nil), buf[:n]...))
				r.mu.Unlock()
			case !r.blackhole.Load():
				up.Write(buf[:n])
			}
		}
	})
	wg.Go(func() { // target -> client
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			switch a := client.Load(); {
			case r.blackhole.Load():
				r.droppedDown.Add(1)
			case a != nil:
				pc.WriteToUDP(buf[:n], a)
			}
		}
	})
	t.Cleanup(func() { pc.Close(); up.Close(); wg.Wait() })
	return r
}

// A connection that went silent (nothing received for 3s: a paused or dead replica, a dark
// path) is not chosen while the agent has another connection, well before its idle timeout.
func TestSilentConnectionIsAvoided(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.ResponseHeaderTimeout = 30 * time.Second })
	svc := echoService(t, "web")
	relay := newUDPRelay(t, e.agentUDP)
	dark := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) {
		c.KasAddresses = []string{relay.pc.LocalAddr().String()}
	})
	waitConnected(t, dark, 1)
	live := e.startAgent("alpha", "pod-2", map[string]string{"web": svc.URL})
	waitConnected(t, live, 1)
	relay.blackhole.Store(true)
	start := time.Now()
	// Past silentAfter (3s, sampled every second), before the 6s idle timeout.
	time.Sleep(4500 * time.Millisecond)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 40 {
		wg.Go(func() {
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil, "Qkas-Timeout", "1s")
			readAll(t, resp)
			if resp.StatusCode != 200 {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of 40 requests went to the silent connection and failed", n)
	}
	// Probed and then closed as presumed dead, before the 6s idle timeout would have.
	for counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"}) != 1 {
		if time.Since(start) > 5800*time.Millisecond {
			t.Fatal("the silent connection was not closed before the idle timeout")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
