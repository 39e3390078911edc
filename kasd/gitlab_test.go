package kasd_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// glSecret is the secret shared by kasd and the stand-in GitLab (GitLab's .gitlab_kas_secret).
var glSecret = []byte("gitlab-kas-shared-secret-32bytes")

// glEnv is an env whose kasd authenticates agents through a stand-in GitLab and serves the
// modules endpoint with the gitlab client.
type glEnv struct {
	*env
	gl    *gitlabtest.Server
	glReg *prometheus.Registry
}

func newGitLabEnv(t *testing.T, opts ...envOption) *glEnv {
	t.Helper()
	return newGitLabEnvClient(t, nil, opts...)
}

// newGitLabEnvClient is newGitLabEnv with the GitLab client's Config changed by client (nil: as
// it is).
func newGitLabEnvClient(t *testing.T, client func(*gitlab.Config), opts ...envOption) *glEnv {
	t.Helper()
	// Cleanups run last-in first-out: agents, then kasd, then the client, then GitLab.
	gl := gitlabtest.New(t, glSecret)
	reg := prometheus.NewRegistry()
	cfg := gitlab.Config{URL: gl.URL, AuthSecret: glSecret, Version: "test"}
	if client != nil {
		client(&cfg)
	}
	c, err := gitlab.New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e := newEnv(t, append([]envOption{func(kc *kasd.Config) {
		kc.AgentAuth = kasd.GitLabAuth{Client: c}
		kc.Modules = c.ModuleHandler()
	}}, opts...)...)
	return &glEnv{env: e, gl: gl, glReg: reg}
}

// glAgent is an agent started with a GitLab agent token, its metrics, and its GitLab handler
// served the way --gitlab-proxy-listen serves it.
type glAgent struct {
	*agentd.Agent
	reg   *prometheus.Registry
	proxy *httptest.Server
}

// startGitLabAgent starts an agent whose token is tok. backoff zero: the env's quick backoff.
// opts change the agent's Config after the env's settings.
func (e *glEnv) startGitLabAgent(tok, replica string, backoff quic.Backoff, opts ...func(*agentd.Config)) *glAgent {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	a := e.startAgent(tok, replica, map[string]string{"web": echoService(e.t, replica).URL}, func(c *agentd.Config) {
		c.Registerer = reg
		if backoff.Initial != 0 {
			c.Backoff = backoff
		}
		for _, o := range opts {
			o(c)
		}
	})
	proxy := httptest.NewServer(a.GitLabHandler())
	e.t.Cleanup(proxy.Close)
	return &glAgent{Agent: a, reg: reg, proxy: proxy}
}

