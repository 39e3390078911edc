package gitlab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
)

const testTokenHeader = "X-Test-Agent-Token"

// frontend serves the module handler over real HTTP, taking the agent token (as kasd takes it
// from the agent's connection) from a test header.
func (e *env) frontend(t *testing.T) *httptest.Server {
	t.Helper()
	h := e.client.ModuleHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := r.Header.Get(testTokenHeader)
		r.Header.Del(testTokenHeader)
		h.ServeHTTP(w, r.WithContext(gitlab.WithAgentToken(r.Context(), tok)))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// noRedirects is an HTTP client for the frontend that shows 3xx as they are.
func noRedirects(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func decodeEcho(t *testing.T, resp *http.Response) gitlabtest.Echo {
	t.Helper()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var echo gitlabtest.Echo
	if err := json.NewDecoder(resp.Body).Decode(&echo); err != nil {
		t.Fatal(err)
	}
	return echo
}

func TestModuleGetWithQuery(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	fe := e.frontend(t)
	hc := noRedirects(t)

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fe.URL+"/modules/agent_configuration/projects/a%20b/x?ref=main&q=%2F..", nil)
	req.Header.Set(testTokenHeader, "tok")
	req.Header.Set("Authorization", "Bearer forged")
	req.Header.Set("X-Agent-Header", "kept")
	req.Header.Set("User-Agent", "agentd/1")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	echo := decodeEcho(t, resp)
	want := gitlabtest.Echo{
		Method:  "GET",
		Path:    "/api/v4/internal/kubernetes/modules/agent_configuration/projects/a%20b/x",
		Query:   "ref=main&q=%2F..",
		AgentID: 42,
	}
	if echo != want {
		t.Errorf("echo %+v\nwant %+v", echo, want)
	}
	r := e.gl.Requests()[0]
	if r.Rejected != "" || r.UserAgent != "kasd/test" || r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("X-Agent-Header") != "kept" {
		t.Errorf("recorded %+v", r)
	}
	// Counted once the handler returns, which may be just after the client read the answer.
	if n := e.eventuallyCounter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "agent_configuration", "code": "200"}, 1); n != 1 {
		t.Errorf("module_requests_total = %v", n)
	}
	if n := e.eventuallyCounter(t, "kasd_gitlab_requests_total", map[string]string{"endpoint": "modules", "code": "200"}, 1); n != 1 {
		t.Errorf("requests_total = %v", n)
	}
}

// patternReader yields n bytes without allocating.
type patternReader struct{ n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	for i := range b {
		b[i] = byte(i)
	}
	p.n -= int64(len(b))
	return len(b), nil
}

func TestModulePostStreamsLargeBody(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	fe := e.frontend(t)
	hc := noRedirects(t)

	const size = 64 << 20
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	// Unknown length: the body is sent chunked and must be streamed at every hop.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, fe.URL+"/modules/big/upload", io.NopCloser(&patternReader{n: size}))
	req.Header.Set(testTokenHeader, "tok")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	echo := decodeEcho(t, resp)
	runtime.ReadMemStats(&after)

	if echo.BodyLength != size || echo.Method != "POST" {
		t.Errorf("echo %+v, want body_length %d", echo, size)
	}
	if r := e.gl.Requests(); len(r) != 1 || r[0].BodyLen != size {
		t.Errorf("recorded %+v", r)
	}
	// Everything allocated in the process during the transfer (client, handler, proxy,
	// stand-in): buffering the body anywhere would allocate at least 64 MiB.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("allocated %d MiB while streaming a 64 MiB body", alloc>>20)
	} else {
		t.Logf("allocated %d KiB while streaming a 64 MiB body", alloc>>10)
	}
}

func TestModuleResponseStreams(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	next := make(chan struct{})
	e.gl.SetModuleHandler("watch", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "first")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintln(w, "second")
	}))
	fe := e.frontend(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fe.URL+"/modules/watch/events", nil)
	req.Header.Set(testTokenHeader, "tok")
	resp, err := noRedirects(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first\n" {
		t.Fatalf("first chunk %q, %v (not flushed before the response ended?)", buf, err)
	}
	close(next)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second\n" {
		t.Errorf("rest %q", rest)
	}
}

func TestModuleRedirectNotFollowed(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	e.gl.SetModuleHandler("redir", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/api/v4/internal/kubernetes/agent_info")
		w.WriteHeader(http.StatusFound)
	}))
	fe := e.frontend(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fe.URL+"/modules/redir/x", nil)
	req.Header.Set(testTokenHeader, "tok")
	resp, err := noRedirects(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/api/v4/internal/kubernetes/agent_info" {
		t.Errorf("got %d Location %q, want the 302 as is", resp.StatusCode, resp.Header.Get("Location"))
	}
	if n := len(e.gl.Requests()); n != 1 {
		t.Errorf("GitLab got %d requests: redirect followed", n)
	}
}

