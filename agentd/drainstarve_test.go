package agentd

import (
	"context"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// startKasdAt starts a kasd with instance id on addr ("127.0.0.1:0" or a fixed port),
// its dev certificate from dir; stop ends it (listener closed, port freed).
func startKasdAt(t *testing.T, dir, addr, instance, tok string) (srv *kasd.Server, lnAddr string, stop func()) {
	t.Helper()
	store, err := auth.ParseTokens([]byte("agents:\n- id: alpha\n  token_sha256: " + auth.TokenSHA256(tok) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := quic.DevCertificate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err = kasd.New(kasd.Config{InstanceID: instance, AgentAuth: kasd.TokenFileAuth{Store: store},
		ClientAuth: &auth.Verifier{Key: []byte("0123456789abcdef0123456789abcdef-test-secret"), AllowAnyAgent: true}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen(addr, quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.ServeAgents(context.Background(), ln) })
	var once sync.Once
	stop = func() { once.Do(func() { ln.Close(); srv.Close(); wg.Wait() }) }
	t.Cleanup(stop)
	return srv, ln.Addr().String(), stop
}

// An agent with one connection and two kasd addresses, the second one dead (nothing answers).
// Its kasd drains (plain GoAway: a rollout) and comes back at the same address. The agent must
// reconnect to it: the draining kasd's address is "ranked after every other" only while there
// is another that can be reached; a dead one must not hold the slot off it for ever.
func TestDrainAvoidanceEndsWhenOthersFail(t *testing.T) {
	dir := t.TempDir()
	tok := auth.NewAgentToken()
	srv1, addr, stop1 := startKasdAt(t, dir, "127.0.0.1:0", "k1", tok)
	dead, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // silent
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	tlsConf, err := quic.ClientTLSConfig(dir+"/ca.pem", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{
		KasAddresses: []string{addr, dead.LocalAddr().String()}, Token: tok, TLS: tlsConf,
		Services:     map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		DrainTimeout: 2 * time.Second,
		Transport:    TransportConfig{Mode: TransportQUIC},
		QUIC:         quic.Config{HandshakeTimeout: 200 * time.Millisecond},
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	a.nextAddr.Store(0)
	runAgent(t, a)
	waitInstances(t, a, "k1")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv1.Shutdown(ctx); err != nil { // a rollout: GoAway without Prefer
		t.Fatal(err)
	}
	stop1()
	// The new process, at the same address (a restarted pod, a StatefulSet's replica).
	startKasdAt(t, dir, addr, "k1", tok)
	waitInstances(t, a, "k1") // 10 s: ~30 dial rounds
}