// waitCounter waits until a counter reaches at least n.
func waitCounter(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counter(t, g, name, labels) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want >= %v", name, labels, counter(t, g, name, labels), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// moduleRequests returns what GitLab received on the modules endpoint.
func (e *glEnv) moduleRequests() []gitlabtest.Recorded {
	var out []gitlabtest.Recorded
	for _, r := range e.gl.Requests() {
		if strings.HasPrefix(r.Path, gitlab.ModulesPathPrefix) {
			out = append(out, r)
		}
	}
	return out
}

var noFollow = &http.Client{
	Timeout:       60 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func TestGitLabAgentAdmitted(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-admitted", gitlab.AgentInfo{AgentID: 101, ProjectID: 5, AgentName: "prod"})
	a := e.startGitLabAgent("tok-admitted", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)

	// The agent is routed by GitLab's agent id.
	resp := e.do("GET", "/api/v1/agents/101/proxy/web/x", nil)
	if body := readAll(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("request to agent 101: %d %s", resp.StatusCode, body)
	}
	reqs := e.gl.Requests()
	if len(reqs) != 1 || reqs[0].Path != gitlab.AgentInfoPath || reqs[0].AgentID != 101 || reqs[0].Rejected != "" {
		t.Fatalf("GitLab received %+v, want one accepted agent_info for agent 101", reqs)
	}
	if got := reqs[0].Header.Get("Authorization"); got != "Bearer tok-admitted" {
		t.Errorf("agent_info Authorization %q", got)
	}
	if n := counter(t, e.glReg, "kasd_gitlab_requests_total", map[string]string{"endpoint": "agent_info", "code": "200"}); n != 1 {
		t.Errorf("kasd_gitlab_requests_total{agent_info,200} = %v", n)
	}
}

// A token GitLab rejects is refused with a typed, permanent error: the agent backs off long
// (Backoff attempt 6 and up) instead of hammering kasd and GitLab.
func TestGitLabRevokedTokenRefused(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-revoked", gitlab.AgentInfo{AgentID: 102})
	e.gl.RevokeAgent("tok-revoked")
	// Quick retries would be 50ms, 100ms, 200ms...; a permanent refusal waits 50ms*2^6 = 3.2s.
	a := e.startGitLabAgent("tok-revoked", "pod-1", quic.Backoff{Initial: 50 * time.Millisecond, Max: 10 * time.Second, Jitter: -1})
	refused := map[string]string{"result": "unauthenticated"}
	waitCounter(t, a.reg, "agentd_connect_attempts_total", refused, 1)
	time.Sleep(time.Second)
	if n := counter(t, a.reg, "agentd_connect_attempts_total", refused); n != 1 {
		t.Errorf("agent retried a revoked token %v times within 1s; want one attempt, then a long backoff", n)
	}
	if n := counter(t, a.reg, "agentd_connect_attempts_total", nil); n != 1 {
		t.Errorf("connect attempts = %v, want 1", n)
	}
	if a.Connected() != 0 {
		t.Error("agent with a revoked token is connected")
	}
	if n := counter(t, e.reg, "kasd_agent_connections_total", refused); n != 1 {
		t.Errorf("kasd_agent_connections_total{unauthenticated} = %v", n)
	}

	// The agent cannot reach GitLab either: its module requests fail as not connected.
	rt := &agentd.GitLabRoundTripper{Agent: a.Agent, ConnectWait: 200 * time.Millisecond}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://kasd/modules/foo/x", nil)
	start := time.Now()
	_, err := rt.RoundTrip(req)
	if api.CodeOf(err) != api.CodeAgentNotConnected || time.Since(start) < 200*time.Millisecond {
		t.Errorf("module request of a disconnected agent: %v after %s", err, time.Since(start))
	}
	if len(e.moduleRequests()) != 0 {
		t.Error("a module request reached GitLab")
	}
}

// GitLab down: a new token is refused with the retryable auth_unavailable (the agent retries
// quickly), a token GitLab admitted before is still admitted from the cache, and the new agent
// gets in once GitLab is back.
func TestGitLabDown(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-cached", gitlab.AgentInfo{AgentID: 201})
	e.gl.AddAgent("tok-new", gitlab.AgentInfo{AgentID: 202})
	cached := e.startGitLabAgent("tok-cached", "pod-1", quic.Backoff{})
	waitConnected(t, cached.Agent, 1)

	e.gl.SetDown(true)
	fresh := e.startGitLabAgent("tok-new", "pod-2", quic.Backoff{Initial: 50 * time.Millisecond, Max: 10 * time.Second, Jitter: -1})
	unavailable := map[string]string{"result": "auth_unavailable"}
	// Three attempts within 50ms+100ms+(handshakes): a retryable error is retried quickly,
	// unlike the revoked token above, which gets a second attempt only after 3.2s.
	waitCounter(t, fresh.reg, "agentd_connect_attempts_total", unavailable, 3)
	if n := counter(t, fresh.reg, "agentd_connect_attempts_total", map[string]string{"result": "unauthenticated"}); n != 0 {
		t.Errorf("GitLab down was reported to the agent as a bad token (%v times)", n)
	}
	if fresh.Connected() != 0 {
		t.Fatal("agent admitted while GitLab is down and its token was never checked")
	}

	// A new connection with the cached token (a second replica) is admitted.
	replica := e.startGitLabAgent("tok-cached", "pod-3", quic.Backoff{})
	waitConnected(t, replica.Agent, 1)
	if n := counter(t, e.glReg, "kasd_gitlab_agent_info_cache_total", map[string]string{"result": "hit"}); n < 1 {
		t.Errorf("cache hits = %v", n)
	}

	e.gl.SetDown(false)
	waitConnected(t, fresh.Agent, 1)
}

// blob is deterministic content of any length, generated on the fly.
type blob struct{ off, n int64 }

func (b *blob) Read(p []byte) (int, error) {
	if b.off >= b.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), b.n-b.off)]
	for i := range p {
		x := b.off + int64(i)
		p[i] = byte(x*7 + x>>11 + x>>23)
	}
	b.off += int64(len(p))
	return len(p), nil
}