func TestModuleTraversalRejected(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	h := e.client.ModuleHandler()
	targets := []string{
		"/modules/foo/../x",
		"/modules/foo/..",
		"/modules/foo/a/../../agent_info",
		"/modules/foo/./x",
		"/modules/foo/%2e%2e/x",
		"/modules/foo/%2E%2E/agent_info",
		"/modules/foo/.%2e/x",
		"/modules/foo/%2e./x",
		"/modules/foo/%252e%252e/x",
		"/modules/foo/a%2Fb",
		"/modules/foo/..%2f..%2fagent_info",
		"/modules/foo/a%2f..%2f..%2fx",
		"/modules/foo/a%5cb",
		"/modules/foo/..%5c..%5cx",
		"/modules/foo/a\\b",
		"/modules/foo/..\\x",
		"/modules/foo//evil.com/x",
		"/modules/foo/http://x",
		"/modules/foo/https:%2f%2fx",
		"/modules/foo/%00",
		"/modules/foo/a%0d%0aX-Injected:%201",
		"/modules/../agent_info",
		"/modules/%2e%2e/agent_info",
		"/modules/Foo/x",
		"/modules//x",
		"/modules/" + strings.Repeat("a", 65) + "/x",
		"/modules/foo/" + strings.Repeat("a", 5000),
		"/agent_info",
	}
	for _, target := range targets {
		t.Run(target, func(t *testing.T) {
			req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, target, nil)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", rec.Code, rec.Body)
			}
			var body api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error != "bad_request" || body.Message == "" {
				t.Errorf("body %s (%v)", rec.Body, err)
			}
		})
	}
	if reqs := e.gl.Requests(); len(reqs) != 0 {
		t.Errorf("%d rejected requests reached GitLab: first %s", len(reqs), reqs[0].EscapedPath)
	}
	// Each is counted (they changed no metric: an agent sending bad paths went unseen), those
	// that named no valid module under a label no module can have.
	invalid := e.eventuallyCounter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "(invalid)", "code": "400"}, 1)
	foo := e.eventuallyCounter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "foo", "code": "400"}, 1)
	if invalid+foo != float64(len(targets)) || invalid == 0 || foo == 0 {
		t.Errorf("counted %v under (invalid) and %v under foo, want %d in all", invalid, foo, len(targets))
	}
}

func TestModuleAcceptedPaths(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	h := e.client.ModuleHandler()
	for target, wantPath := range map[string]string{
		"/modules/foo":               "/api/v4/internal/kubernetes/modules/foo/",
		"/modules/foo/":              "/api/v4/internal/kubernetes/modules/foo/",
		"/modules/foo/a/b/":          "/api/v4/internal/kubernetes/modules/foo/a/b/",
		"/modules/foo/..a/b..":       "/api/v4/internal/kubernetes/modules/foo/..a/b..",
		"/modules/foo/x/a:b@c;d=e":   "/api/v4/internal/kubernetes/modules/foo/x/a:b@c;d=e",
		"/modules/foo/x%20y%C3%A9":   "/api/v4/internal/kubernetes/modules/foo/x%20y%C3%A9",
		"/modules/foo-1_a/v1/things": "/api/v4/internal/kubernetes/modules/foo-1_a/v1/things",
	} {
		req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, target, nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Errorf("%s: status %d: %s", target, rec.Code, rec.Body)
			continue
		}
		var echo gitlabtest.Echo
		json.Unmarshal(rec.Body.Bytes(), &echo)
		if echo.Path != wantPath {
			t.Errorf("%s: GitLab saw %q, want %q", target, echo.Path, wantPath)
		}
	}
}

func TestModuleHopByHopHeadersDropped(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	h := e.client.ModuleHandler()
	req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, "/modules/foo/x", nil)
	for k, v := range map[string]string{
		"Connection":          "X-Listed, Upgrade",
		"X-Listed":            "1",
		"Upgrade":             "websocket",
		"Keep-Alive":          "timeout=5",
		"Proxy-Connection":    "keep-alive",
		"Proxy-Authorization": "Basic Zm9vOmJhcg==",
		"Te":                  "trailers",
		"Trailer":             "X-T",
		"Authorization":       "Bearer forged",
		gitlab.JWTHeader:      "forged",
		"X-Forwarded-For":     "10.0.0.1",
		"Host":                "evil.example",
		"X-Kept":              "yes",
	} {
		req.Header.Set(k, v)
	}
	req.Host = "evil.example"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	r := e.gl.Requests()[0]
	for _, k := range []string{"Connection", "X-Listed", "Upgrade", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te", "Trailer", "X-Forwarded-For"} {
		if v, ok := r.Header[k]; ok {
			t.Errorf("GitLab got hop-by-hop header %s: %q", k, v)
		}
	}
	if r.Header.Get("X-Kept") != "yes" || r.Header.Get("Authorization") != "Bearer tok" || r.Rejected != "" {
		t.Errorf("headers %v, rejected %q", r.Header, r.Rejected)
	}
	if host := strings.TrimPrefix(e.gl.URL, "http://"); r.Header.Get("Host") != "" && r.Header.Get("Host") != host {
		t.Errorf("Host %q", r.Header.Get("Host"))
	}
}

