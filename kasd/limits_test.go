package kasd_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/gitlab"
	"github.com/qkas/qkas/gitlab/gitlabtest"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// TestMaxPendingHandshakes: connections that never send Hello hold a handshake slot each until
// HandshakeTimeout; one beyond MaxPendingHandshakes is refused at once with overloaded and
// counted, and once the silent ones time out a real agent gets in.
func TestMaxPendingHandshakes(t *testing.T) {
	const handshakeTimeout = 1500 * time.Millisecond
	e := newEnv(t, func(c *kasd.Config) {
		c.MaxPendingHandshakes = 2
		c.HandshakeTimeout = handshakeTimeout
	})
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost", api.ALPNAgent)
	if err != nil {
		t.Fatal(err)
	}
	d, err := quic.NewDialer(tlsConf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func() *quicgo.Conn {
		t.Helper()
		qc, err := d.Dial(ctx, e.agentUDP)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = qc.CloseWithError(0, "") })
		return qc
	}
	start := time.Now()
	silent := []*quicgo.Conn{dial(), dial()}
	// Let kasd pick both up (accept, then take their handshake slots) before the third.
	time.Sleep(200 * time.Millisecond)
	third := dial()

	select {
	case <-third.Context().Done():
	case <-time.After(handshakeTimeout / 2):
		t.Fatal("the connection beyond MaxPendingHandshakes was not refused at once")
	}
	var appErr *quicgo.ApplicationError
	if cause := context.Cause(third.Context()); !errors.As(cause, &appErr) || !appErr.Remote ||
		!strings.HasPrefix(appErr.ErrorMessage, api.CodeOverloaded.String()+": ") {
		t.Fatalf("third connection closed with %v, want kasd's overloaded refusal", cause)
	}
	limit := map[string]string{"reason": "max_pending_handshakes"}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", limit); n != 1 {
		t.Fatalf("max_pending_handshakes rejections = %v, want 1", n)
	}
	for i, qc := range silent {
		select {
		case <-qc.Context().Done():
			if time.Since(start) < handshakeTimeout-100*time.Millisecond {
				t.Fatalf("silent connection %d closed after %v, before the handshake timeout", i, time.Since(start))
			}
		case <-ctx.Done():
			t.Fatalf("silent connection %d was not closed after the handshake timeout", i)
		}
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "handshake_timeout"}); n != 2 {
		t.Fatalf("handshake_timeout rejections = %v, want 2", n)
	}

	// The slots are free again: a real agent connects.
	a := e.startAgent("alpha", "r1", map[string]string{"web": "http://127.0.0.1:1"})
	waitConnected(t, a, 1)
	if n := counter(t, e.reg, "kasd_limit_rejections_total", limit); n != 1 {
		t.Fatalf("max_pending_handshakes rejections = %v after the agent connected, want 1", n)
	}
}

// TestCloseWaitsForModuleHandlers: a module request blocked on GitLab ends when kasd closes,
// and Close returns only after its handler has returned.
func TestCloseWaitsForModuleHandlers(t *testing.T) {
	gl := gitlabtest.New(t, glSecret)
	reg := prometheus.NewRegistry()
	client, err := gitlab.New(gitlab.Config{URL: gl.URL, AuthSecret: glSecret, Version: "test"}, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	var returned atomic.Bool
	e := newEnv(t, func(c *kasd.Config) {
		c.AgentAuth = kasd.GitLabAuth{Client: client}
		modules := client.ModuleHandler()
		c.Modules = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			modules.ServeHTTP(w, r)
			// Returning a little late makes a Close that does not wait for handlers visible.
			time.Sleep(200 * time.Millisecond)
			returned.Store(true)
		})
	})
	ge := &glEnv{env: e, gl: gl, glReg: reg}
	gl.AddAgent("tok-slow", gitlab.AgentInfo{AgentID: 401})
	a := ge.startGitLabAgent("tok-slow", "pod-1", quic.Backoff{})
	waitConnected(t, a.Agent, 1)

	entered := make(chan struct{})
	release := make(chan struct{}) // unblocks GitLab if kasd never cancels its request
	t.Cleanup(func() { close(release) })
	gl.SetModuleHandler("slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		resp, err := noFollow.Get(a.proxy.URL + "/modules/slow/x")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the module request did not reach GitLab")
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		e.server().Close()
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return: the handler blocked on GitLab was not canceled")
	}
	if !returned.Load() {
		t.Fatal("Close returned while a module handler was still running")
	}
}

