package kasd_test

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// A token revoked at GitLab stops carrying requests once its admission's cache TTL has passed:
// the first request after it asks GitLab again, the agent's connection is closed, and neither
// that request nor any later one reaches the agent. Before, a connection stayed admitted for as
// long as it lasted, and clients' requests went on reaching the revoked agent.
func TestGitLabRevokedTokenStopsRequests(t *testing.T) {
	const ttl = 300 * time.Millisecond
	e := newGitLabEnvClient(t, func(c *gitlab.Config) { c.PositiveCacheTTL = ttl })
	e.gl.AddAgent("tok-rv", gitlab.AgentInfo{AgentID: 601})
	a := e.startGitLabAgent("tok-rv", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)

	if resp := e.do("GET", "/api/v1/agents/601/proxy/web/x", nil); readAll(t, resp) == "" || resp.StatusCode != http.StatusOK {
		t.Fatalf("before revocation: %d", resp.StatusCode)
	}
	e.gl.RevokeAgent("tok-rv")
	time.Sleep(2 * ttl)
	// Many at once: every one of them is refused, none reaches the agent.
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	for range 20 {
		wg.Go(func() {
			resp := e.do("GET", "/api/v1/agents/601/proxy/web/x", nil)
			body := readAll(t, resp)
			if resp.StatusCode == http.StatusOK {
				t.Errorf("after revocation: 200 %q", body)
			} else if !strings.Contains(body, "agent_not_connected") {
				t.Errorf("after revocation: %d %q, want agent_not_connected", resp.StatusCode, body)
			}
			codes <- resp.StatusCode
		})
	}
	wg.Wait()
	waitCounter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "revoked"}, 1)
	waitCounter(t, e.reg, "kasd_agent_reverifications_total", map[string]string{"result": "revoked"}, 1)
	if n := counter(t, e.reg, "kasd_agent_reverifications_total", map[string]string{"result": "revoked"}); n != 1 {
		t.Errorf("%v revocations counted for one token, want 1", n)
	}
	// The agent's reconnections are refused.
	time.Sleep(300 * time.Millisecond)
	if n := a.Connected(); n != 0 {
		t.Errorf("the revoked agent has %d connections", n)
	}
}

// A check that GitLab does not answer leaves the connection admitted (as a cached admission is
// while GitLab is down); one that GitLab answers with the same agent renews it.
func TestGitLabReverifyFailsOpen(t *testing.T) {
	const ttl = 300 * time.Millisecond
	e := newGitLabEnvClient(t, func(c *gitlab.Config) { c.PositiveCacheTTL = ttl })
	e.gl.AddAgent("tok-up", gitlab.AgentInfo{AgentID: 602})
	a := e.startGitLabAgent("tok-up", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	get := func(when string) {
		t.Helper()
		resp := e.do("GET", "/api/v1/agents/602/proxy/web/x", nil)
		if body := readAll(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %q", when, resp.StatusCode, body)
		}
	}
	time.Sleep(2 * ttl)
	get("renewed")
	waitCounter(t, e.reg, "kasd_agent_reverifications_total", map[string]string{"result": "ok"}, 1)

	e.gl.SetDown(true)
	time.Sleep(2 * ttl)
	get("GitLab down")
	waitCounter(t, e.reg, "kasd_agent_reverifications_total", map[string]string{"result": "unavailable"}, 1)
	get("GitLab still down, within the retry delay")
	if n := counter(t, e.reg, "kasd_agent_reverifications_total", map[string]string{"result": "unavailable"}); n != 1 {
		t.Errorf("GitLab asked %v times while down, want once per retry delay", n)
	}
	if n := counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "revoked"}); n != 0 {
		t.Errorf("revoked %v connections while GitLab was down", n)
	}
}

// The same on the forwarded route: the holding kasd checks its connection before it passes a
// forwarded request to the agent.
func TestGitLabRevokedTokenStopsForwardedRequests(t *testing.T) {
	const ttl = 300 * time.Millisecond
	gl := gitlabtest.New(t, glSecret)
	client, err := gitlab.New(gitlab.Config{URL: gl.URL, AuthSecret: glSecret, Version: "test", PositiveCacheTTL: ttl}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	f := newFleetEnv(t, 0)
	f.config = func(c *kasd.Config) { c.AgentAuth = kasd.GitLabAuth{Client: client} }
	f.nodes = append(f.nodes, f.startNode("kas-0"), f.startNode("kas-1"))
	gl.AddAgent("tok-fw", gitlab.AgentInfo{AgentID: 603})
	f.tokens["603"] = "tok-fw"
	svc := echoService(t, "r1")
	a := f.startAgent("603", "r1", svc.URL, f.nodes[:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("603", "kas-0")
	f.warmLinks(f.nodes[1], "603", 3)

	gl.RevokeAgent("tok-fw")
	time.Sleep(2 * ttl)
	for i := range 2 { // the first finds the token revoked, the next finds no holder
		code, body := f.get(f.nodes[1], "603", "/x")
		if code == http.StatusOK || !strings.Contains(body, "agent_not_connected") {
			t.Fatalf("forwarded request %d after revocation: %d %q, want agent_not_connected", i, code, body)
		}
	}
	waitCounter(t, f.nodes[0].promReg, "kasd_agent_connections_total", map[string]string{"result": "revoked"}, 1)
}

// GitLab slow to answer a check does not hold the requests of the connection: they wait for the
// check at most a second, then go on (the check goes on, shared: one question to GitLab).
func TestGitLabReverifySlowDoesNotHoldRequests(t *testing.T) {
	const ttl = 300 * time.Millisecond
	e := newGitLabEnvClient(t, func(c *gitlab.Config) { c.PositiveCacheTTL = ttl; c.Timeout = 20 * time.Second })
	e.gl.AddAgent("tok-slow", gitlab.AgentInfo{AgentID: 604})
	a := e.startGitLabAgent("tok-slow", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	var asked atomic.Int64
	e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.Error(w, "slow", http.StatusServiceUnavailable)
	}))
	time.Sleep(2 * ttl)
	start := time.Now()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			resp := e.do("GET", "/api/v1/agents/604/proxy/web/x", nil)
			if body := readAll(t, resp); resp.StatusCode != http.StatusOK {
				t.Errorf("while GitLab is slow: %d %q", resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("requests held %v by a check GitLab is slow to answer", d)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("GitLab asked %d times for one connection's check, want 1", n)
	}
	once.Do(func() { close(release) })
}
