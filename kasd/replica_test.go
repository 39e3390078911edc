package kasd_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// deadReplica connects as agent id, replica and process, then behaves like a process that was
// killed: it answers nothing (its connection stays up until closed).
func (e *env) deadReplica(id, replica, process string, services []string) (closed <-chan struct{}) {
	t := e.t
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost", api.ALPNAgent)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := d.Dial(ctx, e.agentUDP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	control, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello := &api.Hello{Version: api.ProtocolVersion, Token: e.tokens[id], AgentVersion: "dead", Replica: replica, Process: process, Services: services}
	if err := api.WriteFrame(control, hello); err != nil {
		t.Fatal(err)
	}
	_ = control.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := api.ReadExpect(control, api.TypeWelcome); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return qc.Context().Done()
}

// A replica that restarts (a new process, same replica name) retires its earlier process's
// connection at once: no request is routed into the dead connection, which would otherwise
// swallow requests until its idle timeout.
func TestRestartedReplicaRetiresOldConnection(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	dead := e.deadReplica("alpha", "pod-1", "old-process", []string{"web"})
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	select {
	case <-dead:
	case <-time.After(5 * time.Second):
		t.Fatal("the earlier process's connection was not closed")
	}
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
	wg.Wait()
	if failed > 0 {
		t.Errorf("%d of 100 requests failed", failed)
	}
	if got := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "replaced"}); got != 1 {
		t.Errorf("kasd_agent_connections_total{result=replaced} = %v, want 1", got)
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