// runAgent runs an agent for tok until stop is called; stop cancels Run and returns a channel
// closed when Run has returned. The test's cleanup stops it too.
func (e *env) runAgent(tok string, mod func(*agentd.Config)) (a *agentd.Agent, stop func() <-chan struct{}) {
	t := e.t
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cfg := agentd.Config{
		KasAddresses: []string{e.agentUDP},
		Token:        tok,
		TLS:          tlsConf,
		Services:     map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout: time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err = agentd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	stop = func() <-chan struct{} { cancel(); return done }
	t.Cleanup(func() { <-stop() })
	return a, stop
}

// TestAgentRunWaitsForBodyWriters: the goroutine that writes a GitLab request's body belongs to
// the Agent, so Run does not return while it still runs.
func TestAgentRunWaitsForBodyWriters(t *testing.T) {
	e := newGitLabEnv(t)
	e.gl.AddAgent("tok-body", gitlab.AgentInfo{AgentID: 501})
	// GitLab answers without reading the body, so the response is back while the agent is
	// still writing the body.
	e.gl.SetModuleHandler("early", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Sent now, full duplex: net/http would otherwise read the body before answering.
		http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("early"))
		http.NewResponseController(w).Flush()
	}))
	a, stop := e.runAgent("tok-body", nil)
	waitConnected(t, a, 1)

	body, bodyW := io.Pipe()
	defer bodyW.Close()
	// Enough bytes at once to get through every buffer on the way to GitLab, then a wait.
	head := strings.NewReader(strings.Repeat("x", 64<<10))
	req, _ := http.NewRequest("POST", "http://agent/modules/early/x", io.MultiReader(head, body))
	resp, err := a.GitLabTransport().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != "early" {
		t.Fatalf("response %q", got)
	}
	// The body writer now waits in Read for the next body bytes.
	done := stop()
	select {
	case <-done:
		t.Fatal("Run returned while a request-body writer was still running")
	case <-time.After(300 * time.Millisecond):
	}
	bodyW.CloseWithError(errors.New("caller gave up"))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the body writer ended")
	}
	// Once Run is over, requests with a body are refused rather than started unowned.
	req, _ = http.NewRequest("POST", "http://agent/modules/early/x", strings.NewReader("x"))
	rt := &agentd.GitLabRoundTripper{Agent: a, ConnectWait: 50 * time.Millisecond}
	if _, err := rt.RoundTrip(req); api.CodeOf(err) != api.CodeAgentNotConnected {
		t.Fatalf("request after Run: %v, want agent_not_connected", err)
	}
}

