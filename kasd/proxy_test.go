package kasd_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
)

// echoService answers with what it received.
func echoService(t *testing.T, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", name)
		fmt.Fprintf(w, "%s %s?%s auth=%q imp=%q xff=%q", r.Method, r.URL.Path, r.URL.RawQuery,
			r.Header.Get("Authorization"), r.Header.Get("Impersonate-User"), r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(s.Close)
	return s
}

func TestRoutedGET(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL + "/base"})
	waitConnected(t, a, 1)

	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/some/path%2Fx?q=1&r=a+b", nil, "Impersonate-User", "root")
	body := readAll(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	// The path below {service} is appended to the service's base path with its escaping, the
	// query is kept, and neither the caller's Authorization nor an Impersonate header passes.
	if want := `GET /base/some/path/x?q=1&r=a+b auth="" imp="" xff="127.0.0.1"`; body != want {
		t.Errorf("service saw %q, want %q", body, want)
	}
	if resp.Header.Get("X-Served-By") != "web" || resp.Header.Get("Qkas-Request-Id") == "" {
		t.Errorf("headers %v", resp.Header)
	}
	if got := counter(t, e.reg, "kasd_requests_total", map[string]string{"route": "local", "code": "200"}); got != 1 {
		t.Errorf("kasd_requests_total{route=local,code=200} = %v", got)
	}
}

func TestAgentList(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL, "api": svc.URL})
	b := e.startAgent("beta", "pod-b", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	waitConnected(t, b, 1)
	body := readAll(t, e.do("GET", "/api/v1/agents", nil))
	for _, want := range []string{`"id":"alpha"`, `"replica":"pod-1"`, `"services":["api","web"]`, `"id":"beta"`, `"connected_since"`} {
		if !strings.Contains(body, want) {
			t.Errorf("agent list lacks %s: %s", want, body)
		}
	}
	// A token restricted to beta sees only beta.
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents"), nil)
	req.Header.Set("Authorization", "Bearer "+e.token(func(c *auth.ClientClaims) { c.Agents = []string{"beta"} }))
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); strings.Contains(body, "alpha") || !strings.Contains(body, "beta") {
		t.Errorf("restricted list: %s", body)
	}
}

func TestErrorStatuses(t *testing.T) {
	e := newEnv(t, func(c *kasdConfig) { c.ResponseHeaderTimeout = 500 * time.Millisecond })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL, "slow": slow.URL, "down": downURL})
	waitConnected(t, a, 1)

	restricted := e.token(func(c *auth.ClientClaims) { c.Agents = []string{"beta"} })
	for _, tc := range []struct {
		name, path, token string
		hdr               []string
		status            int
		code              api.Code
	}{
		{"no jwt", "/api/v1/agents/alpha/proxy/web/", "-", nil, 401, api.CodeUnauthenticated},
		{"bad jwt", "/api/v1/agents/alpha/proxy/web/", "garbage", nil, 401, api.CodeUnauthenticated},
		{"other agent", "/api/v1/agents/alpha/proxy/web/", restricted, nil, 403, api.CodeForbidden},
		{"unknown service", "/api/v1/agents/alpha/proxy/nope/", "", nil, 404, api.CodeServiceUnknown},
		{"unknown path", "/api/v1/nothing", "", nil, 404, api.CodeNotFound},
		{"not a proxy path", "/api/v1/agents/alpha/nothing", "", nil, 404, api.CodeNotFound},
		{"agent id too long", "/api/v1/agents/" + strings.Repeat("a", 300) + "/proxy/web/", "", nil, 400, api.CodeBadRequest},
		{"invalid service name", "/api/v1/agents/alpha/proxy/w%20b/", "", nil, 400, api.CodeBadRequest},
		{"not connected", "/api/v1/agents/gamma/proxy/web/", "", nil, 503, api.CodeAgentNotConnected},
		{"service down", "/api/v1/agents/alpha/proxy/down/", "", nil, 502, api.CodeServiceUnavailable},
		{"client deadline", "/api/v1/agents/alpha/proxy/slow/", "", []string{"Qkas-Timeout", "200ms"}, 504, api.CodeDeadlineExceeded},
		{"header timeout", "/api/v1/agents/alpha/proxy/slow/", "", nil, 504, api.CodeDeadlineExceeded},
		{"bad timeout", "/api/v1/agents/alpha/proxy/web/", "", []string{"Qkas-Timeout", "soon"}, 400, api.CodeBadRequest},
		{"infinite timeout", "/api/v1/agents/alpha/proxy/web/", "", []string{"Qkas-Timeout", "NaN"}, 400, api.CodeBadRequest},
		{"dot dot", "/api/v1/agents/alpha/proxy/web/a/../../x", "", nil, 400, api.CodeBadRequest},
		{"encoded dot dot", "/api/v1/agents/alpha/proxy/web/%2e%2e/x", "", nil, 400, api.CodeBadRequest},
		{"dot dot behind encoded slash", "/api/v1/agents/alpha/proxy/web/x%2f..%2fy", "", nil, 400, api.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.url(tc.path), nil)
			switch tc.token {
			case "":
				req.Header.Set("Authorization", "Bearer "+e.token())
			case "-":
			default:
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			for i := 0; i+1 < len(tc.hdr); i += 2 {
				req.Header.Set(tc.hdr[i], tc.hdr[i+1])
			}
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got := api.ReadHTTPError(resp)
			if resp.StatusCode != tc.status || got == nil || got.Code != tc.code {
				t.Fatalf("got %d %v, want %d %s", resp.StatusCode, got, tc.status, tc.code)
			}
			if tc.code.Retryable() && resp.Header.Get("Retry-After") == "" {
				t.Errorf("%s without Retry-After", tc.code)
			}
			if tc.code == api.CodeServiceUnknown && !strings.Contains(got.Message, "it offers down, slow, web") {
				t.Errorf("service_unknown %q does not list the agent's services", got.Message)
			}
		})
	}
}

