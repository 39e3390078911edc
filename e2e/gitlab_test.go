package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
)

// TestGitLabEndToEnd runs kasd in GitLab mode against the stand-in GitLab (gitlabtest, in the
// test process) with the real binaries: an agent is admitted through agent_info (its id is
// GitLab's agent id) and reachable through the client API; module GET and a streamed multi-MiB
// POST sent to agentd's --gitlab-proxy-listen reach GitLab's modules endpoint with the right
// path, query, body, JWT and the agent's own token (never the caller's Authorization); path
// traversal attempts get 400 without reaching GitLab; agents with a revoked or unknown token are
// refused and counted while the admitted agent stays connected.
func TestGitLabEndToEnd(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	web := startService(t, "web")

	// The stand-in GitLab and the secret it shares with kasd (GitLab's .gitlab_kas_secret).
	secret := sha256.Sum256([]byte("qkas e2e: the secret GitLab shares with kasd"))
	gl := gitlabtest.New(t, secret[:])
	writeFile(t, filepath.Join(dir, "gitlab.secret"), base64.StdEncoding.EncodeToString(secret[:])+"\n")

	goodToken, revokedToken, unknownToken := newGitLabToken(t), newGitLabToken(t), newGitLabToken(t)
	gl.AddAgent(goodToken, gitlab.AgentInfo{AgentID: 101, ProjectID: 7, AgentName: "prod"})
	gl.AddAgent(revokedToken, gitlab.AgentInfo{AgentID: 102, ProjectID: 7, AgentName: "revoked"})
	gl.RevokeAgent(revokedToken)
	writeFile(t, filepath.Join(dir, "prod.token"), goodToken+"\n")
	writeFile(t, filepath.Join(dir, "revoked.token"), revokedToken+"\n")
	writeFile(t, filepath.Join(dir, "unknown.token"), unknownToken+"\n")

	// Client JWTs for kasd's API are still signed with --api-jwt-secret-file.
	writeFile(t, filepath.Join(dir, "jwt.secret"), kasctl(t, dir, "secret"))
	jwt := mintJWT(t, filepath.Join(dir, "jwt.secret"), "--agents", "101,102")

	// GitLab mode: no --agent-tokens-file (KasdOpts.TokensFile left empty).
	kasd := startKasd(t, KasdOpts{
		Dir:           dir,
		JWTSecretFile: "jwt.secret",
		Args:          []string{"--fleet=false", "--gitlab-url", gl.URL, "--gitlab-auth-secret-file", "gitlab.secret"},
	})
	agent := startAgentd(t, AgentdOpts{
		Dir:             dir,
		KasAddrs:        []string{kasd.Opts.AgentAddr},
		TokenFile:       "prod.token",
		CAFile:          "kasd-data/ca.pem",
		Services:        map[string]string{"web": web.URL},
		GitlabProxyAddr: freeAddr(t, "tcp"),
	})

	// --- admitted through agent_info, under GitLab's agent id ---
	if r := get(t, kasd.APIURL()+"/api/v1/agents", jwt); r.Status != 200 || !strings.Contains(r.Body, `"id":"101"`) || !strings.Contains(r.Body, `"web"`) {
		t.Fatalf("GET /api/v1/agents: %d %s", r.Status, r.Body)
	}
	url := kasd.ProxyURL("101", "web", "/hello?x=1")
	if r := get(t, url, jwt); r.Status != 200 || r.Body != "hello from web: GET /hello?x=1" {
		t.Fatalf("GET %s: %d %q", url, r.Status, r.Body)
	}
	var infoReqs []gitlabtest.Recorded
	for _, rec := range gl.Requests() {
		if rec.Path == gitlab.AgentInfoPath {
			infoReqs = append(infoReqs, rec)
		}
	}
	if len(infoReqs) == 0 {
		t.Fatal("the stand-in GitLab received no agent_info request")
	}
	for _, rec := range infoReqs {
		if rec.Method != http.MethodGet || rec.Rejected != "" || rec.AgentID != 101 || !strings.HasPrefix(rec.UserAgent, "kasd/") {
			t.Errorf("agent_info request: %s %s rejected=%q agent=%d User-Agent=%q", rec.Method, rec.Path, rec.Rejected, rec.AgentID, rec.UserAgent)
		}
	}

	// --- the modules endpoint through agentd's --gitlab-proxy-listen ---
	// The default echo, plus a hash of the body so that the POST is checked byte for byte.
	gl.SetModuleHandler("demo_module", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Body-Sha256", hex.EncodeToString(h.Sum(nil)))
		_ = json.NewEncoder(w).Encode(gitlabtest.Echo{
			Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, BodyLength: n, AgentID: gitlabtest.AgentIDFrom(r),
		})
	}))
	gitlabBase := "http://" + agent.Opts.GitlabProxyAddr
	moduleURL := gitlabBase + "/modules/demo_module/some/path?x=1"
	const wantPath = "/api/v4/internal/kubernetes/modules/demo_module/some/path"

	// GET, with a caller Authorization header that must not reach GitLab.
	before := len(gl.Requests())
	req, _ := http.NewRequest(http.MethodGet, moduleURL, nil)
	req.Header.Set("Authorization", "Bearer caller-credential")
	echo, hdr := doModule(t, req)
	if echo.Method != "GET" || echo.Path != wantPath || echo.Query != "x=1" || echo.BodyLength != 0 || echo.AgentID != 101 {
		t.Errorf("module GET echoed %+v", echo)
	}
	if hdr.Get("X-Body-Sha256") != hex.EncodeToString(sha256.New().Sum(nil)) {
		t.Errorf("module GET: body hash %q", hdr.Get("X-Body-Sha256"))
	}
	rec := onlyNewRequest(t, gl, before)
	if rec.Method != "GET" || rec.Path != wantPath || rec.RawQuery != "x=1" || rec.BodyLen != 0 || rec.AgentID != 101 || rec.Rejected != "" {
		t.Errorf("the stand-in received %s %s?%s body=%d agent=%d rejected=%q", rec.Method, rec.Path, rec.RawQuery, rec.BodyLen, rec.AgentID, rec.Rejected)
	}
	if got := rec.Header.Get("Authorization"); got != "Bearer "+goodToken {
		t.Errorf("GitLab received Authorization %q, want the agent's token", got)
	}
	if rec.Header.Get(gitlab.JWTHeader) == "" {
		t.Errorf("no %s header on the module request", gitlab.JWTHeader)
	}

	// POST of a few MiB, streamed (no Content-Length: chunked all the way from the caller).
	const postSize = 5<<20 + 123
	payload := make([]byte, postSize)
	_, _ = rand.Read(payload)
	wantSum := sha256.Sum256(payload)
	pr, pw := io.Pipe()
	go func() {
		for b := payload; len(b) > 0; {
			n := min(len(b), 64<<10)
			if _, err := pw.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
		pw.Close()
	}()
	before = len(gl.Requests())
	req, _ = http.NewRequest(http.MethodPost, moduleURL, pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	echo, hdr = doModule(t, req)
	if echo.Method != "POST" || echo.Path != wantPath || echo.Query != "x=1" || echo.BodyLength != postSize || echo.AgentID != 101 {
		t.Errorf("module POST echoed %+v", echo)
	}
	if got := hdr.Get("X-Body-Sha256"); got != hex.EncodeToString(wantSum[:]) {
		t.Errorf("module POST: GitLab received a different body (sha256 %s)", got)
	}
	rec = onlyNewRequest(t, gl, before)
	if rec.Method != "POST" || rec.Path != wantPath || rec.RawQuery != "x=1" || rec.BodyLen != postSize || rec.AgentID != 101 || rec.Rejected != "" {
		t.Errorf("the stand-in received %s %s?%s body=%d agent=%d rejected=%q", rec.Method, rec.Path, rec.RawQuery, rec.BodyLen, rec.AgentID, rec.Rejected)
	}
	if got := rec.Header.Get("Content-Type"); got != "application/octet-stream" {
		t.Errorf("module POST: GitLab received Content-Type %q", got)
	}

	// Traversal attempts: 400, and nothing reaches the stand-in.
	before = len(gl.Requests())
	for _, path := range []string{
		"/modules/demo_module/%2e%2e/x",
		"/modules/demo_module/%2E%2E/%2e%2e/agent_info",
		"/modules/demo_module/a%2f..%2f..%2fx",
		"/modules/demo_module/%252e%252e/x",
	} {
		r := get(t, gitlabBase+path, "")
		if r.Status != http.StatusBadRequest || r.ErrorCode() != "bad_request" {
			t.Errorf("GET %s: %d %s, want 400 bad_request", path, r.Status, r.Body)
		}
	}
	if reqs := gl.Requests(); len(reqs) != before {
		for _, rec := range reqs[before:] {
			t.Errorf("a traversal attempt reached the stand-in: %s %s", rec.Method, rec.EscapedPath)
		}
	}
	// Both daemons count a request once its response has been streamed, which may be just after
	// the client has it: wait for the count, then check it is exact.
	for _, m := range []struct {
		url, name, code string
		want            float64
	}{
		{kasd.ObsURL(), "kasd_gitlab_module_requests_total", "200", 2},
		{agent.ObsURL(), "agentd_gitlab_requests_total", "200", 2},
		{agent.ObsURL(), "agentd_gitlab_requests_total", "400", 4},
	} {
		waitMetric(t, m.url, m.want, m.name, "module=demo_module", "code="+m.code)
		if v, _ := metric(t, m.url, m.name, "module=demo_module", "code="+m.code); v != m.want {
			t.Errorf(`%s{module="demo_module",code=%q} = %v, want %v`, m.name, m.code, v, m.want)
		}
	}

	// --- revoked and unknown tokens are refused; the admitted agent stays connected ---
	refusedBefore, _ := metric(t, kasd.ObsURL(), "kasd_agent_connections_total", "result=unauthenticated")
	var bad []*Agentd
	for _, name := range []string{"revoked", "unknown"} {
		bad = append(bad, startAgentd(t, AgentdOpts{
			Name:            "agentd-" + name,
			Dir:             dir,
			KasAddrs:        []string{kasd.Opts.AgentAddr},
			TokenFile:       name + ".token",
			CAFile:          "kasd-data/ca.pem",
			Services:        map[string]string{"web": web.URL},
			GitlabProxyAddr: freeAddr(t, "tcp"),
			NoWaitReady:     true,
		}))
	}
	waitMetric(t, kasd.ObsURL(), refusedBefore+2, "kasd_agent_connections_total", "result=unauthenticated")
	kasd.WaitLog(t, "agent connection refused", "unauthenticated")
	for _, a := range bad {
		a.WaitLog(t, "connecting to kasd failed")
		if a.Connected() {
			t.Errorf("%s says it is connected", a.Name)
		}
	}
	var sawRevoked, sawUnknown bool
	for _, rec := range gl.Requests() {
		if rec.Path != gitlab.AgentInfoPath {
			continue
		}
		switch rec.Header.Get("Authorization") {
		case "Bearer " + revokedToken:
			sawRevoked = true
		case "Bearer " + unknownToken:
			sawUnknown = true
		default:
			continue
		}
		if rec.Rejected != "agent token" {
			t.Errorf("agent_info for a bad token: rejected=%q", rec.Rejected)
		}
	}
	if !sawRevoked || !sawUnknown {
		t.Errorf("agent_info not asked for the revoked (%v) or the unknown (%v) token", sawRevoked, sawUnknown)
	}
	if !agent.Connected() {
		t.Error("the admitted agent lost its connection")
	}
	if r := get(t, kasd.APIURL()+"/api/v1/agents", jwt); r.Status != 200 || !strings.Contains(r.Body, `"id":"101"`) || strings.Contains(r.Body, `"102"`) {
		t.Errorf("GET /api/v1/agents after the refusals: %d %s", r.Status, r.Body)
	}
	if r := get(t, url, jwt); r.Status != 200 || r.Body != "hello from web: GET /hello?x=1" {
		t.Errorf("GET %s after the refusals: %d %q", url, r.Status, r.Body)
	}
	req, _ = http.NewRequest(http.MethodGet, moduleURL, nil)
	if echo, _ := doModule(t, req); echo.AgentID != 101 {
		t.Errorf("module GET after the refusals echoed %+v", echo)
	}

	for _, p := range []*Proc{bad[0].Proc, bad[1].Proc, agent.Proc, kasd.Proc} {
		if code := p.Stop(t); code != 0 {
			t.Errorf("%s exit code %d after SIGTERM", p.Name, code)
		}
	}
}

// newGitLabToken returns a random token in the shape of GitLab's agent tokens.
func newGitLabToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "glagent-" + base64.RawURLEncoding.EncodeToString(b)
}

// doModule sends req to agentd's GitLab proxy and decodes the stand-in's echo; anything but a
// 200 with an echo fails the test.
func doModule(t *testing.T, req *http.Request) (gitlabtest.Echo, http.Header) {
	t.Helper()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	var echo gitlabtest.Echo
	if resp.StatusCode != 200 || json.Unmarshal(body, &echo) != nil {
		t.Fatalf("%s %s: %d %s", req.Method, req.URL, resp.StatusCode, body)
	}
	return echo, resp.Header
}

// onlyNewRequest returns the one request the stand-in received after the first before ones.
func onlyNewRequest(t *testing.T, gl *gitlabtest.Server, before int) gitlabtest.Recorded {
	t.Helper()
	// The stand-in records a request when its handler returns, which may be just after the
	// client has the response.
	waitFor(t, "the stand-in records the request", func() bool { return len(gl.Requests()) > before })
	reqs := gl.Requests()[before:]
	if len(reqs) != 1 {
		var s []string
		for _, r := range reqs {
			s = append(s, fmt.Sprintf("%s %s", r.Method, r.EscapedPath))
		}
		t.Fatalf("the stand-in received %d requests, want 1: %v", len(reqs), s)
	}
	return reqs[0]
}
