package agentd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// TestAgentWaitsForASlowWelcome: a kasd that completed the QUIC handshake but takes longer than
// the handshake timeout to answer the Hello (busy admitting a reconnect storm) gets the agent on
// its first connection: the agent waits welcomeWait, not the handshake timeout, and dials once.
func TestAgentWaitsForASlowWelcome(t *testing.T) {
	const handshake = 300 * time.Millisecond
	ln, clientTLS := fakeKasdListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dials := make(chan struct{}, 16)
	go acceptAgents(ctx, ln, dials, handshake*3/2) // welcomes each agent 1.5 handshake timeouts after its Hello
	nop := zerolog.Nop()
	a, err := New(Config{KasAddresses: []string{ln.Addr().String()}, Token: "t", Connections: 1,
		TLS: clientTLS, QUIC: quic.Config{HandshakeTimeout: handshake},
		Handlers: map[string]ServiceHandler{"none": noService{}}, Log: &nop, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for a.Connected() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not connect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(dials); n != 1 {
		t.Errorf("%d dials to connect, want 1: the agent gave up on a slow Welcome", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// acceptAgents is a hand-written kasd on ln until ctx ends: it counts each connection on dials,
// reads the agent's Hello and sends a Welcome delay later.
func acceptAgents(ctx context.Context, ln *quic.Listener, dials chan<- struct{}, delay time.Duration) {
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		dials <- struct{}{}
		go func() {
			control, err := qc.AcceptStream(ctx)
			if err != nil {
				return
			}
			if _, err := api.ReadExpect(control, api.TypeHello); err != nil {
				return
			}
			time.Sleep(delay)
			_ = api.WriteFrame(control, &api.Welcome{Version: api.ProtocolVersion, AgentID: "a1", ConnectionID: "c1", InstanceID: "kas-1"})
			<-qc.Context().Done()
		}()
	}
}

// fakeKasdListener is a QUIC listener with the agent ALPN for a hand-written kasd, closed when
// the test ends, and the TLS configuration an agent needs to trust it.
func fakeKasdListener(t *testing.T) (*quic.Listener, *tls.Config) {
	t.Helper()
	cert, leaf := selfSigned(t, "kasd.test")
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, &tls.Config{RootCAs: roots, ServerName: "kasd.test"}
}

// noService answers nothing; the agent needs a service to start.
type noService struct{}

func (noService) ServeService(w http.ResponseWriter, _ *http.Request, _ *api.Request) {
	w.WriteHeader(http.StatusNoContent)
}