func blobSHA(n int64) string {
	h := sha256.New()
	io.Copy(h, &blob{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

// gatedReader yields first, then waits for gate before yielding rest: if anything on the way
// buffered the whole body before sending it on, the gate would never open.
type gatedReader struct {
	first, rest io.Reader
	gate        <-chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.first != nil {
		n, err := g.first.Read(p)
		if err == io.EOF {
			g.first = nil
			err = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	if g.gate != nil {
		select {
		case <-g.gate:
			g.gate = nil
		case <-time.After(20 * time.Second):
			return 0, errors.New("the start of the body did not reach GitLab: buffered somewhere")
		}
	}
	return g.rest.Read(p)
}

func TestGitLabModuleGetAndPost(t *testing.T) {
	const size = 32 << 20
	const head = 1 << 20
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-m", gitlab.AgentInfo{AgentID: 301})
	a := e.startGitLabAgent("tok-m", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)

	headArrived := make(chan struct{}) // POST: GitLab has read the first MiB
	headRead := make(chan struct{})    // GET: the caller has read the first chunk
	e.gl.SetModuleHandler("blob", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write([]byte("first\n"))
			http.NewResponseController(w).Flush()
			select {
			case <-headRead:
			case <-time.After(20 * time.Second):
				return // the caller fails on the short body
			}
			io.Copy(w, &blob{n: size})
		case http.MethodPost:
			h := sha256.New()
			n, _ := io.CopyN(h, r.Body, head)
			if n == head {
				close(headArrived)
			}
			m, _ := io.Copy(h, r.Body)
			json.NewEncoder(w).Encode(map[string]any{"length": n + m, "sha256": hex.EncodeToString(h.Sum(nil))})
		}
	}))

	t.Run("echo", func(t *testing.T) {
		req, _ := http.NewRequest("GET", a.proxy.URL+"/modules/echo/a/b%20c?x=1&y=%2F", nil)
		req.Header.Set("Authorization", "Bearer caller-credential")
		req.Header.Set("Cookie", "session=caller")
		req.Header.Set("Connection", "X-Hop")
		req.Header.Set("X-Hop", "1")
		req.Header.Set("X-Kept", "yes")
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var echo gitlabtest.Echo
		json.Unmarshal([]byte(readAll(t, resp)), &echo)
		if resp.StatusCode != http.StatusOK || echo.Method != "GET" || echo.AgentID != 301 ||
			echo.Path != gitlab.ModulesPathPrefix+"echo/a/b%20c" || echo.Query != "x=1&y=%2F" {
			t.Errorf("%d %+v", resp.StatusCode, echo)
		}
		rec := e.moduleRequests()[0]
		if rec.Header.Get("Authorization") != "Bearer tok-m" || rec.Header.Get("Cookie") != "" ||
			rec.Header.Get("X-Hop") != "" || rec.Header.Get("X-Kept") != "yes" || rec.Rejected != "" {
			t.Errorf("GitLab got headers %v (rejected %q)", rec.Header, rec.Rejected)
		}
	})

	t.Run("GET", func(t *testing.T) {
		resp, err := noFollow.Get(a.proxy.URL + "/modules/blob/download")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		first := make([]byte, len("first\n"))
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
			t.Fatalf("first chunk %q: %v", first, err)
		}
		close(headRead) // only now does GitLab send the rest: the response streams
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != blobSHA(size) {
			t.Errorf("downloaded %d bytes (%v), want %d with the right content", n, err, size)
		}
	})

	t.Run("POST", func(t *testing.T) {
		body := &gatedReader{first: &blob{n: head}, rest: &blob{off: head, n: size}, gate: headArrived}
		resp, err := noFollow.Post(a.proxy.URL+"/modules/blob/upload?part=1", "application/octet-stream", body)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Length int64
			SHA256 string
		}
		if err := json.Unmarshal([]byte(readAll(t, resp)), &got); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%d: %v", resp.StatusCode, err)
		}
		if got.Length != size || got.SHA256 != blobSHA(size) {
			t.Errorf("GitLab received %d bytes (sha256 %s), want %d", got.Length, got.SHA256, size)
		}
	})

	if n := counter(t, a.reg, "agentd_gitlab_requests_total", map[string]string{"module": "blob", "code": "200"}); n != 2 {
		t.Errorf("agentd_gitlab_requests_total{blob,200} = %v", n)
	}
	if n := counter(t, e.glReg, "kasd_gitlab_module_requests_total", map[string]string{"module": "blob", "code": "200"}); n != 2 {
		t.Errorf("kasd_gitlab_module_requests_total{blob,200} = %v", n)
	}
}