// TestAgentDrainWaitsForUpgradedStreams: http.Server.Shutdown does not track upgraded streams,
// so the agent's drain does: an upgraded stream keeps working for DrainTimeout, then it is
// closed, and Run returns only after its handler has returned.
func TestAgentDrainWaitsForUpgradedStreams(t *testing.T) {
	e := newEnv(t)
	backendDone := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "test" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		nc, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer close(backendDone)
		defer nc.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
		brw.Flush()
		io.Copy(nc, brw) // echo until the agent closes
	}))
	t.Cleanup(svc.Close)
	const drainTimeout = 1500 * time.Millisecond
	tok := e.tokens["alpha"]
	a, stop := e.runAgent(tok, func(c *agentd.Config) {
		c.Services = map[string]*url.URL{"web": mustURL(t, svc.URL)}
		c.DrainTimeout = drainTimeout
	})
	waitConnected(t, a, 1)

	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/x"), nil)
	req.Header.Set("Authorization", "Bearer "+e.token())
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d: %s", resp.StatusCode, readAll(t, resp))
	}
	rw := resp.Body.(io.ReadWriter)
	echo := func(msg string) error {
		if _, err := rw.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(rw, got); err != nil {
			return err
		}
		if string(got) != msg {
			return errors.New("echoed " + string(got))
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	done := stop()
	time.Sleep(drainTimeout / 3)
	select {
	case <-done:
		t.Fatalf("Run returned after %v with an upgraded stream still open", time.Since(start))
	default:
	}
	if err := echo("draining"); err != nil {
		t.Fatalf("upgraded stream during the drain: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after DrainTimeout")
	}
	if d := time.Since(start); d < drainTimeout-100*time.Millisecond {
		t.Fatalf("Run returned after %v, before DrainTimeout", d)
	}
	select {
	case <-backendDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the upgraded connection to the service was not closed")
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestRefusedHelloFreesHandshakeSlot: a connection refused for its Hello gives its admission
// slot back before kasd lingers for the agent to read the refusal (500 ms), so a storm of bad
// Hellos does not shut out good ones: with one slot, a good agent right behind a bad Hello is
// welcomed, not refused as overloaded.
func TestRefusedHelloFreesHandshakeSlot(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.MaxPendingHandshakes = 1 })
	hello := func(replica string) *api.Hello {
		return &api.Hello{Version: api.ProtocolVersion, Token: e.tokens["alpha"], AgentVersion: "v1",
			Replica: replica, Process: "p1", Services: []string{"web"}}
	}
	for _, bad := range []*api.Hello{
		hello(strings.Repeat("r", api.MaxReplicaLen+1)), // bad_request
		{Version: api.ProtocolVersion + 1},              // wrong protocol version
	} {
		qc, _, _, d, err := sendHello(t, e.caFile, e.agentUDP, bad)
		if err == nil {
			t.Fatalf("hello %+v was welcomed", bad)
		}
		// The refused connection is left open: kasd lingers on it.
		good, _, _, gd, err := sendHello(t, e.caFile, e.agentUDP, hello("pod-1"))
		if err != nil {
			t.Fatalf("a good agent behind a refused Hello (%v): %v", api.CodeOf(err), err)
		}
		_ = good.CloseWithError(0, "")
		gd.Close()
		_ = qc.CloseWithError(0, "")
		d.Close()
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "max_pending_handshakes"}); n != 0 {
		t.Fatalf("max_pending_handshakes rejections = %v, want 0", n)
	}
}

// MaxInflightRequests bounds the API clients' proxied requests this kasd serves at once,
// including those waiting for an agent that is not connected (nothing else bounds those but the
// connections and, over HTTP/2, their streams): the excess is 503 overloaded at once, counted,
// and a place that frees serves the next request.
func TestMaxInflightRequests(t *testing.T) {
	e := newEnv(t, func(c *kasd.Config) { c.MaxInflightRequests = 3; c.RouteTimeout = 30 * time.Second })
	release := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "pod", map[string]string{"web": svc.URL})
	waitConnected(t, a, 1)
	var wg sync.WaitGroup
	results := make(chan int, 2)
	for range 2 { // held by the service
		wg.Go(func() {
			resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/hold", nil)
			readAll(t, resp)
			results <- resp.StatusCode
		})
	}
	waiting, stopWaiting := context.WithCancel(context.Background())
	wg.Go(func() { // waiting for an agent that never connects, until the test ends it
		req, _ := http.NewRequestWithContext(waiting, "GET", e.url("/api/v1/agents/beta/proxy/web/x"), nil)
		req.Header.Set("Authorization", "Bearer "+e.token())
		if resp, err := e.client.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("the request waiting for beta was answered: %d", resp.StatusCode)
		}
	})
	waitFor(t, "three requests in flight", func() bool {
		return metricValue(t, e.reg, "kasd_inflight_requests", "", "") >= 3
	})
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil)
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "overloaded") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a fourth request: %d %s (Retry-After %q), want 503 overloaded", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "max_inflight_requests"}); n != 1 {
		t.Errorf("max_inflight_requests counted %v times, want 1", n)
	}
	close(release)
	for range 2 {
		if code := <-results; code != 200 {
			t.Errorf("a held request: %d", code)
		}
	}
	if resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/x", nil); resp.StatusCode != 200 {
		t.Errorf("after two places freed: %d %s", resp.StatusCode, readAll(t, resp))
	} else {
		readAll(t, resp)
	}
	stopWaiting()
	wg.Wait()
}
