package kasd_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// countingRelay forwards datagrams between one agent and kasd, counts them each way, and can
// drop what the agent sends (kasd then hears nothing while the agent still hears kasd).
type countingRelay struct {
	pc             *net.UDPConn
	toKasd, toAgnt atomic.Int64
	deaf           atomic.Bool // drop agent -> kasd
}

func newCountingRelay(t *testing.T, target string) *countingRelay {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	r := &countingRelay{pc: pc}
	var client atomic.Pointer[net.UDPAddr]
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, addr, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			client.Store(addr)
			if !r.deaf.Load() {
				r.toKasd.Add(1)
				_, _ = up.Write(buf[:n])
			}
		}
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if a := client.Load(); a != nil {
				r.toAgnt.Add(1)
				_, _ = pc.WriteToUDP(buf[:n], a)
			}
		}
	})
	t.Cleanup(func() { pc.Close(); up.Close(); wg.Wait() })
	return r
}

// TestKasdLeavesKeepAlivesToAgents: on an agent listener configured as the kasd command
// configures it (quic.Config.PeerKeepsAlive), kasd sends no keep-alive PING of its own: the
// agent's PINGs keep an idle connection up (kasd only acknowledges them), and when kasd stops
// hearing the agent it sends nothing until its silence threshold, then probes and closes the
// connection within the documented time (silence + probeAfter + sampling). Before, kasd's own
// keep-alive timer fired within a period of the last packet it received.
func TestKasdLeavesKeepAlivesToAgents(t *testing.T) {
	const (
		agentKeepAlive = time.Second
		// kasd's expected period is longer than the agent's so that its silence threshold
		// (2s + 1s) comes well after the point where a keep-alive of its own would have fired
		// (1s after the last packet it received).
		expected = 2 * time.Second
	)
	_, relay, a, silentClosed := relayedIdleAgent(t, agentKeepAlive, expected)

	// Idle for longer than kasd's silence threshold (3s): the agent's keep-alives alone keep
	// the connection alive in kasd's eyes.
	time.Sleep(500 * time.Millisecond)
	in0, out0 := relay.toKasd.Load(), relay.toAgnt.Load()
	time.Sleep(4 * time.Second)
	in, out := relay.toKasd.Load()-in0, relay.toAgnt.Load()-out0
	t.Logf("idle 4s: %d datagrams to kasd, %d from kasd", in, out)
	if n := silentClosed(); n != 0 || a.Connected() != 1 {
		t.Fatalf("idle connection closed as silent (%v) with the agent's keep-alives every %v", n, agentKeepAlive)
	}
	if in < 2 || out > in+1 { // +1: an ACK of a PING that passed just before the window
		t.Errorf("idle 4s: %d datagrams to kasd, %d from kasd: want the agent's keep-alives, each answered by one ACK at most", in, out)
	}

	// kasd hears nothing any more. It must stay quiet until its silence threshold: no PING of
	// its own 1s after the last packet it received.
	relay.deaf.Store(true)
	deafAt := time.Now()
	time.Sleep(50 * time.Millisecond) // the ACK of a keep-alive that just passed
	quiet0 := relay.toAgnt.Load()
	time.Sleep(1400 * time.Millisecond)
	if n := relay.toAgnt.Load() - quiet0; n != 0 {
		t.Errorf("kasd sent %d datagrams within 1.45s of hearing nothing: a keep-alive of its own", n)
	}
	// Then a probe, and the connection is closed: silence 3s + probe 1s + 500ms sampling.
	for silentClosed() != 1 {
		if time.Since(deafAt) > 6*time.Second {
			t.Fatalf("the connection kasd no longer hears was not closed within %v", time.Since(deafAt))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(deafAt)
	if relay.toAgnt.Load()-quiet0 == 0 {
		t.Error("kasd closed the connection without probing it")
	}
	// The last packet kasd heard came up to a period (1s) before it went deaf, so the 3s of
	// silence and the 1s probe end at least 3s after; 2.5s leaves room for a late keep-alive.
	if took < 2500*time.Millisecond {
		t.Errorf("closed %v after kasd went deaf, before its 3s silence threshold and 1s probe could pass", took)
	}
	t.Logf("closed %v after kasd stopped hearing the agent", took)
}

// relayedIdleAgent starts a kasd whose agent listener is configured as the kasd command
// configures it (no keep-alives of its own, expecting the agent's every expected), and one
// agent sending keep-alives every agentKeepAlive through a counting relay.
func relayedIdleAgent(t *testing.T, agentKeepAlive, expected time.Duration) (*env, *countingRelay, *agentd.Agent, func() float64) {
	t.Helper()
	e := newEnv(t, func(c *kasd.Config) { c.AgentKeepAlivePeriod = expected })
	c, _, err := quic.DevCertificate(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(c, api.ALPNAgent), quic.Config{
		KeepAlivePeriod: agentKeepAlive, MaxIdleTimeout: 60 * time.Second, PeerKeepsAlive: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var serving sync.WaitGroup
	srv := e.server()
	serving.Go(func() { _ = srv.ServeAgents(ctx, ln) })
	t.Cleanup(func() { cancel(); ln.Close(); serving.Wait() })

	relay := newCountingRelay(t, ln.Addr().String())
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) {
		c.KasAddresses = []string{relay.pc.LocalAddr().String()}
		c.QUIC.KeepAlivePeriod, c.QUIC.MaxIdleTimeout = agentKeepAlive, 60*time.Second
	})
	waitConnected(t, a, 1)
	silentClosed := func() float64 {
		return counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "silent_closed"})
	}
	return e, relay, a, silentClosed
}

// TestIdleSilentConnectionGetsHalfAPeriodToAnswer: an idle connection silent past its threshold
// (an expected period of 6s: 6s + 2s) is probed, but closed only after half a period (3s) of
// unanswered probes, not after 1s: a live agent on a host short of CPU can be seconds late (at
// 50,000 simulated agents a 1s grace closed tens of thousands of live connections at once).
// It is probed about twice in that time, not at every 500 ms sampler tick.
func TestIdleSilentConnectionGetsHalfAPeriodToAnswer(t *testing.T) {
	const agentKeepAlive, expected = time.Second, 6 * time.Second
	e, relay, _, silentClosed := relayedIdleAgent(t, agentKeepAlive, expected)
	time.Sleep(500 * time.Millisecond)
	relay.deaf.Store(true)
	deafAt := time.Now()
	for silentClosed() != 1 {
		if since := time.Since(deafAt); since > 14*time.Second {
			t.Fatalf("the connection kasd no longer hears was not closed within %v", since)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(deafAt)
	// The last packet came up to 1s before kasd went deaf: silence 8s, then 3s of probing.
	if took < 9500*time.Millisecond {
		t.Errorf("closed %v after kasd went deaf: before its 8s silence and 3s of probing could pass", took)
	}
	// A probe every half grace (1.5s): 2 or 3 in the 3s, not one per 500 ms tick (6 or 7).
	probes := counter(t, e.reg, "kasd_agent_silence_probes_total", nil)
	if probes < 1 || probes > 3 {
		t.Errorf("%v probes before the silent connection was closed, want 1 to 3", probes)
	}
	t.Logf("closed %v after kasd stopped hearing the agent, after %v probes", took, probes)
}
