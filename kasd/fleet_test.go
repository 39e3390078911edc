package kasd_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/tracing"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// fleetEnv is several kasd on one real embedded etcd, each with its own registry, agent and
// peer listeners and API server. Agents verify every kasd with one shared development CA.
type fleetEnv struct {
	t       *testing.T
	dir     string
	ttl     time.Duration
	etcd    *registry.Embedded
	secret  []byte // client JWT key
	peerKey []byte
	tokens  map[string]string
	store   *auth.TokenStore
	caFile  string
	nodes   []*node
	client  *http.Client
	tracers map[string]*tracing.Tracer // by node id, for nodes started after it is set (tracing_test.go)
	config  func(*kasd.Config)         // if set, adjusts the config of nodes started after it is set
	// agentConfig, if set, adjusts the config of agents started after it is set.
	agentConfig func(*agentd.Config)
}

type node struct {
	id      string
	srv     *kasd.Server
	reg     *registry.Registry
	promReg *prometheus.Registry
	etcd    *clientv3.Client
	agentLn *quic.Listener
	peerLn  *quic.Listener
	api     *httptest.Server
	wg      sync.WaitGroup
	stopped bool
}

func newFleetEnv(t *testing.T, n int) *fleetEnv {
	t.Helper()
	f := &fleetEnv{
		t: t, dir: t.TempDir(), ttl: 2 * time.Second,
		secret:  []byte("0123456789abcdef0123456789abcdef-fleet"),
		peerKey: []byte("peer-secret-peer-secret-peer-secret!"),
		tokens:  map[string]string{},
		client:  &http.Client{Timeout: 30 * time.Second},
	}
	var entries string
	for _, id := range []string{"alpha", "beta", "gamma"} {
		tok := auth.NewAgentToken()
		f.tokens[id] = tok
		entries += "- id: " + id + "\n  token_sha256: " + auth.TokenSHA256(tok) + "\n"
	}
	var err error
	if f.store, err = auth.ParseTokens([]byte("agents:\n" + entries)); err != nil {
		t.Fatal(err)
	}
	if _, f.caFile, err = quic.DevCertificate(f.dir, nil); err != nil {
		t.Fatal(err)
	}
	f.etcd, err = registry.StartEmbedded(registry.EmbeddedConfig{Dir: f.dir + "/etcd", ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.client.CloseIdleConnections()
		for _, nd := range f.nodes {
			f.kill(nd)
		}
		f.etcd.Close()
	})
	for i := range n {
		f.nodes = append(f.nodes, f.startNode(fmt.Sprintf("kas-%d", i)))
	}
	return f
}

func (f *fleetEnv) startNode(id string) *node {
	return f.startNodeAt(id, "127.0.0.1:0", "127.0.0.1:0", nil)
}

