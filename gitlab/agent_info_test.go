package gitlab_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
)

var agent1 = gitlab.AgentInfo{
	ProjectID:        10,
	AgentID:          42,
	AgentName:        "prod",
	DefaultBranch:    "main",
	GitalyInfo:       json.RawMessage(`{"address":"tcp://gitaly:8075","features":{"x":"y"}}`),
	GitalyRepository: json.RawMessage(`{"storage_name":"default","relative_path":"a/b.git"}`),
}

func TestAgentInfoAdmitted(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok-1", agent1)

	info, err := e.client.AgentInfo(t.Context(), "tok-1")
	if err != nil {
		t.Fatal(err)
	}
	if info.ID() != "42" || info.ProjectID != 10 || info.AgentName != "prod" || info.DefaultBranch != "main" {
		t.Errorf("info = %+v", info)
	}
	if !jsonEqual(info.GitalyInfo, agent1.GitalyInfo) || !jsonEqual(info.GitalyRepository, agent1.GitalyRepository) {
		t.Errorf("raw fields not kept: %s %s", info.GitalyInfo, info.GitalyRepository)
	}
	reqs := e.gl.Requests()
	if len(reqs) != 1 {
		t.Fatalf("GitLab got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Rejected != "" || r.AgentID != 42 || r.Path != gitlab.AgentInfoPath || r.Method != http.MethodGet {
		t.Errorf("recorded %+v", r)
	}
	if r.UserAgent != "kasd/test" {
		t.Errorf("User-Agent %q", r.UserAgent)
	}
	if got := r.Header.Get("Authorization"); got != "Bearer tok-1" {
		t.Errorf("Authorization %q", got)
	}

	// Second call: served from cache; the caller may not alter the cached answer.
	info.AgentName = "changed"
	info.GitalyInfo[0] = 'X'
	info2, err := e.client.AgentInfo(t.Context(), "tok-1")
	if err != nil {
		t.Fatal(err)
	}
	if info2.AgentName != "prod" || !jsonEqual(info2.GitalyInfo, agent1.GitalyInfo) {
		t.Errorf("cached answer was modified through a returned copy: %+v", info2)
	}
	if n := e.gl.AgentInfoCalls(); n != 1 {
		t.Errorf("AgentInfoCalls = %d, want 1 (cached)", n)
	}
	if hits := e.counter(t, "kasd_gitlab_agent_info_cache_total", map[string]string{"result": "hit"}); hits != 1 {
		t.Errorf("cache hits = %v", hits)
	}
	if n := e.counter(t, "kasd_gitlab_requests_total", map[string]string{"endpoint": "agent_info", "code": "200"}); n != 1 {
		t.Errorf("requests_total{200} = %v", n)
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return string(ja) == string(jb)
}

func TestAgentInfoRevokedIsNegativelyCached(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok-1", agent1)
	e.gl.RevokeAgent("tok-1")

	_, err := e.client.AgentInfo(t.Context(), "tok-1")
	ae := wantCode(t, err, api.CodeUnauthenticated)
	if !strings.Contains(ae.Message, "rejected by GitLab") || ae.Code.Retryable() {
		t.Errorf("error %v", ae)
	}
	if strings.Contains(err.Error(), "tok-1") {
		t.Errorf("error contains the token: %v", err)
	}
	_, err = e.client.AgentInfo(t.Context(), "tok-1")
	wantCode(t, err, api.CodeUnauthenticated)
	if n := e.gl.AgentInfoCalls(); n != 1 {
		t.Errorf("AgentInfoCalls = %d, want 1 (negative cache)", n)
	}
	if n := e.counter(t, "kasd_gitlab_agent_info_cache_total", map[string]string{"result": "negative_hit"}); n != 1 {
		t.Errorf("negative hits = %v", n)
	}

	// An unknown token is rejected the same way.
	_, err = e.client.AgentInfo(t.Context(), "unknown")
	wantCode(t, err, api.CodeUnauthenticated)
	_, err = e.client.AgentInfo(t.Context(), "")
	wantCode(t, err, api.CodeUnauthenticated)
	if n := e.gl.AgentInfoCalls(); n != 2 {
		t.Errorf("AgentInfoCalls = %d, want 2 (empty token never asked)", n)
	}
}

// AgentInfoFresh asks GitLab whatever the cache holds, and its answer replaces the cached one:
// a token revoked after its admission was cached is seen at once (kasd's check of connections
// in use), and a plain AgentInfo then gets the revocation too.
func TestAgentInfoFreshSkipsCache(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok-1", agent1)
	if _, err := e.client.AgentInfo(t.Context(), "tok-1"); err != nil {
		t.Fatal(err)
	}
	e.gl.RevokeAgent("tok-1")
	if _, err := e.client.AgentInfo(t.Context(), "tok-1"); err != nil {
		t.Fatalf("cached admission: %v", err)
	}
	_, err := e.client.AgentInfoFresh(t.Context(), "tok-1")
	wantCode(t, err, api.CodeUnauthenticated)
	_, err = e.client.AgentInfo(t.Context(), "tok-1")
	wantCode(t, err, api.CodeUnauthenticated)
	if n := e.gl.AgentInfoCalls(); n != 2 {
		t.Errorf("AgentInfoCalls = %d, want 2", n)
	}
}

func TestAgentInfoForbidden(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok-1", agent1)
	e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"message":"403 Forbidden"}`, http.StatusForbidden)
	}))
	for range 2 {
		_, err := e.client.AgentInfo(t.Context(), "tok-1")
		wantCode(t, err, api.CodeForbidden)
	}
	if n := e.gl.AgentInfoCalls(); n != 1 {
		t.Errorf("AgentInfoCalls = %d, want 1 (negative cache)", n)
	}
}

func TestAgentInfoGitLabDown(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("cached", agent1)
	e.gl.AddAgent("new", gitlab.AgentInfo{AgentID: 7, ProjectID: 1})
	if _, err := e.client.AgentInfo(t.Context(), "cached"); err != nil {
		t.Fatal(err)
	}

	e.gl.SetDown(true)
	for range 2 {
		_, err := e.client.AgentInfo(t.Context(), "new")
		ae := wantCode(t, err, api.CodeAuthUnavailable)
		if !ae.Code.Retryable() || api.CodeOf(err) == api.CodeUnauthenticated {
			t.Errorf("GitLab down must be retryable and not look like a bad token: %v", err)
		}
	}
	// 5xx is never cached: both calls asked GitLab.
	if n := e.gl.AgentInfoCalls(); n != 3 {
		t.Errorf("AgentInfoCalls = %d, want 3", n)
	}
	// The already admitted agent is still admitted.
	info, err := e.client.AgentInfo(t.Context(), "cached")
	if err != nil || info.AgentID != 42 {
		t.Fatalf("cached agent while GitLab is down: %v, %v", info, err)
	}

	e.gl.SetDown(false)
	info, err = e.client.AgentInfo(t.Context(), "new")
	if err != nil || info.AgentID != 7 {
		t.Fatalf("after recovery: %v, %v", info, err)
	}
}

func TestAgentInfoUnreachableAndMalformed(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		gl := gitlabtest.New(t, testSecret)
		url := gl.URL
		gl.Close()
		c, err := gitlab.New(gitlab.Config{URL: url, AuthSecret: testSecret}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.AgentInfo(t.Context(), "tok")
		wantCode(t, err, api.CodeAuthUnavailable)
	})
	t.Run("timeout", func(t *testing.T) {
		e := newEnv(t, func(c *gitlab.Config) { c.Timeout = 100 * time.Millisecond })
		e.gl.AddAgent("tok", agent1)
		e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}))
		_, err := e.client.AgentInfo(t.Context(), "tok")
		wantCode(t, err, api.CodeAuthUnavailable)
	})
	t.Run("malformed", func(t *testing.T) {
		e := newEnv(t, nil)
		e.gl.AddAgent("tok", agent1)
		e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"agent_id": "nope"`))
		}))
		_, err := e.client.AgentInfo(t.Context(), "tok")
		wantCode(t, err, api.CodeAuthUnavailable)
	})
	t.Run("redirect not followed", func(t *testing.T) {
		e := newEnv(t, nil)
		e.gl.AddAgent("tok", agent1)
		e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/api/v4/internal/kubernetes/agent_info?again", http.StatusFound)
		}))
		_, err := e.client.AgentInfo(t.Context(), "tok")
		wantCode(t, err, api.CodeAuthUnavailable)
		if n := e.gl.AgentInfoCalls(); n != 1 {
			t.Errorf("AgentInfoCalls = %d: redirect followed", n)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		e := newEnv(t, func(c *gitlab.Config) { c.Timeout = 200 * time.Millisecond })
		e.gl.AddAgent("tok", agent1)
		e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}))
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		_, err := e.client.AgentInfo(ctx, "tok")
		wantCode(t, err, api.CodeDeadlineExceeded)
		// The shared lookup ends within Timeout; wait for it so that no goroutine leaks.
		time.Sleep(300 * time.Millisecond)
	})
}

func TestAgentInfoCacheExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	e := newEnv(t, func(c *gitlab.Config) { c.Now = clock.Now })
	e.gl.AddAgent("tok", agent1)

	if _, err := e.client.AgentInfo(t.Context(), "tok"); err != nil {
		t.Fatal(err)
	}
	e.gl.RevokeAgent("tok")
	clock.Advance(4*time.Minute + 59*time.Second)
	if _, err := e.client.AgentInfo(t.Context(), "tok"); err != nil {
		t.Fatalf("within the positive TTL: %v", err)
	}
	if n := e.gl.AgentInfoCalls(); n != 1 {
		t.Fatalf("AgentInfoCalls = %d, want 1", n)
	}
	clock.Advance(time.Second) // 5m: expired
	_, err := e.client.AgentInfo(t.Context(), "tok")
	wantCode(t, err, api.CodeUnauthenticated)
	if n := e.gl.AgentInfoCalls(); n != 2 {
		t.Fatalf("AgentInfoCalls = %d, want 2", n)
	}

	e.gl.AddAgent("tok", agent1) // un-revoked
	clock.Advance(59 * time.Second)
	_, err = e.client.AgentInfo(t.Context(), "tok")
	wantCode(t, err, api.CodeUnauthenticated) // still negatively cached
	clock.Advance(time.Second)                // 1m: expired
	if _, err := e.client.AgentInfo(t.Context(), "tok"); err != nil {
		t.Fatalf("after the negative TTL: %v", err)
	}
	if n := e.gl.AgentInfoCalls(); n != 3 {
		t.Fatalf("AgentInfoCalls = %d, want 3", n)
	}
}

