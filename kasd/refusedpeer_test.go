package kasd_test

import (
	"net/http"
	"testing"
	"time"
)

// A peer that refused a request twice (it did not hold the agent: the registry still listed a
// killed agent's closed connections there) is asked again once the registry lists its holding
// otherwise (the restarted agent connected there), within the request's route timeout. Skipped
// for the rest of the request instead, the request waited out --route-timeout for a 503 while
// the agent was back at that peer: chaos agent-kill lost the requests through the kasd the new
// process did not connect to.
func TestRefusingPeerAskedAgainOnceItHoldsTheAgent(t *testing.T) {
	f := newFleetEnv(t, 2)
	k0, k1 := f.nodes[0], f.nodes[1]
	svc := namedService(t, "alpha")
	// kas-1 claims alpha without holding it: the killed process's connections, closed there,
	// still listed in kas-0's view.
	k1.reg.SetAgentConnections("alpha", 1)
	f.waitHolders("alpha", "kas-1")
	type result struct {
		code int
		body string
		took time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		code, body := f.get(k0, "alpha", "/")
		done <- result{code, body, time.Since(start)}
	}()
	notHolder := map[string]string{"result": "not_holder"}
	for counter(t, k1.promReg, "kasd_forwarded_in_total", notHolder) < 2 {
		select {
		case r := <-done:
			t.Fatalf("the request ended before kas-1 refused it twice: %d %s", r.code, r.body)
		case <-time.After(10 * time.Millisecond):
		}
	}
	refused := time.Since(start)
	f.startAgent("alpha", "pod", svc.URL, []*node{k1}, 1) // the restarted process, at kas-1 only
	r := <-done
	if r.code != http.StatusOK {
		t.Fatalf("refused twice by kas-1 after %v, agent back at kas-1 since: %d %s after %v (the route timeout is 3s)",
			refused.Round(time.Millisecond), r.code, r.body, r.took.Round(time.Millisecond))
	}
	t.Logf("refused twice after %v, served after %v", refused.Round(time.Millisecond), r.took.Round(time.Millisecond))
}
