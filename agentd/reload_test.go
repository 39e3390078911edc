package agentd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// reloadEnv is one real kasd on loopback (QUIC agent port, HTTP API) and one agent "alpha".
type reloadEnv struct {
	t      *testing.T
	api    *httptest.Server
	jwt    string
	client *http.Client
}

func newReloadEnv(t *testing.T, services map[string]*url.URL, connections int) (*reloadEnv, *Agent) {
	t.Helper()
	k := startTestKasd(t)
	a, err := New(Config{
		KasAddresses: []string{k.agentAddr}, Token: k.token, TLS: k.tls, Services: services,
		Connections: connections, DrainTimeout: 5 * time.Second,
		Backoff: quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	deadline := time.Now().Add(10 * time.Second)
	for a.Connected() != connections {
		if time.Now().After(deadline) {
			t.Fatalf("agent has %d connections, want %d", a.Connected(), connections)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return k.env, a
}

// runAgent runs a until the test ends.
func runAgent(t *testing.T, a *Agent) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// testKasd is a real kasd on loopback that knows agent "alpha" by token.
type testKasd struct {
	env       *reloadEnv
	agentAddr string
	token     string
	tls       *tls.Config // trusts kasd's dev CA, server name localhost
	srv       *kasd.Server
	caFile    string // kasd's dev CA
}

// startTestKasd starts a kasd, stopped when the test ends (after the agents started later).
func startTestKasd(t *testing.T) *testKasd { return startTestKasdWith(t, nil) }

// startTestKasdWith is startTestKasd with configure applied to kasd's Config.
func startTestKasdWith(t *testing.T, configure func(*kasd.Config)) *testKasd {
	t.Helper()
	dir := t.TempDir()
	secret := []byte("0123456789abcdef0123456789abcdef-test-secret")
	tok := auth.NewAgentToken()
	store, err := auth.ParseTokens([]byte("agents:\n- id: alpha\n  token_sha256: " + auth.TokenSHA256(tok) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	cert, caFile, err := quic.DevCertificate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kasd.Config{
		InstanceID: "kas-test",
		AgentAuth:  kasd.TokenFileAuth{Store: store},
		ClientAuth: &auth.Verifier{Key: secret, AllowAnyAgent: true},
		// A request finding no connection of its agent fails at once instead of waiting for
		// one: a reload that left the agent without a connection for a moment fails requests.
		RouteTimeout: time.Millisecond,
	}
	if configure != nil {
		configure(&cfg)
	}
	srv, err := kasd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var serveWG sync.WaitGroup
	serveWG.Go(func() { _ = srv.ServeAgents(context.Background(), ln) })
	e := &reloadEnv{t: t, api: httptest.NewServer(srv.Handler()), client: &http.Client{Timeout: 30 * time.Second}}
	e.jwt, err = auth.Mint(secret, auth.ClientClaims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer: auth.DefaultIssuer, Audience: jwt.ClaimStrings{"gitlab-kas"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now()),
	}, Agents: []string{auth.AnyAgent}})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := quic.ClientTLSConfig(caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs after the cleanups of agents started later
		e.client.CloseIdleConnections()
		e.api.Close()
		ln.Close()
		srv.Close()
		serveWG.Wait()
	})
	return &testKasd{env: e, agentAddr: ln.Addr().String(), token: tok, tls: tlsConf, srv: srv, caFile: caFile}
}

// get requests path of service through kasd and returns the status and body.
func (e *reloadEnv) get(service, path string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, e.api.URL+"/api/v1/agents/alpha/proxy/"+service+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+e.jwt)
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// backend answers "<name> <path>", slowly enough that reloads happen with requests in flight.
func backend(t *testing.T, name string) *url.URL {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond)
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	t.Cleanup(s.Close)
	u, _ := url.Parse(s.URL)
	return u
}

// TestReloadServicesUnderLoad: with requests running all along to service "web", services are
// added (and become reachable through kasd: the agent re-announced them), web is moved to
// another URL, a bad list is refused and kept out, and a service is removed (kasd then
// refuses it) — and not one request to web fails. With one connection, so that a reload that
// broke before making would fail requests.
func TestReloadServicesUnderLoad(t *testing.T) {
	for _, conns := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d connections", conns), func(t *testing.T) { testReloadUnderLoad(t, conns) })
	}
}

func testReloadUnderLoad(t *testing.T, conns int) {
	web1, web2, other := backend(t, "web1"), backend(t, "web2"), backend(t, "other")
	e, a := newReloadEnv(t, map[string]*url.URL{"web": web1}, conns)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	for i := range 32 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				path := fmt.Sprintf("/w%d/%d", i, n)
				status, body, err := e.get("web", path)
				if err != nil || status != http.StatusOK || (body != "web1 "+path && body != "web2 "+path) {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %d %q %v", path, status, body, err))
					continue
				}
				ok.Add(1)
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	reload := func(s map[string]*url.URL, err error) error {
		return a.ReloadServices(func() (map[string]*url.URL, error) { return s, err })
	}
	time.Sleep(100 * time.Millisecond) // load running

	// Add a service: kasd routes it once the agent re-announced.
	if err := reload(map[string]*url.URL{"web": web1, "other": other}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor("other reachable through kasd", func() bool {
		status, body, _ := e.get("other", "/x")
		return status == http.StatusOK && body == "other /x"
	})
	// Move web.
	if err := reload(map[string]*url.URL{"web": web2, "other": other}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor("web served by its new URL", func() bool { _, body, _ := e.get("web", "/y"); return body == "web2 /y" })
	// Bad lists and unreadable files keep the current services.
	if err := reload(map[string]*url.URL{"web": web2, "bad name!": other}, nil); err == nil {
		t.Fatal("a bad service name was accepted")
	}
	if err := reload(nil, errors.New("yaml: line 3: did not find expected key")); err == nil {
		t.Fatal("a load error was accepted")
	}
	if status, body, _ := e.get("other", "/z"); status != http.StatusOK || body != "other /z" {
		t.Fatalf("after bad reloads other answers %d %q", status, body)
	}
	// Remove a service: kasd stops routing it.
	if err := reload(map[string]*url.URL{"web": web2}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor("other refused", func() bool { status, _, _ := e.get("other", "/x"); return status == http.StatusNotFound })
	if err := reload(map[string]*url.URL{"web": web2}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // load continues on the final connections

	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d of %d requests to web failed during reloads; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if ok.Load() < 100 {
		t.Fatalf("only %d requests ran", ok.Load())
	}
	for result, want := range map[string]float64{"ok": 3, "error": 2, "unchanged": 1} {
		if got := counterValue(t, a.m.configReloads.WithLabelValues(result)); got != want {
			t.Errorf("agentd_config_reloads_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	if got := a.Connected(); got != conns {
		t.Errorf("%d connections after reloads, want %d", got, conns)
	}
	t.Logf("%d requests to web during the reloads, none failed", ok.Load())
}

// TestWatchConfig: SIGHUP and a change of the config file (written in place, or replaced by
// rename as editors and ConfigMaps do) each trigger one reload; other files in the directory
// do not.
func TestWatchConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agentd.yaml")
	if err := os.WriteFile(path, []byte("services: {a: http://x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reloads := make(chan struct{}, 16)
	signals := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	log := testLogger(t)
	go func() { done <- WatchConfig(ctx, path, signals, func() { reloads <- struct{}{} }, log) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond) // the watch is set up

	expect := func(what string, n int) {
		t.Helper()
		for range n {
			select {
			case <-reloads:
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: no reload", what)
			}
		}
		select {
		case <-reloads:
			t.Fatalf("%s: more than %d reloads", what, n)
		case <-time.After(2 * reloadDebounce):
		}
	}
	signals <- syscall.SIGHUP
	expect("SIGHUP", 1)
	if err := os.WriteFile(path, []byte("services: {a: http://y}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expect("write in place", 1)
	tmp := filepath.Join(dir, ".agentd.yaml.tmp")
	if err := os.WriteFile(tmp, []byte("services: {a: http://z}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expect("replace by rename", 1)
	if err := os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	expect("unrelated file", 0)
}

func testLogger(t *testing.T) *zerolog.Logger {
	l := zerolog.New(zerolog.NewTestWriter(t))
	return &l
}

func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestTooManyServices: kasd refuses a Hello with more than api.MaxServices services, so the
// agent refuses to start with more, and a reload to more keeps the current services.
func TestTooManyServices(t *testing.T) {
	services := func(n int) map[string]*url.URL {
		m := map[string]*url.URL{}
		for i := range n {
			m[fmt.Sprintf("s%d", i)] = &url.URL{Scheme: "http", Host: "127.0.0.1:1"}
		}
		return m
	}
	cfg := Config{KasAddresses: []string{"127.0.0.1:1"}, Token: "t", TLS: &tls.Config{}, Log: testLogger(t)}
	cfg.Services = services(api.MaxServices + 1)
	if _, err := New(cfg); err == nil {
		t.Fatalf("New with %d services: no error", api.MaxServices+1)
	}
	cfg.Services = services(api.MaxServices)
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New with %d services: %v", api.MaxServices, err)
	}
	if err := a.ReloadServices(func() (map[string]*url.URL, error) { return services(api.MaxServices + 1), nil }); err == nil {
		t.Fatalf("reload to %d services: no error", api.MaxServices+1)
	}
	if got := counterValue(t, a.m.configReloads.WithLabelValues("error")); got != 1 {
		t.Errorf(`agentd_config_reloads_total{result="error"} = %v, want 1`, got)
	}
	if got := len(a.svcs.Load().names); got != api.MaxServices {
		t.Errorf("%d services after the refused reload, want %d", got, api.MaxServices)
	}
}

// trackedBackend answers "<name> <path>" padded to size bytes once release is closed (nil:
// at once), and counts its open connections and the requests that reached it.
func trackedBackend(t *testing.T, name string, release <-chan struct{}, size int) (u *url.URL, open, reached *atomic.Int64) {
	t.Helper()
	open, reached = new(atomic.Int64), new(atomic.Int64)
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		if release != nil {
			<-release
		}
		head := fmt.Sprintf("%s %s ", name, r.URL.Path)
		fmt.Fprint(w, head+strings.Repeat("x", size-len(head)))
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	u, _ = url.Parse(s.URL)
	return u, open, reached
}

// TestRetiredServiceClosesConnections: requests in flight to a service that a reload moves to
// another URL, or removes, all complete (bodies checked), and the connections they used to the
// old URL are closed as they end: they went back to the retired service's pool and stayed
// open until agentd exited, up to --max-idle-conns-per-service of them per reload.
func TestRetiredServiceClosesConnections(t *testing.T) {
	for _, change := range []string{"moved", "removed"} {
		t.Run(change, func(t *testing.T) {
			const n, size = 120, 8 << 10
			release := make(chan struct{})
			old, open, reached := trackedBackend(t, "old", release, size)
			moved, _, _ := trackedBackend(t, "new", nil, size)
			other, _, _ := trackedBackend(t, "other", nil, size)
			e, a := newReloadEnv(t, map[string]*url.URL{"web": old, "other": other}, 2)

			var wg sync.WaitGroup
			var failed atomic.Int64
			var firstErr atomic.Value
			for i := range n {
				wg.Go(func() {
					path := fmt.Sprintf("/r%d", i)
					status, body, err := e.get("web", path)
					want := "old " + path + " "
					if err != nil || status != http.StatusOK || len(body) != size || !strings.HasPrefix(body, want) || strings.Trim(body[len(want):], "x") != "" {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %d %.60q (%d bytes) %v", path, status, body, len(body), err))
					}
				})
			}
			released := false
			defer func() {
				if !released {
					close(release)
				}
				wg.Wait()
			}()
			deadline := time.Now().Add(20 * time.Second)
			for reached.Load() < n {
				if time.Now().After(deadline) {
					t.Fatalf("only %d of %d requests reached the service (%d failed; first: %v)", reached.Load(), n, failed.Load(), firstErr.Load())
				}
				time.Sleep(5 * time.Millisecond)
			}
			next := map[string]*url.URL{"web": moved, "other": other}
			if change == "removed" {
				next = map[string]*url.URL{"other": other}
			}
			if err := a.ReloadServices(func() (map[string]*url.URL, error) { return next, nil }); err != nil {
				t.Fatal(err)
			}
			close(release)
			released = true
			wg.Wait()
			if f := failed.Load(); f > 0 {
				t.Fatalf("%d of %d requests in flight during the reload failed; first: %v", f, n, firstErr.Load())
			}
			deadline = time.Now().Add(10 * time.Second)
			for open.Load() > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d connections to the retired service's URL still open after its requests ended", open.Load())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestReannounceFailureCounted: a re-announce whose dial kasd refuses (here kasd holds its
// maximum of agent connections, so the reload's new connection is refused while the old one
// keeps serving) is counted in agentd_connect_attempts_total{result}, as every other failed
// connect is: it was counted in agentd_connect_failures_total{code} only, so the attempts'
// failure ratio left it out.
func TestReannounceFailureCounted(t *testing.T) {
	k := startTestKasdWith(t, func(c *kasd.Config) { c.MaxAgentConnections = 1 })
	web1, web2 := backend(t, "web1"), backend(t, "web2")
	a, err := New(Config{
		KasAddresses: []string{k.agentAddr}, Token: k.token, TLS: k.tls, Services: map[string]*url.URL{"web": web1},
		Connections: 1, Backoff: quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	deadline := time.Now().Add(10 * time.Second)
	for a.Connected() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("agent not connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := a.ReloadServices(func() (map[string]*url.URL, error) { return map[string]*url.URL{"web": web2}, nil }); err != nil {
		t.Fatal(err)
	}
	failures := a.m.connectFailures.WithLabelValues(ConnectOverloaded.String())
	for counterValue(t, failures) < 1 {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("the re-announce was not refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The old connection still serves, with the new services.
	if status, body, err := k.env.get("web", "/x"); status != http.StatusOK || body != "web2 /x" {
		t.Fatalf("during the failing re-announce: %d %q %v", status, body, err)
	}
	if got := counterValue(t, a.m.connectAttempts.WithLabelValues("overloaded")); got < 1 {
		t.Errorf("agentd_connect_attempts_total{result=overloaded} = %v after %v refused re-announce dials, want them counted",
			got, counterValue(t, failures))
	}
}

// revocableAuth accepts the agent's token until revoked is set, then refuses it as kasd does a
// token removed from its tokens file.
type revocableAuth struct {
	kasd.AgentAuthenticator
	revoked *atomic.Bool
}

func (r revocableAuth) Authenticate(ctx context.Context, token string) (string, error) {
	if r.revoked.Load() {
		return "", api.Errorf(api.CodeUnauthenticated, "agent token not recognized")
	}
	return r.AgentAuthenticator.Authenticate(ctx, token)
}

// TestReannounceRefusedTokenBacksOff: a re-announce that kasd refuses for its token (revoked
// since the agent connected) waits as a slot's refused dial does, 30s doubling (README): it
// redialled with the ordinary backoff, every 10s at most, for as long as the token stayed
// refused, while the old connection went on serving.
func TestReannounceRefusedTokenBacksOff(t *testing.T) {
	var revoked atomic.Bool
	k := startTestKasdWith(t, func(c *kasd.Config) { c.AgentAuth = revocableAuth{c.AgentAuth, &revoked} })
	web1, web2 := backend(t, "web1"), backend(t, "web2")
	a, err := New(Config{
		KasAddresses: []string{k.agentAddr}, Token: k.token, TLS: k.tls, Services: map[string]*url.URL{"web": web1},
		Connections: 1, Backoff: quic.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runAgent(t, a)
	deadline := time.Now().Add(10 * time.Second)
	for a.Connected() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("agent not connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	revoked.Store(true)
	if err := a.ReloadServices(func() (map[string]*url.URL, error) { return map[string]*url.URL{"web": web2}, nil }); err != nil {
		t.Fatal(err)
	}
	refused := a.m.connectFailures.WithLabelValues(ConnectTokenRefused.String())
	for counterValue(t, refused) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the re-announce was not refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Second) // ten times the backoff's maximum
	if n := counterValue(t, refused); n != 1 {
		t.Errorf("%v re-announce dials refused for the token within a second, want 1 (then 15-30s)", n)
	}
	if status, body, err := k.env.get("web", "/x"); status != http.StatusOK || body != "web2 /x" {
		t.Errorf("the old connection no longer serves: %d %q %v", status, body, err)
	}
}