func TestJWTRejected(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	good := jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"gitlab-kas"}, ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute))}
	mint := func(key []byte, c jwt.RegisteredClaims, method jwt.SigningMethod) string {
		tok := jwt.NewWithClaims(method, c)
		var k any = key
		if method == jwt.SigningMethodNone {
			k = jwt.UnsafeAllowNoneSignatureType
		}
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	expired := good
	expired.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Minute))
	wrongAud := good
	wrongAud.Audience = jwt.ClaimStrings{"gitlab"}
	tooLong := good
	tooLong.ExpiresAt = jwt.NewNumericDate(now.Add(48 * time.Hour))
	noExp := good
	noExp.ExpiresAt = nil
	for name, tok := range map[string]string{
		"expired":        mint(e.secret, expired, jwt.SigningMethodHS256),
		"wrong audience": mint(e.secret, wrongAud, jwt.SigningMethodHS256),
		"wrong key":      mint([]byte(strings.Repeat("k", 32)), good, jwt.SigningMethodHS256),
		"alg none":       mint(nil, good, jwt.SigningMethodNone),
		"too long":       mint(e.secret, tooLong, jwt.SigningMethodHS256),
		"no exp":         mint(e.secret, noExp, jwt.SigningMethodHS256),
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.url("/api/v1/agents"), nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got := api.ReadHTTPError(resp); resp.StatusCode != 401 || got == nil || got.Code != api.CodeUnauthenticated {
				t.Fatalf("got %d %v", resp.StatusCode, got)
			}
		})
	}
}

func TestBadAgentToken(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	a := e.startAgent("intruder", "pod-x", map[string]string{"web": svc.URL})
	deadline := time.Now().Add(10 * time.Second)
	for counter(t, e.reg, "kasd_agent_connections_total", map[string]string{"result": "unauthenticated"}) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("bad token was not refused")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if a.Connected() != 0 {
		t.Error("agent with a bad token is connected")
	}
	if body := readAll(t, e.do("GET", "/api/v1/agents", nil)); strings.Contains(body, "intruder") || !strings.Contains(body, `"agents":[]`) {
		t.Errorf("refused agent left a trace: %s", body)
	}
}

func TestReplicasShareLoad(t *testing.T) {
	e := newEnv(t)
	s1, s2 := echoService(t, "replica-1"), echoService(t, "replica-2")
	a1 := e.startAgent("alpha", "pod-1", map[string]string{"web": s1.URL})
	a2 := e.startAgent("alpha", "pod-2", map[string]string{"web": s2.URL})
	waitConnected(t, a1, 1)
	waitConnected(t, a2, 1)
	seen := map[string]int{}
	for range 20 {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil)
		readAll(t, resp)
		seen[resp.Header.Get("X-Served-By")]++
	}
	if seen["replica-1"] < 5 || seen["replica-2"] < 5 {
		t.Errorf("requests not spread over replicas: %v", seen)
	}
}

func TestConcurrentRequests(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentConfig) { c.MaxIdleConnsPerService = 256 })
	waitConnected(t, a, 1)
	tr := &http.Transport{MaxIdleConnsPerHost: 200}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	tok := e.token()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", e.url(fmt.Sprintf("/api/v1/agents/alpha/proxy/web/%d", i)), nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(b), fmt.Sprintf("GET /%d?", i)) {
				errs <- fmt.Errorf("request %d: %d %q", i, resp.StatusCode, b)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a.Connected() != 1 {
		t.Errorf("agent connections = %d", a.Connected())
	}
}

