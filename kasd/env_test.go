package kasd_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
)

// env is one kasd with real QUIC on loopback, its API on an httptest server, and helpers to start
// agents and make client requests.
type env struct {
	t        *testing.T
	dir      string
	secret   []byte
	tokens   map[string]string // agent id -> token
	store    *auth.TokenStore
	mu       sync.Mutex // guards srv
	srv      *kasd.Server
	reg      *prometheus.Registry
	ln       *quic.Listener
	api      *httptest.Server
	caFile   string
	agentUDP string
	cfg      kasd.Config
	serveWG  sync.WaitGroup
	client   *http.Client
}

type envOption func(*kasd.Config)

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), tokens: map[string]string{}}
	e.secret = []byte("0123456789abcdef0123456789abcdef-test-secret")
	var yaml string
	for _, id := range []string{"alpha", "beta", "gamma"} {
		tok := auth.NewAgentToken()
		e.tokens[id] = tok
		yaml += "- id: " + id + "\n  token_sha256: " + auth.TokenSHA256(tok) + "\n"
	}
	store, err := auth.ParseTokens([]byte("agents:\n" + yaml))
	if err != nil {
		t.Fatal(err)
	}
	e.store = store
	_, caFile, err := quic.DevCertificate(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.caFile = caFile
	e.cfg = kasd.Config{
		InstanceID:   "kas-test",
		AgentAuth:    kasd.TokenFileAuth{Store: store},
		ClientAuth:   &auth.Verifier{Key: e.secret, AllowAnyAgent: true},
		RouteTimeout: 300 * time.Millisecond,
	}
	for _, o := range opts {
		o(&e.cfg)
	}
	e.client = &http.Client{Timeout: 60 * time.Second}
	e.startKasd("127.0.0.1:0")
	t.Cleanup(e.stopKasd)
	return e
}

// startKasd starts a Server and its agent listener on addr; the API test server, created once,
// always serves the current Server.
func (e *env) startKasd(addr string) {
	t := e.t
	c, _, err := quic.DevCertificate(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := quic.LoadOrCreateStatelessResetKey(e.dir + "/reset.key")
	if err != nil {
		t.Fatal(err)
	}
	e.reg = prometheus.NewRegistry()
	cfg := e.cfg
	cfg.Registerer = e.reg
	if testing.Verbose() {
		l := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
		cfg.Log = &l
	}
	srv, err := kasd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.ln, err = quic.Listen(addr, quic.ServerTLSConfig(c, api.ALPNAgent), quic.Config{StatelessResetKey: key})
	if err != nil {
		t.Fatal(err)
	}
	e.agentUDP = e.ln.Addr().String()
	e.mu.Lock()
	e.srv = srv
	e.mu.Unlock()
	ln := e.ln
	e.serveWG.Go(func() { _ = srv.ServeAgents(context.Background(), ln) })
	if e.api == nil {
		e.api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e.server().Handler().ServeHTTP(w, r)
		}))
	}
}

func (e *env) server() *kasd.Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv
}

// restartKasd closes the server abruptly (as a crash would: no drain) and starts a new one on
// the same UDP port with the same stateless reset key.
func (e *env) restartKasd() {
	e.ln.Close()
	e.server().Close()
	e.serveWG.Wait()
	e.startKasd(e.agentUDP)
}

func (e *env) stopKasd() {
	e.client.CloseIdleConnections()
	if e.api != nil {
		e.api.Close()
	}
	e.ln.Close()
	e.server().Close()
	e.serveWG.Wait()
}

// startAgent runs an agentd for id with the given services until the test ends.
func (e *env) startAgent(id, replica string, services map[string]string, mod ...func(*agentd.Config)) *agentd.Agent {
	t := e.t
	t.Helper()
	tlsConf, err := quic.ClientTLSConfig(e.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	svcs := map[string]*url.URL{}
	for name, raw := range services {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		svcs[name] = u
	}
	tok := e.tokens[id]
	if tok == "" {
		tok = id // an unknown token
	}
	cfg := agentd.Config{
		KasAddresses: []string{e.agentUDP},
		Token:        tok,
		TLS:          tlsConf,
		Services:     svcs,
		Replica:      replica,
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout: 2 * time.Second,
	}
	for _, m := range mod {
		m(&cfg)
	}
	a, err := agentd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// waitConnected waits until the agent has n connections.
func waitConnected(t *testing.T, a *agentd.Agent, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for a.Connected() != n {
		if time.Now().After(deadline) {
			t.Fatalf("agent has %d connections, want %d", a.Connected(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) token(mod ...func(*auth.ClientClaims)) string {
	c := auth.ClientClaims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer:    auth.DefaultIssuer,
		Audience:  jwt.ClaimStrings{"gitlab-kas"},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(10 * time.Minute)),
		IssuedAt:  jwt.NewNumericDate(time.Now()),
	}, Agents: []string{auth.AnyAgent}}
	for _, m := range mod {
		m(&c)
	}
	tok, err := auth.Mint(e.secret, c)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) url(path string) string { return e.api.URL + path }

// do makes an authenticated request.
func (e *env) do(method, path string, body io.Reader, hdr ...string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url(path), body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token())
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// counter returns the value of a counter or gauge with the given labels from the registry.
func counter(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}