func TestAgentInfoCacheBounded(t *testing.T) {
	e := newEnv(t, func(c *gitlab.Config) { c.MaxCacheEntries = 2 })
	for _, tok := range []string{"a", "b", "c"} {
		e.gl.AddAgent(tok, agent1)
		if _, err := e.client.AgentInfo(t.Context(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.counter(t, "kasd_gitlab_agent_info_cache_evictions_total", map[string]string{"reason": "full"}); n != 1 {
		t.Errorf("evictions = %v, want 1", n)
	}
	// The newest entry is cached; one of the older two made room for it.
	if _, err := e.client.AgentInfo(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	if n := e.gl.AgentInfoCalls(); n != 3 {
		t.Errorf("AgentInfoCalls = %d, want 3", n)
	}
}

func TestAgentInfoConcurrentLookupsCollapse(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	release := make(chan struct{})
	e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(gitlab.AgentInfo{AgentID: gitlabtest.AgentIDFrom(r)})
	}))
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			info, err := e.client.AgentInfo(t.Context(), "tok")
			if err == nil && info.AgentID != 42 {
				t.Errorf("AgentID %d", info.AgentID)
			}
			errs <- err
		})
	}
	// Hold GitLab's answer until the first request arrived and the others had time to join.
	deadline := time.Now().Add(5 * time.Second)
	for e.gl.AgentInfoCalls() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := e.gl.AgentInfoCalls(); got != 1 {
		t.Errorf("AgentInfoCalls = %d, want exactly 1", got)
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(c *gitlab.Config) {
		c.RateLimit = 0.001
		c.Burst = 1
		c.RateLimitMaxWait = 10 * time.Millisecond
	})
	e.gl.AddAgent("a", agent1)
	e.gl.AddAgent("b", agent1)
	if _, err := e.client.AgentInfo(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	_, err := e.client.AgentInfo(t.Context(), "b")
	ae := wantCode(t, err, api.CodeOverloaded)
	if ae.RetryAfter <= 0 {
		t.Errorf("RetryAfter %v", ae.RetryAfter)
	}
	if n := e.counter(t, "kasd_gitlab_rate_limited_total", nil); n != 1 {
		t.Errorf("rate_limited_total = %v", n)
	}
	if n := e.gl.AgentInfoCalls(); n != 1 {
		t.Errorf("AgentInfoCalls = %d", n)
	}
}