func TestModuleHostIsGitLabs(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	var host string
	e.gl.SetModuleHandler("h", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { host = r.Host }))
	req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, "/modules/h/x", nil)
	req.Host = "evil.example"
	e.client.ModuleHandler().ServeHTTP(httptest.NewRecorder(), req)
	if want := strings.TrimPrefix(e.gl.URL, "http://"); host != want {
		t.Errorf("Host %q, want %q", host, want)
	}
}

func TestModuleTokenFromContext(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok-a", gitlab.AgentInfo{AgentID: 1})
	e.gl.AddAgent("tok-b", gitlab.AgentInfo{AgentID: 2})
	// Both requests are inside GitLab at the same time before either answers.
	var arrived sync.WaitGroup
	arrived.Add(2)
	e.gl.SetModuleHandler("sync", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		done := make(chan struct{})
		go func() { arrived.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		json.NewEncoder(w).Encode(gitlabtest.Echo{AgentID: gitlabtest.AgentIDFrom(r)})
	}))
	fe := e.frontend(t)
	hc := noRedirects(t)
	var wg sync.WaitGroup
	for tok, want := range map[string]int64{"tok-a": 1, "tok-b": 2} {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fe.URL+"/modules/sync/x", nil)
			req.Header.Set(testTokenHeader, tok)
			resp, err := hc.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var echo gitlabtest.Echo
			json.NewDecoder(resp.Body).Decode(&echo)
			if echo.AgentID != want {
				t.Errorf("%s: GitLab saw agent %d, want %d", tok, echo.AgentID, want)
			}
		})
	}
	wg.Wait()
}

func TestModuleWithoutTokenInContext(t *testing.T) {
	e := newEnv(t, nil)
	req := httptest.NewRequest(http.MethodGet, "/modules/foo/x", nil)
	req.Header.Set("Authorization", "Bearer tok")
	rec := httptest.NewRecorder()
	e.client.ModuleHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("status %d", rec.Code)
	}
	if n := len(e.gl.Requests()); n != 0 {
		t.Errorf("GitLab got %d requests", n)
	}
}

func TestModuleGitLabAnswersPassThrough(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	e.gl.RevokeAgent("tok")
	h := e.client.ModuleHandler()
	serve := func() *httptest.ResponseRecorder {
		req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, "/modules/foo/x", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := serve(); rec.Code != http.StatusUnauthorized {
		t.Errorf("revoked token: status %d", rec.Code)
	}
	e.gl.SetDown(true)
	if rec := serve(); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("GitLab down: status %d", rec.Code)
	}
	if n := e.counter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "foo", "code": "503"}); n != 1 {
		t.Errorf("module_requests_total{503} = %v", n)
	}
}

func TestModuleGitLabUnreachable(t *testing.T) {
	gl := gitlabtest.New(t, testSecret)
	url := gl.URL
	gl.Close()
	c, err := gitlab.New(gitlab.Config{URL: url, AuthSecret: testSecret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, "/modules/foo/x", nil)
	rec := httptest.NewRecorder()
	c.ModuleHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get(api.HeaderError) != "auth_unavailable" {
		t.Errorf("status %d %q: %s", rec.Code, rec.Header().Get(api.HeaderError), rec.Body)
	}
}

// A caller that goes away while GitLab has not answered is counted as 499 (client_canceled),
// not as GitLab failing to answer ("error").
func TestModuleCallerCancelCounted(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	arrived := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	e.gl.SetModuleHandler("slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	ctx, cancel := context.WithCancel(gitlab.WithAgentToken(t.Context(), "tok"))
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/modules/slow/x", nil)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.client.ModuleHandler().ServeHTTP(rec, req)
	}()
	select {
	case <-arrived:
	case <-done:
		t.Fatalf("answered before GitLab got the request: %d %s", rec.Code, rec.Body)
	}
	cancel()
	<-done
	if got := rec.Header().Get(api.HeaderError); got != "client_canceled" {
		t.Errorf("error code %q, want client_canceled", got)
	}
	if n := e.counter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "slow", "code": "499"}); n != 1 {
		t.Errorf("module_requests_total{499} = %v, want 1", n)
	}
	if n := e.counter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "slow", "code": "error"}); n != 0 {
		t.Errorf("module_requests_total{error} = %v, want 0", n)
	}
}