func TestGitLabModuleTraversalRejected(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-t", gitlab.AgentInfo{AgentID: 401})
	a := e.startGitLabAgent("tok-t", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	paths := []string{
		// Refused by kasd (valid module, the agent sends them on).
		"/modules/foo/../agent_info",
		"/modules/foo/../../agent_info",
		"/modules/foo/a/../../../agent_info",
		"/modules/foo/./x",
		"/modules/foo/%2e%2e/agent_info",
		"/modules/foo/%2E%2e/%2e%2E/agent_info",
		"/modules/foo/%252e%252e/agent_info",
		"/modules/foo/a%2Fb",
		"/modules/foo/..%2F..%2Fagent_info",
		"/modules/foo/a%5Cb",
		"/modules/foo//agent_info",
		"/modules/foo/http:%2F%2Fevil.example%2Fx",
		"/modules/foo/https:/evil.example/x",
		"/modules/foo/x%00y",
		// Refused by the agent (no module).
		"/modules/../agent_info",
		"/modules/%2e%2e/agent_info",
		"/modules/FOO/x",
		"/modules/foo",
		"/modules//x",
		"/agent_info",
	}
	for _, p := range paths {
		req, err := http.NewRequest("GET", a.proxy.URL+p, nil)
		if err != nil {
			t.Fatal(err)
		}
		if req.URL.EscapedPath() != p {
			t.Fatalf("the test client would send %q, not %q", req.URL.EscapedPath(), p)
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(api.HeaderError) != "bad_request" {
			t.Errorf("%s: %d %s, want 400 bad_request", p, resp.StatusCode, body)
		}
	}
	for _, r := range e.gl.Requests() {
		if r.Path != gitlab.AgentInfoPath {
			t.Errorf("GitLab received %s", r.EscapedPath)
		}
	}
	if n := counter(t, a.reg, "agentd_gitlab_requests_total", map[string]string{"code": "400"}); n != float64(len(paths)) {
		t.Errorf("agentd_gitlab_requests_total{code=400} = %v, want %d", n, len(paths))
	}
}

// Two agents with different tokens make concurrent module requests; GitLab must see each
// request with the token of the connection it came on, never the other agent's.
func TestGitLabModuleTokenIsolation(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-a", gitlab.AgentInfo{AgentID: 501})
	e.gl.AddAgent("tok-b", gitlab.AgentInfo{AgentID: 502})
	agents := map[int64]*glAgent{
		501: e.startGitLabAgent("tok-a", "pod-a", quic.Backoff{}),
		502: e.startGitLabAgent("tok-b", "pod-b", quic.Backoff{}),
	}
	for _, a := range agents {
		waitConnected(t, a.Agent, 1)
	}
	// Every request waits inside GitLab until requests of both agents are there, so the two
	// agents' requests are in kasd at the same time.
	var once [2]sync.Once
	arrived := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	e.gl.SetModuleHandler("who", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := gitlabtest.AgentIDFrom(r)
		if id == 501 || id == 502 {
			once[id-501].Do(func() { close(arrived[id-501]) })
		}
		for _, ch := range arrived {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
			}
		}
		json.NewEncoder(w).Encode(gitlabtest.Echo{AgentID: id, Query: r.URL.RawQuery})
	}))

	const perAgent = 20
	var wg sync.WaitGroup
	for id, a := range agents {
		for i := range perAgent {
			wg.Go(func() {
				req, _ := http.NewRequest("GET", a.proxy.URL+"/modules/who/x?caller="+a.proxy.URL+"&i="+strconv.Itoa(i), nil)
				// The caller names the other agent's token in every header a GitLab version
				// reads it from: GitLab must still see this agent's.
				other := map[int64]string{501: "tok-b", 502: "tok-a"}[id]
				req.Header.Set("Authorization", "Bearer "+other)
				req.Header.Set("Gitlab-Agentk-Api-Request", other)
				req.Header.Set("Gitlab-Agent-Api-Request", other)
				resp, err := noFollow.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				var echo gitlabtest.Echo
				if err := json.NewDecoder(resp.Body).Decode(&echo); err != nil || resp.StatusCode != http.StatusOK {
					t.Errorf("%d: %v", resp.StatusCode, err)
					return
				}
				if echo.AgentID != id {
					t.Errorf("request through agent %d reached GitLab as agent %d", id, echo.AgentID)
				}
			})
		}
	}
	wg.Wait()
	reqs := e.moduleRequests()
	if len(reqs) != 2*perAgent {
		t.Fatalf("GitLab received %d module requests, want %d", len(reqs), 2*perAgent)
	}
	for _, r := range reqs {
		want := map[int64]string{501: "Bearer tok-a", 502: "Bearer tok-b"}[r.AgentID]
		if want == "" || r.Header.Get("Authorization") != want || !strings.Contains(r.RawQuery, agents[r.AgentID].proxy.URL) {
			t.Errorf("GitLab got agent %d with %q for %s", r.AgentID, r.Header.Get("Authorization"), r.RawQuery)
		}
	}
}

