package agentd

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/quic"
)

// TestConnectSlotsBoundConnects: agents sharing ConnectSlots (the fleet simulator) do not dial
// while every slot is taken, connect once one is free, and give the slot back when connected.
func TestConnectSlotsBoundConnects(t *testing.T) {
	ln, clientTLS := fakeKasdListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dials := make(chan struct{}, 16)
	go acceptAgents(ctx, ln, dials, 0)
	slots := make(chan struct{}, 1)
	slots <- struct{}{} // another agent is connecting
	nop := zerolog.Nop()
	a, err := New(Config{KasAddresses: []string{ln.Addr().String()}, Token: "t", Connections: 1,
		TLS: clientTLS, QUIC: quic.Config{}, ConnectSlots: slots,
		Handlers: map[string]ServiceHandler{"none": noService{}}, Log: &nop, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	time.Sleep(500 * time.Millisecond)
	if n := len(dials); n != 0 || a.Connected() != 0 {
		t.Fatalf("%d dials, %d connected while every connect slot was taken", n, a.Connected())
	}
	<-slots // the other agent is done
	deadline := time.Now().Add(10 * time.Second)
	for a.Connected() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not connect once a slot was free")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(dials); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
	if n := len(slots); n != 0 {
		t.Errorf("%d connect slots still taken after the agent connected", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
