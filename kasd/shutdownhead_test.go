package kasd_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/kasd"
)

// Requests still waiting for their agent's answer when kasd closes at the end of its shutdown
// grace get 503 shutting_down saying so (and that they reached the agent and may have been
// executed), counted as such: they got 502 agent_failed, blaming the agent for kasd's own close
// ("connection failed: ... (local): shutting_down: kasd closed").
func TestHeadPendingAtShutdownGraceIsShuttingDown(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.ShutdownGrace = time.Second })
	release := make(chan struct{})
	var arrived sync.WaitGroup
	const n = 20
	arrived.Add(n)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); svc.Close() })
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)

	type answer struct {
		status    int
		code, msg string
	}
	answers := make(chan answer, n)
	for range n {
		go func() {
			resp := e.do("POST", "/api/v1/agents/alpha/proxy/web/slow", strings.NewReader("x"))
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- answer{resp.StatusCode, resp.Header.Get(api.HeaderError), string(b)}
		}()
	}
	arrived.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.server().Shutdown(ctx); err == nil {
		t.Error("Shutdown with requests in flight at the end of the grace reported no error")
	}
	for range n {
		a := <-answers
		if a.status != http.StatusServiceUnavailable || a.code != api.CodeShuttingDown.String() ||
			!strings.Contains(a.msg, "kasd shut down before agent alpha answered") {
			t.Errorf("got %d %s %s, want 503 shutting_down saying kasd shut down", a.status, a.code, a.msg)
		}
	}
	if got := counter(t, e.reg, "kasd_requests_total", map[string]string{"route": "local", "code": "503"}); got != n {
		t.Errorf("kasd_requests_total{route=local,code=503} = %v, want %d", got, n)
	}
	if got := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "shutting_down"}); got != n {
		t.Errorf("kasd_api_errors_total{code=shutting_down} = %v, want %d", got, n)
	}
}