func TestGitLabModuleRedirectNotFollowed(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-r", gitlab.AgentInfo{AgentID: 601})
	a := e.startGitLabAgent("tok-r", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	e.gl.SetModuleHandler("redir", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, gitlab.AgentInfoPath+"?from=redirect", http.StatusFound)
	}))
	before := e.gl.AgentInfoCalls()
	resp, err := noFollow.Get(a.proxy.URL + "/modules/redir/x")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != gitlab.AgentInfoPath+"?from=redirect" {
		t.Errorf("%d Location %q, want GitLab's 302 as it is", resp.StatusCode, resp.Header.Get("Location"))
	}
	if n := e.gl.AgentInfoCalls(); n != before {
		t.Errorf("the redirect was followed: agent_info called %d more times", n-before)
	}
	if n := len(e.moduleRequests()); n != 1 {
		t.Errorf("GitLab received %d module requests, want 1", n)
	}
}

// A GitLab module request in flight on a connection the agent re-announces (a services reload:
// make before break) is not cut: the agent says it leaves the old connection only once its
// module responses on it were read to the end. (kasd closes a connection the agent left as soon
// as kasd's own requests on it are done, and cannot know when the agent has read a module
// response: before, the response below lost its second half.)
func TestGitLabRequestSurvivesReannounce(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-d", gitlab.AgentInfo{AgentID: 401})
	// A drain timeout longer than the wait below: the response must outlive a drain that
	// does not wait for it, not the timeout that bounds one that does.
	a := e.startAgent("tok-d", "pod-1", map[string]string{"web": echoService(t, "pod-1").URL}, func(c *agentd.Config) {
		c.DrainTimeout = 20 * time.Second
	})
	proxy := httptest.NewServer(a.GitLabHandler())
	t.Cleanup(proxy.Close)
	waitConnected(t, a, 1)

	gate := make(chan struct{})
	e.gl.SetModuleHandler("slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("first\n"))
		http.NewResponseController(w).Flush()
		select {
		case <-gate:
		case <-time.After(20 * time.Second):
		}
		w.Write([]byte("second\n"))
	}))

	resp, err := noFollow.Get(proxy.URL + "/modules/slow/x")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	before := a.Instances()
	// A services reload: the slot re-announces on a new connection and drains the old one.
	echo := echoService(t, "pod-1b")
	if err := a.ReloadServices(func() (map[string]*url.URL, error) {
		u, _ := url.Parse(echo.URL)
		return map[string]*url.URL{"web2": u}, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Give a drain that did not wait time to cut the response (announce, linger 250ms, wait
	// for kasd's close, at most 1s).
	time.Sleep(2500 * time.Millisecond)
	// Meanwhile, module requests go to the new connection.
	e.gl.SetModuleHandler("quick", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("quick"))
	}))
	if got, err := noFollow.Get(proxy.URL + "/modules/quick/x"); err != nil {
		t.Fatal(err)
	} else if b, _ := io.ReadAll(got.Body); got.StatusCode != http.StatusOK || string(b) != "quick" {
		t.Fatalf("module request during the drain: %d %q", got.StatusCode, b)
	} else {
		got.Body.Close()
	}
	close(gate)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("module response cut by the re-announce's drain: read %q, err %v (instances before %v, now %v)", rest, err, before, a.Instances())
	}
}

