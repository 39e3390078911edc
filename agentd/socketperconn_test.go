package agentd

import (
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
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
			if up, err = net.DialUDP("udp", nil, b.backends[b.next%len(b.backends)]); err != nil {
				b.mu.Unlock()
				continue
			}
			b.next++
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
	k1 := startTestKasdWith(t, func(c *kasd.Config) { c.InstanceID = "k1" })
	store, err := auth.ParseTokens([]byte("agents:\n- id: alpha\n  token_sha256: " + auth.TokenSHA256(k1.token) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	k2 := startTestKasdWith(t, func(c *kasd.Config) {
		c.InstanceID = "k2"
		c.AgentAuth = kasd.TokenFileAuth{Store: store}
	})
	lb := startUDPBalancer(t, k1.agentAddr, k2.agentAddr)
	tlsConf := k1.tls.Clone() // server name localhost; trusts both kasd's dev CAs
	tlsConf.RootCAs = tlsConf.RootCAs.Clone()
	pem, err := os.ReadFile(k2.caFile)
	if err != nil || !tlsConf.RootCAs.AppendCertsFromPEM(pem) {
		t.Fatal("k2's CA", err)
	}
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