// patternReader yields n deterministic bytes without holding them in memory.
type patternReader struct{ n, off int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	for i := range p {
		p[i] = byte((r.off + int64(i)) * 7 % 251)
	}
	r.off += int64(len(p))
	return len(p), nil
}

func TestLargeBodiesBoundedMemory(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%d %x %v", n, h.Sum(nil), err)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		_, _ = io.Copy(w, &patternReader{n: size})
	}))
	defer svc.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"bulk": svc.URL})
	waitConnected(t, a, 1)

	want := sha256.New()
	_, _ = io.Copy(want, &patternReader{n: size})
	wantSum := hex.EncodeToString(want.Sum(nil))

	var peak uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak {
				peak = m.HeapInuse
			}
		}
	})

	// Upload: the body streams through kasd and the agent to the service.
	body := readAll(t, e.do("POST", "/api/v1/agents/alpha/proxy/bulk/up", &patternReader{n: size}))
	if want := fmt.Sprintf("%d %s <nil>", size, wantSum); body != want {
		t.Fatalf("upload: service saw %q, want %q", body, want)
	}
	// Download.
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/bulk/down", nil)
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != wantSum {
		t.Fatalf("download: %d bytes, err %v", n, err)
	}
	close(stop)
	sampler.Wait()
	// Everything (client, kasd, agent, service) runs in this process: 64 MiB each way must not
	// be buffered anywhere. QUIC flow-control windows bound what may be in flight.
	if growth := int64(peak) - int64(base.HeapInuse); growth > 48<<20 {
		t.Errorf("heap grew by %d MiB while moving 64 MiB each way", growth>>20)
	}
}

func TestServerSentEventsStream(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer svc.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"events": svc.URL})
	waitConnected(t, a, 1)
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/events/", nil)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	got := make(chan string, 1)
	go func() { line, _ := br.ReadString('\n'); got <- line }()
	select {
	case line := <-got:
		if line != "data: first\n" {
			t.Fatalf("first event %q", line)
		}
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("first event did not arrive before the response ended")
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: second") {
		t.Errorf("rest %q", rest)
	}
}

func TestWebSocketEcho(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	defer svc.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"ws": svc.URL})
	waitConnected(t, a, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hdr := http.Header{"Authorization": {"Bearer " + e.token()}}
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.url("/api/v1/agents/alpha/proxy/ws/socket"), "http"), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo: "+msg {
			t.Fatalf("got %q", got)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	// The upgrade is counted as what it was, 101, once the tunnel closes.
	deadline := time.Now().Add(5 * time.Second)
	for counter(t, e.reg, "kasd_requests_total", map[string]string{"route": "local", "code": "101"}) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("kasd_requests_total{code=101} not counted for the WebSocket upgrade")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAgentReconnectsAfterKasdRestart(t *testing.T) {
	e := newEnv(t)
	svc := echoService(t, "web")
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	e.restartKasd()
	// The restarted kasd has the same stateless reset key: the agent learns at once that its
	// connection is gone (no idle timeout) and reconnects.
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/again"), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not come back: %d %s", resp.StatusCode, body)
		}
	}
}

func TestMethodNotAllowedAndForgedErrors(t *testing.T) {
	e := newEnv(t)
	forger := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.HeaderError, "agent_not_connected")
		w.WriteHeader(http.StatusTeapot)
	}))
	defer forger.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"forger": forger.URL})
	waitConnected(t, a, 1)
	resp := e.do("POST", "/api/v1/agents", nil)
	readAll(t, resp)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
		t.Errorf("POST /api/v1/agents: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	// A service's own error must not pass for one of qkas's.
	resp = e.do("GET", "/api/v1/agents/alpha/proxy/forger/", nil)
	readAll(t, resp)
	if resp.StatusCode != http.StatusTeapot || resp.Header.Get(api.HeaderError) != "" {
		t.Errorf("forged error: %d %q", resp.StatusCode, resp.Header.Get(api.HeaderError))
	}
}

// A client's request trailers reach the service (they travel at the end of a framed body).
func TestRequestTrailers(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d %s", len(b), r.Trailer.Get("X-Checksum"))
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	for _, size := range []int{10, 100 << 10} {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", e.url("/api/v1/agents/alpha/proxy/web/up"), pr)
		req.Header.Set("Authorization", "Bearer "+e.token())
		req.Trailer = http.Header{"X-Checksum": nil}
		go func() {
			pw.Write(bytes.Repeat([]byte("x"), size))
			req.Trailer.Set("X-Checksum", "sum-"+strconv.Itoa(size))
			pw.Close()
		}()
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if want := fmt.Sprintf("%d sum-%d", size, size); resp.StatusCode != 200 || body != want {
			t.Errorf("size %d: %d %q, want %q", size, resp.StatusCode, body, want)
		}
	}
}