// GitLab's answer with a head over the limits of a response frame (a header of 70 KiB) gets
// the typed error kasd sends in its place (502 service_unavailable, "response head too
// large"), not a reset stream (502 agent_failed, "the peer reset the stream"): ReverseProxy
// aborts its handler when its body write fails after the error frame, and the abort reset the
// stream the error frame had ended.
func TestGitLabResponseHeadTooLarge(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-h", gitlab.AgentInfo{AgentID: 701})
	a := e.startGitLabAgent("tok-h", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	e.gl.SetModuleHandler("bighead", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("a", 70<<10))
		w.Write([]byte("body"))
	}))
	for i := range 20 {
		resp, err := noFollow.Get(a.proxy.URL + "/modules/bighead/x")
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(api.HeaderError) != "service_unavailable" || !strings.Contains(body, "response head too large") {
			t.Fatalf("request %d: %d %q %s, want 502 service_unavailable (response head too large)", i, resp.StatusCode, resp.Header.Get(api.HeaderError), body)
		}
	}
	// Counted as a limit GitLab's answer hit (it was counted nowhere; limits audit).
	waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "module_response_head_too_large"}, 20)
}

// A caller's request with more header fields than a request head may carry is 413
// too_large, the caller's fault, as on kasd's API, not 502 protocol_error from kasd refusing
// the head the agent sent.
func TestGitLabRequestTooManyHeaderFields(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-f", gitlab.AgentInfo{AgentID: 702})
	a := e.startGitLabAgent("tok-f", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	req, _ := http.NewRequest("GET", a.proxy.URL+"/modules/echo/x", nil)
	for i := range api.MaxHeaderFields + 1 {
		req.Header.Set("X-H"+strconv.Itoa(i), "v")
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(api.HeaderError) != "too_large" {
		t.Errorf("%d %q %s, want 413 too_large", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
	if n := len(e.moduleRequests()); n != 0 {
		t.Errorf("GitLab received %d module requests", n)
	}
	// A head over the size limit is said by agentd before it opens a stream: kasd counted
	// the stream it reset as the agent's protocol error (independent review).
	req, _ = http.NewRequest("GET", a.proxy.URL+"/modules/echo/x", nil)
	req.Header.Set("X-Big", strings.Repeat("v", api.MaxHeadSize))
	resp, err = noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body = readAll(t, resp)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get(api.HeaderError) != "too_large" {
		t.Errorf("%d %q %s, want 413 too_large", resp.StatusCode, resp.Header.Get(api.HeaderError), body)
	}
	time.Sleep(300 * time.Millisecond) // kasd counts a reset stream when it reads it
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "protocol_error"}); n != 0 {
		t.Errorf("kasd counted %v protocol errors for heads agentd refused", n)
	}
}

// agentd's GitLab proxy passes the caller's query byte for byte and GitLab's Content-Length
// back (independent review of the GitLab direction): ReverseProxy's cleaning of the query
// dropped a parameter with ';' or a bad escape and re-encoded and sorted the rest, and every
// answer of known length reached the caller chunked (a HEAD's with no length at all).
func TestGitLabModuleQueryAndLengthKept(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-q", gitlab.AgentInfo{AgentID: 302})
	a := e.startGitLabAgent("tok-q", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	e.gl.SetModuleHandler("sized", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		if r.Method != http.MethodHead {
			_, _ = w.Write(make([]byte, 1000))
		}
	}))
	const query = "filter=name;version&page=2&q=100%&c=%ZZ&b=%20%2B+x&h=a?b&flag"
	resp, err := noFollow.Get(a.proxy.URL + "/modules/echo/q?" + query)
	if err != nil {
		t.Fatal(err)
	}
	var echo gitlabtest.Echo
	_ = json.Unmarshal([]byte(readAll(t, resp)), &echo)
	if resp.StatusCode != http.StatusOK || echo.Query != query {
		t.Errorf("GitLab got the query %q (%d), want %q", echo.Query, resp.StatusCode, query)
	}
	for _, method := range []string{"GET", "HEAD"} {
		req, _ := http.NewRequest(method, a.proxy.URL+"/modules/sized/x", nil)
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		if resp.Header.Get("Content-Length") != "1000" || len(resp.TransferEncoding) != 0 {
			t.Errorf("%s: Content-Length %q, Transfer-Encoding %q; GitLab sent Content-Length: 1000", method, resp.Header.Get("Content-Length"), resp.TransferEncoding)
		}
	}
}

// GitLab's early answer to an upload it does not read (a 401 for the token, a 413) reaches a
// caller of agentd's GitLab proxy that sent Expect: 100-continue, as curl does above 1 MiB:
// net/http closed such a connection at once, with the upload unread, and 7 of 24 callers got
// "connection reset by peer" instead (independent review of the GitLab direction).
func TestGitLabEarlyAnswerToExpectContinueUpload(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-x", gitlab.AgentInfo{AgentID: 303})
	a := e.startGitLabAgent("tok-x", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	e.gl.SetModuleHandler("refuse", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, "nope\n")
	}))
	for i := range 6 {
		c, err := net.Dial("tcp", strings.TrimPrefix(a.proxy.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /modules/refuse/up HTTP/1.1\r\nHost: agent\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", earlyRejectUpload)
		resp, err := uploadLikeCurl(c, earlyRejectUpload, false)
		if err != nil {
			c.Close()
			t.Fatalf("upload %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != http.StatusUnauthorized || string(b) != "nope\n" || err != nil {
			t.Fatalf("upload %d: %d %q %v, want GitLab's 401", i, resp.StatusCode, b, err)
		}
	}
}

// A caller of agentd's GitLab proxy whose agent has --max-agent-streams-per-agent streams open
// at kasd gets 503 overloaded with Retry-After, not shutting_down (kasd reset the stream as
// refused, which agentd reads as a draining peer; independent review of the GitLab direction).
func TestGitLabStreamBudgetIsOverloaded(t *testing.T) {
	e := newGitLabEnv(t, func(c *kasd.Config) { c.MaxStreamsFromAgent = 2 })
	e.gl.AddAgent("tok-b", gitlab.AgentInfo{AgentID: 304})
	a := e.startGitLabAgent("tok-b", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	release := make(chan struct{})
	held := make(chan struct{}, 8)
	e.gl.SetModuleHandler("hold", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held <- struct{}{}
		<-release
	}))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(release)
	for range 2 {
		wg.Go(func() {
			if resp, err := noFollow.Get(a.proxy.URL + "/modules/hold/x"); err == nil {
				readAll(t, resp)
			}
		})
	}
	<-held
	<-held
	resp, err := noFollow.Get(a.proxy.URL + "/modules/hold/x")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(api.HeaderError) != "overloaded" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a third stream over a budget of 2: %d %s=%q Retry-After %q %q; want 503 overloaded with Retry-After",
			resp.StatusCode, api.HeaderError, resp.Header.Get(api.HeaderError), resp.Header.Get("Retry-After"), body)
	}
}

