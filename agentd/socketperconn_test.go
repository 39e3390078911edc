package agentd

import (
	"context"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// udpBalancer is a UDP load balancer as a cloud's or kube-proxy's: each new flow (client
// address and port) goes to the next backend in turn, and stays there.
type udpBalancer struct {
	pc       *net.UDPConn
	backends []*net.UDPAddr
	mu       sync.Mutex
	flows    map[string]*net.UDPConn // client address → its socket to the backend
	next     int
	plan     []int // if not empty, the backends of the next new flows, in order
	wg       sync.WaitGroup
}

func startUDPBalancer(t *testing.T, backends ...string) *udpBalancer {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &udpBalancer{pc: pc, flows: map[string]*net.UDPConn{}}
	for _, a := range backends {
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		b.backends = append(b.backends, ua)
	}
	b.wg.Go(b.run)
	t.Cleanup(func() {
		pc.Close()
		b.mu.Lock()
		for _, c := range b.flows {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *udpBalancer) addr() string { return b.pc.LocalAddr().String() }

func (b *udpBalancer) run() {
	buf := make([]byte, 65536)
	for {
		n, from, err := b.pc.ReadFromUDP(buf)
		if err != nil {
			return
		}
		b.mu.Lock()
		up, ok := b.flows[from.String()]
		if !ok {
			i := b.next % len(b.backends)
			if len(b.plan) > 0 {
				i, b.plan = b.plan[0], b.plan[1:]
			} else {
				b.next++
			}
			if up, err = net.DialUDP("udp", nil, b.backends[i]); err != nil {
				b.mu.Unlock()
				continue
			}
			b.flows[from.String()] = up
			b.wg.Go(func() { // the backend's answers, back from the balancer's address
				rb := make([]byte, 65536)
				for {
					n, err := up.Read(rb)
					if err != nil {
						return
					}
					_, _ = b.pc.WriteToUDP(rb[:n], from)
				}
			})
		}
		b.mu.Unlock()
		_, _ = up.Write(buf[:n])
	}
}

// place makes the next new flows go to the backends at these indexes, in order.
func (b *udpBalancer) place(backends ...int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.plan = append(b.plan, backends...)
}

func (b *udpBalancer) flowCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.flows)
}

// Behind one address (a load balancer placing UDP flows by source address and port), an
// agent's two connections land on two kasd replicas: each connection is dialled from a socket
// of its own, a flow of its own. With one socket for both, both were one flow, always on one
// kasd, so one kasd dying took the agent offline whatever --kas-connections said.
func TestConnectionsSpreadBehindLoadBalancer(t *testing.T) {
	k1, k2, tlsConf := startTwoKasd(t)
	lb := startUDPBalancer(t, k1.agentAddr, k2.agentAddr)
	a, err := New(Config{
		KasAddresses: []string{lb.addr()}, Token: k1.token, TLS: tlsConf, Connections: 2,
		Services:     map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		DrainTimeout: 5 * time.Second,
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitInstances(t, a, "k1", "k2")
	if n := lb.flowCount(); n < 2 {
		t.Errorf("%d flows through the balancer, want one per connection", n)
	}
}

// fakeKasd is a kasd that welcomes agents as instance id and, once told, asks the first
// connection it welcomed to move to another instance (GoAway with Prefer), as kasd's
// rebalancer does.
type fakeKasd struct {
	ln    *quic.Listener
	id    string
	mu    sync.Mutex
	ctrl  []*quicgo.Stream // control streams of the connections welcomed, in order
	conns []*quicgo.Conn
	wg    sync.WaitGroup
}

func startFakeKasd(t *testing.T, dir, id string) *fakeKasd {
	t.Helper()
	cert, _, err := quic.DevCertificate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKasd{ln: ln, id: id}
	k.wg.Go(func() {
		for {
			qc, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			k.wg.Go(func() {
				control, err := qc.AcceptStream(qc.Context())
				if err != nil {
					return
				}
				if _, err := api.ReadExpect(control, api.TypeHello); err != nil {
					return
				}
				if err := api.WriteFrame(control, &api.Welcome{Version: api.ProtocolVersion, InstanceID: id}); err != nil {
					return
				}
				k.mu.Lock()
				k.ctrl = append(k.ctrl, control)
				k.conns = append(k.conns, qc)
				k.mu.Unlock()
				<-qc.Context().Done()
			})
		}
	})
	t.Cleanup(func() {
		k.mu.Lock()
		for _, qc := range k.conns {
			_ = qc.CloseWithError(quic.ConnCodeNoError, "test over")
		}
		k.mu.Unlock()
		ln.Close()
		k.wg.Wait()
	})
	return k
}

func (k *fakeKasd) askToMove(t *testing.T, prefer string) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.ctrl) == 0 {
		t.Fatalf("%s holds no connection", k.id)
	}
	if err := api.WriteFrame(k.ctrl[0], &api.GoAway{Reason: "rebalance", Prefer: prefer}); err != nil {
		t.Fatal(err)
	}
}

// A connection kasd asks to move for balance, behind one load-balanced address, does not end up
// on the kasd the agent's other connection holds: its new flows may all land there, and it
// settles for the instance it was leaving (distinct from the other) rather than for a second
// connection on one kasd, draining the one it left. It used to settle for whatever came after
// three tries: both connections on one kasd, for good.
func TestMoveBehindLoadBalancerKeepsConnectionsApart(t *testing.T) {
	dir := t.TempDir() // one dev CA for both fakes
	k2, k3 := startFakeKasd(t, dir, "k2"), startFakeKasd(t, dir, "k3")
	lb := startUDPBalancer(t, k2.ln.Addr().String(), k3.ln.Addr().String())
	lb.place(0, 1) // slot by slot: k2, then k3
	tlsConf, err := quic.ClientTLSConfig(dir+"/ca.pem", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{
		KasAddresses: []string{lb.addr()}, Token: "t", TLS: tlsConf, Connections: 2,
		Services:     map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		DrainTimeout: time.Second, Transport: TransportConfig{Mode: TransportQUIC},
		Backoff: quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	waitInstances(t, a, "k2", "k3")
	// k3 asks its connection to move to k1, which is not behind the balancer: the next four
	// flows land on k2, which the other connection holds, the fifth on k3.
	lb.place(0, 0, 0, 0, 1)
	k3.askToMove(t, "k1")
	deadline := time.Now().Add(10 * time.Second)
	for { // the move is over: every planned flow taken, and the slot no longer moving
		lb.mu.Lock()
		planned := len(lb.plan)
		lb.mu.Unlock()
		a.mu.Lock()
		moving := len(a.moves)
		a.mu.Unlock()
		if planned == 0 && moving == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the move did not end: %d planned flows left, %d slots moving", planned, moving)
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitInstances(t, a, "k2", "k3")
}
