package kasd_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// rebalanceFleet tunes fleetEnv's nodes for a rebalancing test: a tick every 100 ms and
// connections movable after half a second, so that the test runs in seconds.
func rebalanceFleet(fc *kasd.FleetConfig) {
	fc.RebalanceInterval = 100 * time.Millisecond
	fc.RebalanceMinAge = 500 * time.Millisecond
}

// startSpreadAgent runs one agentd replica of id with two connections over every node's
// address, with the default QUIC timeouts (a loaded -race run must not mistake a busy
// connection for a dead one).
func (f *fleetEnv) startSpreadAgent(id, replica, svcURL string, addrs []string) *agentd.Agent {
	t := f.t
	tlsConf, err := quic.ClientTLSConfig(f.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	a, err := agentd.New(agentd.Config{
		KasAddresses: addrs, Token: f.tokens[id], TLS: tlsConf, Replica: replica, Connections: 2,
		Services:     map[string]*url.URL{"web": mustURL(t, svcURL)},
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// nodeConnections is kasd_agent_connections of every live node (-1 for a stopped one).
func (f *fleetEnv) nodeConnections() []int {
	out := make([]int, len(f.nodes))
	for i, nd := range f.nodes {
		out[i] = -1
		if !nd.stopped {
			out[i] = int(counter(f.t, nd.promReg, "kasd_agent_connections", nil))
		}
	}
	return out
}

// balanced reports whether every live node holds its share of want connections ± 20 %, and
// all want are held.
func balanced(conns []int, want int) bool {
	live, sum := 0, 0
	for _, c := range conns {
		if c >= 0 {
			live++
			sum += c
		}
	}
	if sum != want || live == 0 {
		return false
	}
	share := float64(want) / float64(live)
	for _, c := range conns {
		if c >= 0 && (float64(c) < 0.8*share || float64(c) > 1.2*share) {
			return false
		}
	}
	return true
}

// A kasd that restarts comes back empty; the fleet moves agent connections to it, one at a
// time per kasd, until every kasd holds its share ± 20 % — under load, without a failed
// request (a moved connection keeps serving until its replacement is up), and without
// moving more than needed.
func TestRebalanceAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("18 agentd and 3 kasd for ~20 s")
	}
	f := newFleetEnv(t, 0)
	for i := range 3 {
		f.nodes = append(f.nodes, f.startNodeAt(fmt.Sprintf("kas-%d", i), "127.0.0.1:0", "127.0.0.1:0", rebalanceFleet))
	}
	var addrs []string
	for _, nd := range f.nodes {
		addrs = append(addrs, nd.agentLn.Addr().String())
	}
	svc := newChecksumService(t)
	const replicas = 6 // 3 agent ids × 6 replicas = 18 agentd, 36 connections
	var agents []*agentd.Agent
	for _, id := range []string{"alpha", "beta", "gamma"} {
		for r := range replicas {
			agents = append(agents, f.startSpreadAgent(id, fmt.Sprintf("pod-%d", r), svc.URL, addrs))
		}
	}
	const want = 2 * 3 * replicas
	waitFor := func(what string, timeout time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > timeout {
				t.Fatalf("%s: not within %v; connections per kasd %v", what, timeout, f.nodeConnections())
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(start)
	}
	waitFor("every agent connected", 30*time.Second, func() bool { return balanced(f.nodeConnections(), want) })
	t.Logf("placed: %v", f.nodeConnections())

	// Stop kas-2 (SIGTERM: drain), so its agents move to the other two; then bring it back on
	// the same addresses, empty.
	gone := f.nodes[2]
	agentAddr, peerAddr := gone.agentLn.Addr().String(), gone.peerLn.Addr().String()
	f.drain(gone)
	waitFor("agents on the two remaining kasd", 30*time.Second, func() bool { return balanced(f.nodeConnections(), want) })
	t.Logf("kas-2 stopped: %v", f.nodeConnections())
	movesBefore := f.moves()

	// Load through the two kasd that stay up, while kas-2 comes back and fills up.
	client := loadClient(t)
	tok := f.token()
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	calls := randomCalls(64, 11, 100<<10)
	for w := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				c := calls[rng.IntN(len(calls))]
				agent := []string{"alpha", "beta", "gamma"}[rng.IntN(3)]
				sent.Add(1)
				if err := c.check(client, f.nodes[rng.IntN(2)].api.URL, agent, tok, false); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	f.nodes[2] = f.startNodeAt("kas-2", agentAddr, peerAddr, rebalanceFleet)
	took := waitFor("rebalance onto the restarted kasd", 30*time.Second, func() bool { return balanced(f.nodeConnections(), want) })
	t.Logf("kas-2 back: balanced in %v: %v", took.Round(100*time.Millisecond), f.nodeConnections())
	// The test's balance has a margin of its own: the rebalancer may still be finishing its
	// last moves (under load, the test can see "balanced" a move or two early). Settled is no
	// move for 1.5s; after that nothing more may move while the fleet is within its margin.
	balancedAt := time.Now()
	last, quietSince := f.moves(), balancedAt
	for deadline := time.Now().Add(15 * time.Second); time.Since(quietSince) < 1500*time.Millisecond && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if m := f.moves(); m != last {
			last, quietSince = m, time.Now()
		}
	}
	moved := last - movesBefore
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	extra := f.moves() - movesBefore - moved
	t.Logf("%d requests, %d failed; %d connections moved to balance (the last %v after it looked balanced), %d more after",
		sent.Load(), failed.Load(), moved, quietSince.Sub(balancedAt).Round(100*time.Millisecond), extra)
	if failed.Load() > 0 {
		t.Errorf("%d of %d requests failed while connections moved; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	if sent.Load() < 100 {
		t.Errorf("only %d requests sent: the load did not run", sent.Load())
	}
	// kas-2's share is a third: a storm (or a thrash) would move many more.
	if share := want / 3; moved > 2*share+2 || extra > 2 {
		t.Errorf("%d moves to rebalance 0/%d/%d and %d after it settled; want about %d, then none", moved, want/2, want/2, extra, share)
	}
	if !balanced(f.nodeConnections(), want) {
		t.Errorf("not balanced at the end: %v", f.nodeConnections())
	}
	// Every agent ends with two connections on two kasd (a move that was under way at the end
	// of the load finishes first).
	waitFor("every agent on two kasd", 10*time.Second, func() bool {
		for _, a := range agents {
			if a.Connected() != 2 || len(uniq(a.Instances())) != 2 {
				return false
			}
		}
		return true
	})
}

func (f *fleetEnv) moves() int {
	n := 0.0
	for _, nd := range f.nodes {
		if !nd.stopped {
			n += counter(f.t, nd.promReg, "kasd_rebalance_moves_total", nil)
		}
	}
	return int(n)
}

func uniq(s []string) map[string]bool {
	m := map[string]bool{}
	for _, x := range s {
		m[x] = true
	}
	return m
}

// An agent that knows only one kasd address cannot move: asked once, it comes back to the same
// kasd, which then leaves it alone instead of asking again every few seconds.
func TestRebalanceLeavesAloneAnAgentThatCannotMove(t *testing.T) {
	f := newFleetEnv(t, 0)
	for i := range 3 {
		f.nodes = append(f.nodes, f.startNodeAt(fmt.Sprintf("kas-%d", i), "127.0.0.1:0", "127.0.0.1:0", rebalanceFleet))
	}
	svc := newChecksumService(t)
	a := f.startSpreadAgent("alpha", "pod", svc.URL, []string{f.nodes[0].agentLn.Addr().String()})
	waitConnected(t, a, 2)
	time.Sleep(4 * time.Second) // 40 rebalancing ticks; the connections are movable after 0.5 s
	if n := f.moves(); n < 1 || n > 2 {
		t.Errorf("%d moves of an agent that can only come back; want one (or two: one per connection)", n)
	}
	if c := f.nodeConnections(); c[0] != 2 || a.Connected() != 2 {
		t.Errorf("connections per kasd %v, agent %d", c, a.Connected())
	}
}

// A kasd that began to drain is no target for a move, also for a peer that has no link to it
// (and so never heard its GoAway): the registry's draining mark says so. kas-0 holds every
// connection (6) and kas-1, which drains, none; without the mark kas-0 asks connections to move
// to kas-1, which refuses them.
func TestRebalanceSkipsPeerDrainingWithoutLink(t *testing.T) {
	f := newFleetEnv(t, 0)
	for i := range 2 {
		f.nodes = append(f.nodes, f.startNodeAt(fmt.Sprintf("kas-%d", i), "127.0.0.1:0", "127.0.0.1:0", rebalanceFleet))
	}
	busy, drained := f.nodes[0], f.nodes[1]
	drained.srv.BeginDrain()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(busy.reg.Instances(), func(in registry.Instance) bool { return in.ID == drained.id && in.Draining }) {
		if time.Now().After(deadline) {
			t.Fatalf("kas-0 does not see kas-1 draining: %+v", busy.reg.Instances())
		}
		time.Sleep(20 * time.Millisecond)
	}
	svc := newChecksumService(t)
	// One connection per agentd: two of one agentd on the one kasd it knows would keep
	// looking for a distinct one (agentd's placement), and the count would move.
	for r := range 6 {
		f.startAgent("alpha", fmt.Sprintf("pod-%d", r), svc.URL, []*node{busy}, 1)
	}
	deadline = time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && f.nodeConnections()[0] != 6 {
		time.Sleep(20 * time.Millisecond)
	}
	if c := f.nodeConnections(); c[0] != 6 {
		t.Fatalf("connections per kasd %v, want 6 on kas-0", c)
	}
	// RebalanceMinAge is 500 ms and a tick 100 ms: moves would start within a second.
	time.Sleep(2 * time.Second)
	if n := counter(t, busy.promReg, "kasd_rebalance_moves_total", nil); n != 0 {
		t.Errorf("kas-0 asked %v connections to move to a draining kasd", n)
	}
}