// TestCloseWaitsForLookups: a lookup outlives the caller that gave up on it, but not Close:
// Close ends it and returns only once it is over; AgentInfo fails with shutting_down after.
func TestCloseWaitsForLookups(t *testing.T) {
	e := newEnv(t, func(c *gitlab.Config) { c.Timeout = 30 * time.Second })
	e.gl.AddAgent("slow", agent1)
	entered := make(chan struct{})
	release := make(chan struct{}) // unblocks GitLab if the client never cancels its request
	t.Cleanup(func() { close(release) })
	e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-entered; cancel() }()
	_, err := e.client.AgentInfo(ctx, "slow")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("AgentInfo with a canceled context: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); e.client.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the lookup in flight")
	}
	// The lookup counted its failed request before its goroutine ended.
	errored := map[string]string{"endpoint": "agent_info", "code": "error"}
	if n := e.counter(t, "kasd_gitlab_requests_total", errored); n != 1 {
		t.Fatalf("Close returned with the lookup still in flight (agent_info errors = %v, want 1)", n)
	}
	_, err = e.client.AgentInfo(t.Context(), "slow")
	wantCode(t, err, api.CodeShuttingDown)
}

// A token GitLab cannot have issued is refused as unauthenticated without a request to GitLab
// (and without spending the rate limit), and counted.
func TestMalformedAgentTokenNotSent(t *testing.T) {
	gl := gitlabtest.New(t, testSecret)
	reg := prometheus.NewRegistry()
	c, err := gitlab.New(gitlab.Config{URL: gl.URL, AuthSecret: testSecret, Version: "test"}, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, tok := range []string{"made-up\ntoken", "with space", "tab\there", "nul\x00", "del\x7f", "tøken", strings.Repeat("g", gitlab.MaxAgentTokenBytes+1)} {
		_, err := c.AgentInfo(context.Background(), tok)
		if api.CodeOf(err) != api.CodeUnauthenticated {
			t.Errorf("%.20q: %v, want unauthenticated", tok, err)
		}
	}
	if n := gl.AgentInfoCalls(); n != 0 {
		t.Errorf("GitLab saw %d agent_info calls, want 0", n)
	}
	if n := gatheredValue(t, reg, "kasd_gitlab_agent_tokens_malformed_total"); n != 7 {
		t.Errorf("kasd_gitlab_agent_tokens_malformed_total = %v, want 7", n)
	}
	// The longest and every printable byte still go to GitLab.
	ok := strings.Repeat("g", gitlab.MaxAgentTokenBytes-95)
	for b := byte('!'); b <= '~'; b++ {
		ok += string(b)
	}
	gl.AddAgent(ok, gitlab.AgentInfo{AgentID: 3})
	if info, err := c.AgentInfo(context.Background(), ok); err != nil || info.AgentID != 3 {
		t.Errorf("a printable token of %d bytes: %v %v", len(ok), info, err)
	}
}

// gatheredValue is the value of the unlabelled counter name in reg.
func gatheredValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not gathered", name)
	return 0
}

// GitLab's agent_info answers kasd cannot use are refused as auth_unavailable and counted by
// reason (the limits audit: an answer over 1 MiB was counted only as GitLab's 200).
func TestAgentInfoAnswersRefusedCounted(t *testing.T) {
	for reason, answer := range map[string]string{
		"too_large":   `{"agent_id": 1, "pad": "` + strings.Repeat("x", 1<<20) + `"}`,
		"malformed":   `{"agent_id": `,
		"no_agent_id": `{"agent_name": "a"}`,
	} {
		t.Run(reason, func(t *testing.T) {
			e := newEnv(t, nil)
			e.gl.AddAgent("tok", agent1)
			e.gl.SetAgentInfoHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte(answer))
			}))
			_, err := e.client.AgentInfo(t.Context(), "tok")
			wantCode(t, err, api.CodeAuthUnavailable)
			if n := e.counter(t, "kasd_gitlab_answers_refused_total", map[string]string{"endpoint": "agent_info", "reason": reason}); n != 1 {
				t.Errorf("kasd_gitlab_answers_refused_total{reason=%s} = %v, want 1", reason, n)
			}
		})
	}
}