// No credential of the caller's reaches GitLab beside the agent's token and kasd's JWT: a
// personal or job token, another internal API's header, or kasd's own headers spelt with
// underscores (Rack reads '_' as '-') are dropped (an independent review of the GitLab
// direction got Private-Token, Job-Token and Gitlab_agentk_api_request through).
func TestGitLabModuleCallerCredentialsDropped(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-c", gitlab.AgentInfo{AgentID: 305})
	a := e.startGitLabAgent("tok-c", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)
	req, _ := http.NewRequest("GET", a.proxy.URL+"/modules/echo/c", nil)
	forged := map[string]string{
		"Private-Token": "glpat-user", "Job-Token": "job", "Gitlab-Workhorse-Api-Request": "w",
		"Gitlab_kas_api_request": "forged", "Gitlab_agentk_api_request": "other-agent", "X-Kept": "yes",
	}
	for k, v := range forged {
		req.Header[k] = []string{v}
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	rec := e.moduleRequests()[0]
	for k := range forged {
		if got := rec.Header[k]; k != "X-Kept" && len(got) != 0 {
			t.Errorf("GitLab got the caller's %s: %q", k, got)
		}
	}
	if rec.Header.Get("X-Kept") != "yes" || rec.Header.Get("Authorization") != "Bearer tok-c" || rec.Rejected != "" {
		t.Errorf("GitLab got headers %v (rejected %q)", rec.Header, rec.Rejected)
	}
}
