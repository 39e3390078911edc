package kasd_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// The per-agent memory bound of docs/security.md, "What one agent can make kasd hold": per
// connection, per stream waiting to be accepted or reset, and per stream held within
// the agent's budget (head up to 64 KiB, unread body up to the initial 256 KiB stream window,
// goroutine and request state).
const (
	boundPerConnection = 256 << 10
	boundPerQueued     = 8 << 10
	boundPerHeld       = (64 + 256 + 32) << 10
)

// TestAgentStreamBudget: an agent opening streams past MaxStreamsFromAgent, on several
// connections, gets the excess reset as refused (counted), the streams within its budget are
// served, and kasd's heap grows by less than the documented bound even though every held
// stream's body is pushed to its flow-control window and never read.
func TestAgentStreamBudget(t *testing.T) {
	const conns, perConn, budget = 4, 40, 16
	var held, served atomic.Int64
	release := make(chan struct{})
	e := newEnv(t, func(c *kasd.Config) {
		c.MaxStreamsFromAgent = budget
		c.ModulesRatePerAgent = 1e6 // this test is about streams, not rate
		// A GitLab that never answers and never reads the body: every admitted stream is held.
		c.Modules = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served.Add(1)
			held.Add(1)
			defer held.Add(-1)
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
	})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	var qcs []*quicgo.Conn
	for i := range conns {
		qc, d := e.agentHandshake(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], Replica: fmt.Sprintf("r%d", i), Process: fmt.Sprint(i), Services: []string{"web"}})
		t.Cleanup(func() { _ = qc.CloseWithError(0, ""); d.Close() })
		qcs = append(qcs, qc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := make([]byte, 512<<10) // twice the initial stream window: kasd buffers at most the window
	var refused, other atomic.Int64
	var wg sync.WaitGroup
	for _, qc := range qcs {
		for range perConn {
			st, err := qc.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				head := &api.Request{Kind: api.KindGitLab, Service: "mod", Method: "POST", Target: "/modules/mod/x", ContentLength: -1}
				_ = st.SetWriteDeadline(time.Now().Add(3 * time.Second))
				err := api.WriteFrame(st, head)
				if err == nil {
					_, err = st.Write(body)
				}
				var se *quicgo.StreamError
				switch {
				case errors.As(err, &se) && se.ErrorCode == quic.StreamCodeOverloaded:
					refused.Add(1)
				case err != nil && isTimeout(err):
					// Blocked on flow control: kasd holds the stream without reading it.
				default:
					other.Add(1)
					t.Logf("stream: %v", err)
				}
			})
		}
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for held.Load() != budget && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	bound := int64(conns*boundPerConnection + conns*perConn*boundPerQueued + budget*boundPerHeld)
	// The fake agent lives in this process too: its own connections' state is measured with
	// kasd's (its streams' data is sent and acknowledged by now).
	agentSide := int64(conns * boundPerConnection)
	t.Logf("held %d, refused %d, other %d; heap grew %d KiB (kasd and the fake agent together), bound %d KiB",
		held.Load(), refused.Load(), other.Load(), growth>>10, bound>>10)
	if held.Load() != budget {
		t.Fatalf("%d streams held, want the budget %d", held.Load(), budget)
	}
	if refused.Load() != conns*perConn-budget || other.Load() != 0 {
		t.Fatalf("%d streams refused (%d otherwise), want %d", refused.Load(), other.Load(), conns*perConn-budget)
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "max_agent_streams_per_agent"}); n != float64(conns*perConn-budget) {
		t.Fatalf("max_agent_streams_per_agent rejections = %v", n)
	}
	if growth > bound+agentSide {
		t.Fatalf("heap grew %d KiB, more than the documented bound %d KiB (+%d KiB for the fake agent)", growth>>10, bound>>10, agentSide>>10)
	}
	// The budget is given back: once the held streams end, the agent may open new ones.
	close(release)
	for held.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st, err := qcs[0].OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.WriteFrame(st, &api.Request{Kind: api.KindGitLab, Service: "mod", Method: "GET", Target: "/modules/mod/y"}); err != nil {
		t.Fatal(err)
	}
	for served.Load() != budget+1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if served.Load() != budget+1 {
		t.Fatalf("after the held streams ended, a new stream was not served (%d served)", served.Load())
	}
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// TestModulesRatePerAgent: past its burst, an agent's module requests are answered overloaded
// with a retry hint and counted; another agent keeps its own budget.
func TestModulesRatePerAgent(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) {
		c.ModulesRatePerAgent = 0.01 // one request per 100 s: nothing is earned back during the test
		c.ModulesBurstPerAgent = 3
		c.Modules = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	request := func(qc *quicgo.Conn) api.Message {
		t.Helper()
		st, err := qc.OpenStreamSync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := api.WriteFrame(st, &api.Request{Kind: api.KindGitLab, Service: "mod", Method: "GET", Target: "/modules/mod/x"}); err != nil {
			t.Fatal(err)
		}
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := api.ReadFrame(st)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	connect := func(id string) *quicgo.Conn {
		qc, d := e.agentHandshake(&api.Hello{Version: api.ProtocolVersion, Token: e.tokens[id], Replica: id, Services: []string{"web"}})
		t.Cleanup(func() { _ = qc.CloseWithError(0, ""); d.Close() })
		return qc
	}
	alpha, beta := connect("alpha"), connect("beta")
	for i := range 3 {
		if m, ok := request(alpha).(*api.Response); !ok || m.Status != http.StatusNoContent {
			t.Fatalf("request %d within the burst: %v", i, m)
		}
	}
	m, ok := request(alpha).(*api.Error)
	if !ok || m.Code != api.CodeOverloaded || m.RetryAfter <= 0 {
		t.Fatalf("request past the burst: %#v, want overloaded with a retry hint", m)
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "modules_rate_per_agent"}); n != 1 {
		t.Fatalf("modules_rate_per_agent rejections = %v, want 1", n)
	}
	if m, ok := request(beta).(*api.Response); !ok || m.Status != http.StatusNoContent {
		t.Fatalf("another agent's request: %v", m)
	}
}
