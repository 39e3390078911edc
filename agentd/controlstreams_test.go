package agentd

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
)

// TestControlMessagesFollowTheWelcome: the agent offers api.FeatureControlOnStreams in its
// Hello and sends its GoAway (on leaving) where kasd's Welcome says: on a stream of its own when
// kasd agreed, on the control stream when kasd did not (a kasd older than the feature, which
// reads only the control stream).
func TestControlMessagesFollowTheWelcome(t *testing.T) {
	for _, tc := range []struct {
		name     string
		features uint64
	}{{"kasd agrees", api.FeatureControlOnStreams}, {"older kasd", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			ln, clientTLS := fakeKasdListener(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type seen struct {
				where string // "control" or "stream"
				m     api.Message
			}
			got := make(chan seen, 4)
			hellos := make(chan *api.Hello, 1)
			serverDone := make(chan struct{})
			go func() { // a kasd of the generation tc.features says
				defer close(serverDone)
				qc, err := ln.Accept(ctx)
				if err != nil {
					return
				}
				control, err := qc.AcceptStream(ctx)
				if err != nil {
					return
				}
				m, err := api.ReadExpect(control, api.TypeHello)
				if err != nil {
					return
				}
				hellos <- m.(*api.Hello)
				_ = api.WriteFrame(control, &api.Welcome{Version: api.ProtocolVersion, AgentID: "a1", ConnectionID: "c1", InstanceID: "kas-1", Features: tc.features})
				go func() {
					for {
						m, err := api.ReadFrame(control)
						if err != nil {
							return
						}
						got <- seen{"control", m}
					}
				}()
				for {
					st, err := qc.AcceptStream(ctx)
					if err != nil {
						return
					}
					m, err := api.ReadFrame(st)
					if err != nil {
						return
					}
					got <- seen{"stream", m}
					_ = st.Close()
					// The agent closes after the GoAway's linger; kasd would close once its
					// requests are done: close now.
					if _, ok := m.(*api.GoAway); ok {
						_ = qc.CloseWithError(0, "")
					}
				}
			}()
			nop := zerolog.Nop()
			a, err := New(Config{KasAddresses: []string{ln.Addr().String()}, Token: "t", Connections: 1,
				TLS:      clientTLS,
				Handlers: map[string]ServiceHandler{"none": noService{}}, Log: &nop, Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(runCtx) }()
			h := <-hellos
			if h.Features&api.FeatureControlOnStreams == 0 {
				t.Errorf("Hello features %#x: the agent does not offer control on streams", h.Features)
			}
			deadline := time.Now().Add(10 * time.Second)
			for a.Connected() != 1 {
				if time.Now().After(deadline) {
					t.Fatal("the agent did not connect")
				}
				time.Sleep(10 * time.Millisecond)
			}
			stop() // the agent leaves: GoAway
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			want := "control"
			if tc.features != 0 {
				want = "stream"
			}
			select {
			case s := <-got:
				if _, ok := s.m.(*api.GoAway); !ok || s.where != want {
					t.Fatalf("kasd got %T on the %s, want a GoAway on the %s", s.m, s.where, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("kasd got no GoAway")
			}
			cancel()
			ln.Close()
			<-serverDone
		})
	}
}