// startNodeAt is startNode on given agent and peer addresses ("127.0.0.1:0" for new ones), so
// that a node can come back where its agents and peers look for it, with tune (if not nil)
// applied to its fleet configuration.
func (f *fleetEnv) startNodeAt(id, agentAddr, peerAddr string, tune func(*kasd.FleetConfig)) *node {
	t := f.t
	cert, _, err := quic.DevCertificate(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{id: id, promReg: prometheus.NewRegistry()}
	if nd.agentLn, err = quic.Listen(agentAddr, quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.peerLn, err = quic.Listen(peerAddr, quic.ServerTLSConfig(cert, api.ALPNPeer), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.etcd, err = registry.NewClient(registry.ClientConfig{Endpoints: f.etcd.Endpoints()}); err != nil {
		t.Fatal(err)
	}
	log := zerolog.Nop()
	if testing.Verbose() {
		log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Str("node", id).Logger()
	}
	nd.reg, err = registry.New(nd.etcd, registry.Config{TTL: f.ttl}, registry.Instance{ID: id, PeerAddr: nd.peerLn.Addr().String()}, log, nd.promReg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kasd.Config{
		InstanceID:   id,
		AgentAuth:    kasd.TokenFileAuth{Store: f.store},
		ClientAuth:   &auth.Verifier{Key: f.secret, AllowAnyAgent: true},
		RouteTimeout: 3 * time.Second,
		Fleet:        &kasd.FleetConfig{Registry: nd.reg, PeerSecret: f.peerKey},
		Log:          &log,
		Registerer:   nd.promReg,
		Tracer:       f.tracers[id],
	}
	if tune != nil {
		tune(cfg.Fleet)
	}
	if f.config != nil {
		f.config(&cfg)
	}
	nd.srv, err = kasd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nd.wg.Go(func() { _ = nd.srv.ServeAgents(context.Background(), nd.agentLn) })
	nd.wg.Go(func() { _ = nd.srv.ServePeers(context.Background(), nd.peerLn) })
	nd.api = httptest.NewServer(nd.srv.Handler())
	return nd
}

// kill stops a node abruptly, as a crash would: no GoAway, no drain, its lease left to expire.
func (f *fleetEnv) kill(nd *node) {
	if nd.stopped {
		return
	}
	nd.stopped = true
	nd.api.CloseClientConnections()
	nd.api.Close()
	nd.agentLn.Close()
	nd.peerLn.Close()
	nd.srv.Close()
	nd.wg.Wait()
	nd.reg.Close()
	nd.etcd.Close()
}

// drain stops a node the way SIGTERM does: GoAway, in-flight requests finish, keys deleted.
func (f *fleetEnv) drain(nd *node) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nd.stopped = true
	_ = nd.srv.Shutdown(ctx)
	nd.agentLn.Close()
	nd.peerLn.Close()
	nd.wg.Wait()
	_ = nd.reg.Shutdown(ctx)
	nd.api.Close()
	nd.etcd.Close()
}

func (f *fleetEnv) startAgent(id, replica string, svcURL string, nodes []*node, conns int) *agentd.Agent {
	t := f.t
	tlsConf, err := quic.ClientTLSConfig(f.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(svcURL)
	var addrs []string
	for _, nd := range nodes {
		addrs = append(addrs, nd.agentLn.Addr().String())
	}
	cfg := agentd.Config{
		KasAddresses: addrs, Token: f.tokens[id], TLS: tlsConf, Replica: replica,
		Services: map[string]*url.URL{"web": u}, Connections: conns,
		QUIC:         quic.Config{KeepAlivePeriod: 200 * time.Millisecond, MaxIdleTimeout: time.Second},
		Backoff:      quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		DrainTimeout: 5 * time.Second,
	}
	if f.agentConfig != nil {
		f.agentConfig(&cfg)
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

// token mints a client JWT valid for a minute for any agent.
func (f *fleetEnv) token() string {
	c := auth.ClientClaims{Agents: []string{auth.AnyAgent}}
	c.Issuer = auth.DefaultIssuer
	c.Audience = []string{"gitlab-kas"}
	c.ExpiresAt = jwtTime(time.Now().Add(time.Minute))
	tok, err := auth.Mint(f.secret, c)
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

func (f *fleetEnv) get(nd *node, agent, path string) (int, string) {
	return f.do(nd, "GET", agent, path, nil)
}

func (f *fleetEnv) do(nd *node, method, agent, path string, body io.Reader) (int, string) {
	req, _ := http.NewRequest(method, nd.api.URL+"/api/v1/agents/"+agent+"/proxy/web"+path, body)
	tok := f.token()
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// warmLinks sends GETs for agent through nd until n in a row succeed, so that nd's peer links
// to the agent's holders (dialled on first use, round robin) are up before a test's load: a
// peer handshake under -race on a loaded machine can outlast its 1 s timeout, and a link that
// failed is skipped for the peer retry delay, which is the whole of a short test's window.
func (f *fleetEnv) warmLinks(nd *node, agent string, n int) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for ok := 0; ok < n; {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: no %d GETs in a row to %s succeeded within 30s", nd.id, n, agent)
		}
		if code, _ := f.get(nd, agent, "/"); code == http.StatusOK {
			ok++
		} else {
			ok = 0
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// waitHolders waits until every live node's registry view agrees that agent is held by
// exactly the given instances.
func (f *fleetEnv) waitHolders(agent string, want ...string) {
	f.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok := true
		for _, nd := range f.nodes {
			if nd.stopped {
				continue
			}
			var got []string
			for _, h := range nd.reg.Holders(agent) {
				got = append(got, h.Instance.ID)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("registry views did not converge on holders %v of %s", want, agent)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func namedService(t *testing.T, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := r.URL.Query().Get("sleep"); d != "" {
			dur, _ := time.ParseDuration(d)
			select {
			case <-time.After(dur):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestFleetEveryKasdReachesEveryAgent(t *testing.T) {
	f := newFleetEnv(t, 3)
	for i, id := range []string{"alpha", "beta", "gamma"} {
		svc := namedService(t, id)
		f.startAgent(id, id+"-pod", svc.URL, f.nodes[i:i+1], 1)
		f.waitHolders(id, f.nodes[i].id)
	}
	for _, nd := range f.nodes {
		for _, id := range []string{"alpha", "beta", "gamma"} {
			code, body := f.get(nd, id, "/x")
			if code != 200 || body != id+" /x" {
				t.Errorf("via %s to %s: %d %q", nd.id, id, code, body)
			}
		}
	}
	// Each node served its own agent locally and forwarded to the other two.
	for i, nd := range f.nodes {
		local := counter(t, nd.promReg, "kasd_requests_total", map[string]string{"route": "local", "code": "200"})
		fwd := counter(t, nd.promReg, "kasd_requests_total", map[string]string{"route": "forwarded", "code": "200"})
		in := counter(t, nd.promReg, "kasd_forwarded_in_total", map[string]string{"result": "ok"})
		if local != 1 || fwd != 2 || in != 2 {
			t.Errorf("node %d: local=%v forwarded=%v forwarded_in=%v, want 1, 2, 2", i, local, fwd, in)
		}
	}
	if n := counter(t, f.nodes[0].promReg, "kasd_forwarded_requests_total", map[string]string{"peer": "kas-1", "result": "ok"}); n != 1 {
		t.Errorf("kas-0 forwarded %v requests to kas-1, want 1 (by peer and result)", n)
	}
	// The agent list on any kasd shows the whole fleet.
	req, _ := http.NewRequest("GET", f.nodes[0].api.URL+"/api/v1/agents", nil)
	tok := f.token()
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	for _, want := range []string{`"id":"beta","instances":[{"id":"kas-1"`, `"id":"gamma","instances":[{"id":"kas-2"`} {
		if !strings.Contains(body, want) {
			t.Errorf("fleet list lacks %s: %s", want, body)
		}
	}
}

func TestFleetStaleEntryTriesNextHolder(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := namedService(t, "alpha")
	f.startAgent("alpha", "pod", svc.URL, f.nodes[2:3], 1)
	// kas-1 claims alpha without holding it: a stale entry.
	f.nodes[1].reg.SetAgentConnections("alpha", 1)
	f.waitHolders("alpha", "kas-1", "kas-2")
	for range 4 {
		if code, body := f.get(f.nodes[0], "alpha", "/"); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
	}
	if n := counter(t, f.nodes[1].promReg, "kasd_forwarded_in_total", map[string]string{"result": "not_holder"}); n < 1 {
		t.Errorf("the stale holder refused %v requests, want >= 1 (rotation should have tried it)", n)
	}
}

func TestFleetKillKasd(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := namedService(t, "alpha")
	// The agent may connect to kas-0 or kas-1, one connection: kill whichever it holds.
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:2], 1)
	waitConnected(t, a, 1)
	holder := a.Instances()[0]
	var victim *node
	for _, nd := range f.nodes[:2] {
		if nd.id == holder {
			victim = nd
		}
	}
	f.waitHolders("alpha", victim.id)

	// Requests in flight through kas-2 -> victim when the victim dies: a GET, whose stream
	// failed before any response byte, is retried once and succeeds on the agent's new holder;
	// a POST, which may have been executed, fails with a clear 502 naming the peer, not a hang.
	getResult := make(chan string, 1)
	postResult := make(chan string, 1)
	go func() {
		code, body := f.get(f.nodes[2], "alpha", "/slow?sleep=2s")
		getResult <- fmt.Sprintf("%d %s", code, body)
	}()
	go func() {
		code, body := f.do(f.nodes[2], "POST", "alpha", "/slow?sleep=2s", strings.NewReader("payload"))
		postResult <- fmt.Sprintf("%d %s", code, body)
	}()
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	f.kill(victim)
	for name, ch := range map[string]chan string{"GET": getResult, "POST": postResult} {
		select {
		case r := <-ch:
			want := "200 alpha /slow"
			if name == "POST" {
				want = "502 "
			}
			if !strings.HasPrefix(r, want) || name == "POST" && !strings.Contains(r, "agent_failed") {
				t.Errorf("in-flight %s through the dead kasd: %s", name, r)
			}
		case <-time.After(12 * time.Second):
			t.Fatalf("in-flight %s hung after its kasd died", name)
		}
	}
	// The agent reconnects to the other kasd; requests through kas-2 succeed again.
	for {
		code, _ := f.get(f.nodes[2], "alpha", "/again")
		if code == 200 {
			break
		}
		if time.Since(killed) > 15*time.Second {
			t.Fatalf("no recovery after kill: %d", code)
		}
	}
	t.Logf("recovered %v after kill -9", time.Since(killed).Round(time.Millisecond))
	// The dead kasd's entries expire with its lease.
	var survivor string
	for _, nd := range f.nodes[:2] {
		if nd != victim {
			survivor = nd.id
		}
	}
	f.waitHolders("alpha", survivor)
}

func TestFleetDrainLosesNoRequest(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := namedService(t, "alpha")
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:2], 2)
	waitConnected(t, a, 2)
	f.waitHolders("alpha", "kas-0", "kas-1")

	var ok, failed atomic.Int64
	var lastFail atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if code, body := f.get(f.nodes[2], "alpha", "/"); code == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					lastFail.Store(fmt.Sprintf("%d %s", code, body))
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	f.drain(f.nodes[0])
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during a drain; last: %v", failed.Load(), ok.Load()+failed.Load(), lastFail.Load())
	}
	if ok.Load() < 10 {
		t.Errorf("only %d requests made", ok.Load())
	}
	f.waitHolders("alpha", "kas-1")
}

func TestFleetPeerAuthRequired(t *testing.T) {
	f := newFleetEnv(t, 2)
	svc := namedService(t, "alpha")
	f.startAgent("alpha", "pod", svc.URL, f.nodes[1:2], 1)
	f.waitHolders("alpha", "kas-1")
	// A replica with another peer secret is refused by kas-1, so it cannot forward.
	f.peerKey = []byte("another-peer-secret-another-peer-secret")
	intruder := f.startNode("kas-x")
	f.nodes = append(f.nodes, intruder)
	deadline := time.Now().Add(10 * time.Second)
	for len(intruder.reg.Holders("alpha")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("intruder's registry view never saw alpha")
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, body := f.get(intruder, "alpha", "/")
	if code == 200 {
		t.Fatalf("a kasd with the wrong peer secret reached the agent: %s", body)
	}
	if n := counter(t, f.nodes[1].promReg, "kasd_peer_connections_total", map[string]string{"result": "refused"}); n < 1 {
		t.Errorf("kas-1 refused %v peer connections, want >= 1", n)
	}
}

// TestFleetFailoverTwoConnections is the deployed configuration: the agent holds connections to
// two kasd, requests come through a third, and one holder dies. Requests through the third kasd
// must keep succeeding after at most a peer idle timeout; the requests that fail fail with a
// clean 502, never a hang.
func TestFleetFailoverTwoConnections(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := namedService(t, "alpha")
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:2], 2)
	waitConnected(t, a, 2)
	f.waitHolders("alpha", "kas-0", "kas-1")
	for range 4 { // warm both peer links
		if code, body := f.get(f.nodes[2], "alpha", "/"); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
	}
	killed := time.Now()
	f.kill(f.nodes[0])
	var lastFailure time.Duration
	var failures []string
	for time.Since(killed) < 4*time.Second {
		start := time.Now()
		code, body := f.get(f.nodes[2], "alpha", "/")
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("a request took %v", took)
		}
		if code != 200 {
			lastFailure = time.Since(killed)
			failures = append(failures, fmt.Sprintf("%d %s", code, body))
			if code != http.StatusBadGateway {
				t.Errorf("failure during failover is not a 502: %d %s", code, body)
			}
		}
	}
	t.Logf("%d failed requests, the last ending %v after the kill", len(failures), lastFailure.Round(time.Millisecond))
	if lastFailure > 3*time.Second {
		t.Errorf("requests still failing %v after the kill: %v", lastFailure, failures)
	}
}

// A request with a body that first meets a stale holder is retried on the next one with its
// body intact: the stale holder refuses before the body is read.
func TestFleetStaleEntryRetriesPOSTWithBody(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	}))
	t.Cleanup(svc.Close)
	f.startAgent("alpha", "pod", svc.URL, f.nodes[2:3], 1)
	f.nodes[1].reg.SetAgentConnections("alpha", 1) // kas-1 claims alpha without holding it
	f.waitHolders("alpha", "kas-1", "kas-2")
	tok := f.token()
	const size = 100 << 10
	for i := range 6 {
		req, _ := http.NewRequest("POST", f.nodes[0].api.URL+"/api/v1/agents/alpha/proxy/web/up", strings.NewReader(strings.Repeat("x", size)))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp); resp.StatusCode != 200 || body != fmt.Sprint(size) {
			t.Fatalf("POST %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if n := counter(t, f.nodes[1].promReg, "kasd_forwarded_in_total", map[string]string{"result": "not_holder"}); n < 1 {
		t.Errorf("the stale holder refused %v requests, want >= 1", n)
	}
}

// TestFleetDrainUnderLoad: 120 clients send GETs and POSTs (bodies checked) through the two
// other kasd while the agent's holder drains; requests in flight there (50 ms each) finish and
// new ones go to the agent's other connection. None may fail.
func TestFleetDrainUnderLoad(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %x", r.Method, len(b), sha256.Sum256(b))
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:2], 2)
	waitConnected(t, a, 2)
	f.waitHolders("alpha", "kas-0", "kas-1")
	f.warmLinks(f.nodes[1], "alpha", 4)
	f.warmLinks(f.nodes[2], "alpha", 4)

	var ok, failed atomic.Int64
	var lastFail atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 120 {
		wg.Go(func() {
			nd := f.nodes[1+i%2]
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				method, body := "GET", []byte(nil)
				if (i+n)%2 == 1 {
					method, body = "POST", bytes.Repeat([]byte{byte(i)}, 1+(i*n*977)%20000)
				}
				want := fmt.Sprintf("%s %d %x", method, len(body), sha256.Sum256(body))
				code, got := f.do(nd, method, "alpha", "/", bytes.NewReader(body))
				if code == 200 && got == want {
					ok.Add(1)
				} else {
					failed.Add(1)
					lastFail.Store(fmt.Sprintf("%s via %s: %d %s", method, nd.id, code, got))
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	f.drain(f.nodes[0])
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during a drain under load; last: %v", failed.Load(), ok.Load()+failed.Load(), lastFail.Load())
	}
	if ok.Load() < 200 {
		t.Errorf("only %d requests made", ok.Load())
	}
}

// TestFleetDrainWaitsForOriginsToCloseLinks: kas-0, the agent's only holder, drains while
// responses streamed from the agent are forwarded to clients of kas-1, and served to clients of
// kas-0 itself. The end of a response kas-0 sent may still be in flight when its last request
// ends there, so kas-0 does not close the peer connection itself: kas-1 closes its link once
// every response on it has arrived (kasd_peer_links_drained_total), before kas-0's drain
// returns, and no link is lost.
//
// The responses outlast the agent's DrainTimeout (as a long download does on a loaded machine):
// the service sends half, waits until the agent got kas-0's GoAway and its drain timeout has
// passed twice over, then sends the rest. A draining kasd bounds its requests by its own grace
// and closes the connection itself, so the agent lets them run to their end; it used to close
// the connection after its DrainTimeout, and every client got a 200 with a truncated body.
func TestFleetDrainWaitsForOriginsToCloseLinks(t *testing.T) {
	f := newFleetEnv(t, 2)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB
	const chunks, clients = 48, 8
	const agentDrain = 300 * time.Millisecond
	agentReg := prometheus.NewRegistry()
	started := make(chan struct{}, clients)
	resume := make(chan struct{})
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			fmt.Fprint(w, "ok")
			return
		}
		started <- struct{}{}
		for i := range chunks {
			if i == chunks/2 {
				<-resume
			}
			_, _ = w.Write(chunk)
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
	}))
	t.Cleanup(svc.Close)
	f.agentConfig = func(c *agentd.Config) { c.DrainTimeout, c.Registerer = agentDrain, agentReg }
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:1], 1)
	f.agentConfig = nil
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	f.warmLinks(f.nodes[1], "alpha", 2)

	want := bytes.Repeat(chunk, chunks)
	var wg sync.WaitGroup
	errs := make(chan string, clients)
	for i := range clients {
		nd := f.nodes[1-i%2] // half forwarded from kas-1, half local to kas-0
		wg.Go(func() {
			if code, got := f.get(nd, "alpha", "/stream"); code != http.StatusOK || got != string(want) {
				errs <- fmt.Sprintf("client of %s: %d, %d of %d bytes", nd.id, code, len(got), len(want))
			}
		})
	}
	for range clients { // every response is under way before the drain
		<-started
	}
	wg.Go(func() {
		defer close(resume)
		deadline := time.Now().Add(30 * time.Second)
		for metricValue(t, agentReg, "agentd_goaways_total", "", "") < 1 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(2 * (agentDrain + time.Second)) // past the agent's DrainTimeout (and its GoAway linger)
	})
	f.drain(f.nodes[0])
	// The origin closed its link before the holder's drain returned.
	if n := metricValue(t, f.nodes[1].promReg, "kasd_peer_links_drained_total", "", ""); n != 1 {
		t.Errorf("kas-1 closed %v drained links by the end of kas-0's drain, want 1", n)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("streamed response through the drain: %s", e)
	}
	if n := metricValue(t, f.nodes[1].promReg, "kasd_peer_link_losses_total", "", ""); n != 0 {
		t.Errorf("kas-1 lost %v peer links; the draining peer should leave the close to it", n)
	}
}

// TestFleetDrainWaitsForSlowClientOfPeer: kas-0, the agent's only holder, drains while a client
// of kas-1 reads a forwarded response slowly (its socket buffer small), and pauses once kas-0
// has sent it all. kas-0's side of the request has then ended, and the end of the response
// waits, unread, in kas-1's receive buffer; closing the peer connection would discard it.
// kas-0 waits, within its grace, for kas-1 to close the link once the client has read it all:
// it used to close it 2 s after its last request ended, and the client's response was cut.
func TestFleetDrainWaitsForSlowClientOfPeer(t *testing.T) {
	f := newFleetEnv(t, 2)
	body := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/big" {
			fmt.Fprint(w, "ok")
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:1], 1)
	waitConnected(t, a, 1)
	f.waitHolders("alpha", "kas-0")
	f.warmLinks(f.nodes[1], "alpha", 2)

	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}
	tr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequest("GET", f.nodes[1].api.URL+"/api/v1/agents/alpha/proxy/web/big", nil)
	req.Header.Set("Authorization", "Bearer "+f.token())
	resp, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() { defer close(drained); f.drain(f.nodes[0]) }()
	// Read slowly until kas-0 has sent the whole response (its request ended there), then
	// pause longer than the 2 s that kas-0 used to give kas-1 to close the link.
	got := len(first)
	buf := make([]byte, 16<<10)
	for metricValue(t, f.nodes[0].promReg, "kasd_inflight_requests", "", "") > 0 {
		n, err := resp.Body.Read(buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	rest, err := io.ReadAll(resp.Body)
	<-drained
	if got += len(rest); err != nil || got != len(body) {
		t.Errorf("slow client of kas-1: %d of %d bytes, error %v", got, len(body), err)
	}
	if n := metricValue(t, f.nodes[1].promReg, "kasd_peer_link_losses_total", "", ""); n != 0 {
		t.Errorf("kas-1 lost %v peer links; the draining peer should leave the close to it", n)
	}
}

// TestFleetKillUnderLoad: 120 clients send GETs and POSTs (bodies checked) through kas-2 while
// kas-0, one of the agent's two holders, is killed. Only requests whose bytes were at kas-0 may
// fail: a GET is retried (nothing of it reached the client), so every GET succeeds; a POST in
// flight there may fail, with a 502 naming the peer, at most one per client.
func TestFleetKillUnderLoad(t *testing.T) {
	f := newFleetEnv(t, 3)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %x", r.Method, len(b), sha256.Sum256(b))
	}))
	t.Cleanup(svc.Close)
	a := f.startAgent("alpha", "pod", svc.URL, f.nodes[0:2], 2)
	waitConnected(t, a, 2)
	f.waitHolders("alpha", "kas-0", "kas-1")

	var ok, getFailed, postFailed atomic.Int64
	var lastFail atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 120 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				method, body := "GET", []byte(nil)
				if (i+n)%2 == 1 {
					method, body = "POST", bytes.Repeat([]byte{byte(n)}, 1+(i*n*131)%8000)
				}
				want := fmt.Sprintf("%s %d %x", method, len(body), sha256.Sum256(body))
				code, got := f.do(f.nodes[2], method, "alpha", "/", bytes.NewReader(body))
				switch {
				case code == 200 && got == want:
					ok.Add(1)
				case method == "POST" && code == 502 && strings.Contains(got, "agent_failed"):
					postFailed.Add(1)
				default:
					getFailed.Add(1)
					lastFail.Store(fmt.Sprintf("%s: %d %s", method, code, got))
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	f.kill(f.nodes[0])
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d ok, %d POSTs lost with kas-0", ok.Load(), postFailed.Load())
	if getFailed.Load() != 0 {
		t.Errorf("%d requests failed that may not (GETs, or not a 502 agent_failed); last: %v", getFailed.Load(), lastFail.Load())
	}
	if postFailed.Load() > 120 {
		t.Errorf("%d POSTs failed, more than were in flight", postFailed.Load())
	}
}

// GET /api/v1/agents lists every holder of every agent, also when agents held only elsewhere
// are listed too (an append used to move the list under the pointers being updated, losing
// other holders of local agents at random).
func TestFleetAgentListAllHolders(t *testing.T) {
	f := newFleetEnv(t, 2)
	svc := namedService(t, "x")
	for _, id := range []string{"alpha", "beta"} {
		a := f.startAgent(id, id+"-pod", svc.URL, f.nodes[0:2], 2)
		waitConnected(t, a, 2)
		f.waitHolders(id, "kas-0", "kas-1")
	}
	g := f.startAgent("gamma", "gamma-pod", svc.URL, f.nodes[1:2], 1)
	waitConnected(t, g, 1)
	f.waitHolders("gamma", "kas-1")
	for range 20 {
		req, _ := http.NewRequest("GET", f.nodes[0].api.URL+"/api/v1/agents", nil)
		req.Header.Set("Authorization", "Bearer "+f.token())
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Agents []kasd.AgentInfo }
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range got.Agents {
			want := 2
			if a.ID == "gamma" {
				want = 1
			}
			if len(a.Instances) != want {
				t.Fatalf("agent %s listed with instances %+v, want %d", a.ID, a.Instances, want)
			}
		}
	}
}