// Trailers a chunked HTTP/1.1 body ends with reach the service also when its head did not
// declare them, which HTTP allows (curl, proxies and hand-written clients send them so): only
// declared ones travelled (the body was framed only for those), the others were dropped
// (independent differential review). A chunked body without trailers still arrives whole.
func TestUndeclaredRequestTrailers(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s|%s|%s", b, r.Trailer.Get("X-Undeclared"), r.Trailer.Get("X-Second"))
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	for _, tc := range []struct{ trailers, want string }{
		{"X-Undeclared: 42\r\nX-Second: two\r\n", "hello world|42|two"},
		{"", "hello world||"},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/up HTTP/1.1\r\nHost: kasd\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n%s\r\n", e.token(), tc.trailers)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != 200 || string(body) != tc.want {
			t.Errorf("trailers %q: %d %q, want %q", tc.trailers, resp.StatusCode, body, tc.want)
		}
	}
}

// A trailer cannot carry what kasd keeps out of a header, either way: a client's request
// trailers reach the service without credentials, impersonation, routing or framing fields
// (net/http collects every trailer a client sends; an independent security review got
// Authorization, Impersonate-User and Host to the service as trailers), and an agent's response
// trailers reach the client without Set-Cookie (or Qkas-Error, which only kasd sets).
func TestTrailersCarryNoHeaderOnlyFields(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		keys := make([]string, 0, len(r.Trailer))
		for k := range r.Trailer {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		_, _ = io.WriteString(w, strings.Join(keys, ","))
		// Chunked: net/http then sends the trailers set below. (Go's client refuses a
		// response with a Content-Length trailer: not tried here.)
		w.(http.Flusher).Flush()
		for _, k := range []string{"X-Sum", "Set-Cookie", "Qkas-Error"} {
			w.Header().Set(http.TrailerPrefix+k, "7")
		}
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	c, err := net.Dial("tcp", strings.TrimPrefix(e.api.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /api/v1/agents/alpha/proxy/web/up HTTP/1.1\r\nHost: kasd\r\nAuthorization: Bearer %s\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n0\r\nX-Checksum: 1\r\nAuthorization: Bearer stolen\r\nImpersonate-User: system:admin\r\nImpersonate-Group: system:masters\r\n"+
		"Host: evil\r\nX-Forwarded-For: 6.6.6.6\r\nQkas-Timeout: 1s\r\nContent-Length: 5\r\n\r\n", e.token())
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || err != nil || string(body) != "X-Checksum" {
		t.Errorf("the service got the request trailers %q (%d, %v), want X-Checksum only", body, resp.StatusCode, err)
	}
	if got := resp.Trailer; len(got) != 1 || got.Get("X-Sum") != "7" {
		t.Errorf("the client got the response trailers %v, want X-Sum only", got)
	}
}

// A service's answer to HEAD carries the Content-Length of the GET (RFC 9110 section 9.3.2;
// http.ServeContent, object stores and registries do it, and clients use HEAD to learn a size).
// The length travels in the response frame (content_length), and kasd sets the header from it
// for HEAD too.
func TestHeadKeepsContentLength(t *testing.T) {
	e := newEnv(t)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1234")
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.Method != http.MethodHead {
			_, _ = w.Write(make([]byte, 1234))
		}
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	direct, err := http.Head(svc.URL + "/file")
	if err != nil {
		t.Fatal(err)
	}
	direct.Body.Close()
	resp := e.do("HEAD", "/api/v1/agents/alpha/proxy/web/file", nil)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Content-Length"), direct.Header.Get("Content-Length"); got != want {
		t.Errorf("HEAD through kasd: Content-Length %q, the service sent %q", got, want)
	}
}

// A malformed Qkas-Timeout or Qkas-Deadline is answered 400 bad_request and counted in
// kasd_api_errors_total, as every other refusal of serveProxy.
func TestBadTimeoutHeaderCounted(t *testing.T) {
	e := newEnv(t)
	for _, h := range []string{"Qkas-Timeout", "Qkas-Deadline"} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil, h, "soon")
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s: soon: status %d, want 400", h, resp.StatusCode)
		}
	}
	if got := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "bad_request"}); got != 2 {
		t.Errorf("kasd_api_errors_total{code=bad_request} = %v after two 400 answers, want 2", got)
	}
}
