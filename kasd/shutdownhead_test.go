package kasd_test

import (
	"context"
	"fmt"
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
// grace are told that kasd shut down, not that the agent failed ("connection failed: ...
// (local): shutting_down: kasd closed"). The code stays agent_failed, without Retry-After: they
// reached the agent and may have been executed, and the retryable shutting_down's Retry-After
// would have clients such as client-go send a POST again.
func TestHeadPendingAtShutdownGraceSaysKasdShutDown(t *testing.T) {
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

	answers := make(chan string, n)
	for range n {
		go func() {
			req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/slow"), strings.NewReader("x"))
			req.Header.Set("Authorization", "Bearer "+e.token())
			resp, err := e.client.Do(req)
			if err != nil {
				answers <- "error: " + err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- fmt.Sprintf("%d %s retry-after=%q %s", resp.StatusCode, resp.Header.Get(api.HeaderError), resp.Header.Get("Retry-After"), b)
		}()
	}
	arrived.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.server().Shutdown(ctx); err == nil {
		t.Error("Shutdown with requests in flight at the end of the grace reported no error")
	}
	want := `502 agent_failed retry-after="" {"error":"agent_failed","message":"kasd shut down before agent alpha answered`
	for range n {
		if a := <-answers; !strings.HasPrefix(a, want) {
			t.Errorf("got %s\nwant it to start %s", a, want)
		}
	}
}

// The same at an entry kasd whose request was forwarded: its own link to the holding peer,
// closed at the end of its grace, is not the peer's failure either.
func TestForwardedHeadPendingAtShutdownGraceSaysKasdShutDown(t *testing.T) {
	f := newFleetEnv(t, 0)
	f.config = func(c *kasd.Config) { c.ShutdownGrace = time.Second }
	k0, k1 := f.startNode("kas-0"), f.startNode("kas-1")
	f.nodes = append(f.nodes, k0, k1)
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(func() { close(release); svc.Close() })
	f.startAgent("alpha", "pod", svc.URL, []*node{k1}, 1)
	f.waitHolders("alpha", "kas-1")
	f.warmLinks(k0, "alpha", 3)
	type answer struct {
		code int
		body string
	}
	done := make(chan answer, 1)
	go func() {
		code, body := f.do(k0, "POST", "alpha", "/slow", strings.NewReader("x"))
		done <- answer{code, body}
	}()
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = k0.srv.Shutdown(ctx)
	a := <-done
	if a.code != http.StatusBadGateway || !strings.Contains(a.body, `"message":"kasd shut down before peer kas-1 answered`) {
		t.Errorf("got %d %s, want 502 saying kasd shut down before peer kas-1 answered", a.code, a.body)
	}
}