// A module request whose response could not be relayed to its end (GitLab cut the body
// short, or the caller went away mid-body: ReverseProxy aborts the handler with
// http.ErrAbortHandler) is counted like any other request to GitLab, by GitLab's status.
func TestModuleAbortedResponseCounted(t *testing.T) {
	e := newEnv(t, nil)
	e.gl.AddAgent("tok", agent1)
	e.gl.SetModuleHandler("cut", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write(make([]byte, 100))
		http.NewResponseController(w).Flush()
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	}))
	e.gl.SetModuleHandler("endless", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			http.NewResponseController(w).Flush()
		}
	}))
	srv := e.frontend(t)
	client := noRedirects(t)

	req, _ := http.NewRequest("GET", srv.URL+"/modules/cut/x", nil)
	req.Header.Set(testTokenHeader, "tok")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Error("a body GitLab cut short ended cleanly")
	}
	resp.Body.Close()
	if n := e.eventuallyCounter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "cut", "code": "200"}, 1); n != 1 {
		t.Errorf("module_requests_total{cut,200} = %v, want 1", n)
	}

	ctx, cancel := context.WithCancel(t.Context())
	req, _ = http.NewRequestWithContext(ctx, "GET", srv.URL+"/modules/endless/x", nil)
	req.Header.Set(testTokenHeader, "tok")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel() // the caller goes away mid-body
	resp.Body.Close()
	if n := e.eventuallyCounter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "endless", "code": "200"}, 1); n != 1 {
		t.Errorf("module_requests_total{endless,200} = %v, want 1", n)
	}
	if n := e.eventuallyCounter(t, "kasd_gitlab_requests_total", map[string]string{"endpoint": "modules", "code": "200"}, 2); n != 2 {
		t.Errorf("requests_total{modules,200} = %v, want 2", n)
	}
}

// A caller's Idempotency-Key does not make a module POST replayable: GitLab does not honour the
// header, and Go's transport resends a request that carries it (and no body) when a reused
// connection fails before any response byte, so GitLab ran it twice.
func TestModulePostNotReplayedForIdempotencyKey(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			io.WriteString(w, "ok") // keeps the connection for the POST
			return
		}
		mu.Lock()
		count[r.URL.Path]++
		mu.Unlock()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // the reused connection fails before any response byte
		}
	}))
	t.Cleanup(srv.Close)
	c, err := gitlab.New(gitlab.Config{URL: srv.URL, AuthSecret: testSecret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := c.ModuleHandler()
	do := func(method, path string, hdr ...string) int {
		req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), method, "/modules/foo/"+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for _, key := range []string{"Idempotency-Key", "X-Idempotency-Key"} {
		if code := do(http.MethodGet, "warm"); code != 200 {
			t.Fatalf("GET: %d", code)
		}
		do(http.MethodPost, key, key, "k")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(count) != 2 {
		t.Fatalf("POSTs seen by path %v, want one path per key", count)
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("the POST with an %s reached GitLab %d times, want once", path.Base(k), n)
		}
	}
}

// A module request kasd's own rate limit refused is counted as rate_limited, not as "error"
// (GitLab not answering), and never reaches GitLab.
func TestModuleRateLimitedIsCountedAsSuch(t *testing.T) {
	e := newEnv(t, func(c *gitlab.Config) {
		c.RateLimit, c.Burst, c.RateLimitMaxWait = 0.001, 1, 10*time.Millisecond
	})
	e.gl.AddAgent("tok", agent1)
	h := e.client.ModuleHandler()
	codes := make([]int, 2)
	for i := range codes {
		req := httptest.NewRequestWithContext(gitlab.WithAgentToken(t.Context(), "tok"), http.MethodGet, "/modules/agent_configuration/x", nil)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		codes[i] = rec.Code
	}
	if codes[0] != http.StatusOK || codes[1] != http.StatusServiceUnavailable {
		t.Fatalf("statuses %v, want 200 then 503", codes)
	}
	if n := e.counter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "agent_configuration", "code": "rate_limited"}); n != 1 {
		t.Errorf("rate_limited = %v, want 1", n)
	}
	if n := e.counter(t, "kasd_gitlab_module_requests_total", map[string]string{"module": "agent_configuration", "code": "error"}); n != 0 {
		t.Errorf("error = %v, want 0", n)
	}
	if n := len(e.gl.Requests()); n != 1 {
		t.Errorf("GitLab got %d requests, want 1", n)
	}
}
