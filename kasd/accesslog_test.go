package kasd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/kasd"
	"github.com/qkas/qkas/quic"
	"github.com/qkas/qkas/registry"
)

// logSink collects JSON log lines; safe for concurrent writers.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String is what was logged.
func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// access returns the access-log lines by request id.
func (l *logSink) access(t *testing.T) map[string][]map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]map[string]any{}
	for _, line := range strings.Split(l.buf.String(), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["message"] == "access" {
			id, _ := m["request_id"].(string)
			out[id] = append(out[id], m)
		}
	}
	return out
}

func (l *logSink) logger() *zerolog.Logger {
	lg := zerolog.New(l).Level(zerolog.InfoLevel)
	return &lg
}

// startLoggedNode is fleetEnv.startNode with the node's log written to sink and cfg modified.
func (f *fleetEnv) startLoggedNode(id string, sink *logSink, mod func(*kasd.Config)) *node {
	t := f.t
	cert, _, err := quic.DevCertificate(f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{id: id, promReg: prometheus.NewRegistry()}
	if nd.agentLn, err = quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNAgent), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.peerLn, err = quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, api.ALPNPeer), quic.Config{}); err != nil {
		t.Fatal(err)
	}
	if nd.etcd, err = registry.NewClient(registry.ClientConfig{Endpoints: f.etcd.Endpoints()}); err != nil {
		t.Fatal(err)
	}
	nop := zerolog.Nop()
	nd.reg, err = registry.New(nd.etcd, registry.Config{TTL: f.ttl}, registry.Instance{ID: id, PeerAddr: nd.peerLn.Addr().String()}, nop, nd.promReg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kasd.Config{
		InstanceID:   id,
		AgentAuth:    kasd.TokenFileAuth{Store: f.store},
		ClientAuth:   &auth.Verifier{Key: f.secret},
		RouteTimeout: 3 * time.Second,
		Fleet:        &kasd.FleetConfig{Registry: nd.reg, PeerSecret: f.peerKey},
		Log:          sink.logger(),
		Registerer:   nd.promReg,
	}
	if mod != nil {
		mod(&cfg)
	}
	if nd.srv, err = kasd.New(cfg); err != nil {
		t.Fatal(err)
	}
	nd.wg.Go(func() { _ = nd.srv.ServeAgents(context.Background(), nd.agentLn) })
	nd.wg.Go(func() { _ = nd.srv.ServePeers(context.Background(), nd.peerLn) })
	nd.api = httptest.NewServer(nd.srv.Handler())
	f.nodes = append(f.nodes, nd)
	return nd
}

// startLoggedAgent runs agentd for id connected to nd only, serving "web" at svcURL, its log
// written to sink.
func (f *fleetEnv) startLoggedAgent(id string, nd *node, svcURL string, sink *logSink, al agentd.AccessLogConfig) {
	t := f.t
	tlsConf, err := quic.ClientTLSConfig(f.caFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(svcURL)
	a, err := agentd.New(agentd.Config{
		KasAddresses: []string{nd.agentLn.Addr().String()}, Token: f.tokens[id], TLS: tlsConf,
		Services:  map[string]*url.URL{"web": u},
		Backoff:   quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		Log:       sink.logger(),
		AccessLog: al,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitConnected(t, a, 1)
}

// TestAccessLogAcrossHops: a request entering at kas-a for an agent held by kas-b is logged at
// kas-a, at kas-b and at agentd with one request id, the client's X-Request-Id, which the
// service and the client both see; each line has its fields.
func TestAccessLogAcrossHops(t *testing.T) {
	f := newFleetEnv(t, 0)
	var logA, logB, logAgent logSink
	a := f.startLoggedNode("kas-a", &logA, nil)
	b := f.startLoggedNode("kas-b", &logB, nil)
	var seenID, seenPrefix string
	var svcMu sync.Mutex
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svcMu.Lock()
		seenID, seenPrefix = r.Header.Get("X-Request-Id"), r.Header.Get("X-Forwarded-Prefix")
		svcMu.Unlock()
		w.Header().Set("X-Request-Id", "forged-by-service")
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello")
	}))
	defer svc.Close()
	f.startLoggedAgent("alpha", b, svc.URL, &logAgent, agentd.AccessLogConfig{})
	f.waitHolders("alpha", "kas-b")

	tok := mint(t, f.secret, func(c *auth.ClientClaims) {
		c.Subject = "ci-bot"
		c.Impersonate = &auth.Impersonation{User: "alice", Groups: []string{"dev"}}
	})
	const id = "3f2a9c4e-0000-4b1d-9e2f-client-chosen"
	req, _ := http.NewRequest("POST", a.api.URL+"/api/v1/agents/alpha/proxy/web/some/path?secret=1", strings.NewReader("0123456789"))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("X-Request-Id", id)
	req.Header.Set("X-Forwarded-Prefix", "/evil")
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != id {
		t.Errorf("client got X-Request-Id %q, want [%q]", got, id)
	}
	if got := resp.Header.Get("Qkas-Request-Id"); got != id {
		t.Errorf("client got Qkas-Request-Id %q, want %q", got, id)
	}
	svcMu.Lock()
	if seenID != id || seenPrefix != "/api/v1/agents/alpha/proxy/web" {
		t.Errorf("service saw X-Request-Id %q, X-Forwarded-Prefix %q", seenID, seenPrefix)
	}
	svcMu.Unlock()

	var la, lb, lg map[string]any
	waitFor(t, "three access lines", func() bool {
		ea, eb, eg := logA.access(t)[id], logB.access(t)[id], logAgent.access(t)[id]
		if len(ea) == 1 && len(eb) == 1 && len(eg) == 1 {
			la, lb, lg = ea[0], eb[0], eg[0]
			return true
		}
		return false
	})
	want := func(where string, m map[string]any, fields map[string]any) {
		t.Helper()
		for k, v := range fields {
			if v == nil {
				if _, ok := m[k]; !ok {
					t.Errorf("%s: no %s in %v", where, k, m)
				}
				continue
			}
			if fmt.Sprint(m[k]) != fmt.Sprint(v) {
				t.Errorf("%s: %s = %v, want %v (line %v)", where, k, m[k], v, m)
			}
		}
	}
	want("entry kasd", la, map[string]any{
		"level": "info", "agent_id": "alpha", "service": "web", "method": "POST",
		"path": "/api/v1/agents/alpha/proxy/web/some/path", "status": 200, "bytes_in": 10,
		"bytes_out": 5, "route": "forwarded", "peer": "kas-b", "caller": "ci-bot", "impersonate": "alice",
		"duration": nil, "instance": "kas-a",
	})
	if _, ok := la["code"]; ok {
		t.Errorf("entry kasd: a code on a success: %v", la)
	}
	want("holding kasd", lb, map[string]any{
		"agent_id": "alpha", "service": "web", "method": "POST", "path": "/some/path",
		"route": "holder", "origin": "kas-a", "caller": "ci-bot", "impersonate": "alice", "bytes_in": nil,
		"bytes_out": nil, "duration": nil, "instance": "kas-b",
	})
	want("agentd", lg, map[string]any{
		"service": "web", "method": "POST", "path": "/some/path", "status": 200,
		"bytes_in": 10, "bytes_out": 5, "caller": "ci-bot", "impersonate": "alice", "duration": nil,
	})
	for _, m := range []map[string]any{la, lb, lg} {
		for _, v := range m {
			if s, ok := v.(string); ok && strings.Contains(s, "secret=1") {
				t.Errorf("the query was logged: %v", m)
			}
		}
	}
}

// mint signs a client JWT for agent alpha with the fleet's secret.
func mint(t *testing.T, secret []byte, mod func(*auth.ClientClaims)) string {
	c := auth.ClientClaims{Agents: []string{"alpha"}}
	c.Issuer = auth.DefaultIssuer
	c.Audience = []string{"gitlab-kas"}
	c.ExpiresAt = jwtTime(time.Now().Add(time.Minute))
	if mod != nil {
		mod(&c)
	}
	tok, err := auth.Mint(secret, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestAccessLogSampling: with the same rate everywhere, every hop logs the same requests (the
// decision hashes the request id alike in kasd and agentd); errors are always logged; with the
// log off nothing is.
func TestAccessLogSampling(t *testing.T) {
	f := newFleetEnv(t, 0)
	var logA, logB, logAgent logSink
	half := func(c *kasd.Config) { c.AccessLog = kasd.AccessLogConfig{Sample: 0.5} }
	a := f.startLoggedNode("kas-a", &logA, half)
	b := f.startLoggedNode("kas-b", &logB, half)
	svc := namedService(t, "web")
	f.startLoggedAgent("alpha", b, svc.URL, &logAgent, agentd.AccessLogConfig{Sample: 0.5})
	f.waitHolders("alpha", "kas-b")
	const n = 60
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("sample-%d", i)
		req, _ := http.NewRequest("GET", a.api.URL+"/api/v1/agents/alpha/proxy/web/x", nil)
		req.Header.Set("Authorization", "Bearer "+mint(t, f.secret, nil))
		req.Header.Set("X-Request-Id", ids[i])
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// An error: the service is unknown at the holder (kasd does not know the services of an
	// agent held by a peer), always logged at both kasd.
	req, _ := http.NewRequest("GET", a.api.URL+"/api/v1/agents/alpha/proxy/nope/x", nil)
	req.Header.Set("Authorization", "Bearer "+mint(t, f.secret, nil))
	req.Header.Set("X-Request-Id", "the-error")
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("unknown service: status %d", resp.StatusCode)
	}
	waitFor(t, "the error's lines", func() bool {
		return len(logA.access(t)["the-error"]) == 1 && len(logB.access(t)["the-error"]) == 1
	})
	if l := logA.access(t)["the-error"][0]; l["code"] != "service_unknown" || fmt.Sprint(l["status"]) != "404" {
		t.Errorf("error line: %v", l)
	}
	// A line is written when its request ended at that hop, which may be after the client had
	// its response: wait for the hops to agree, then check.
	agree := func() (la, lb, lg map[string][]map[string]any, ok bool) {
		la, lb, lg = logA.access(t), logB.access(t), logAgent.access(t)
		for _, id := range ids {
			inA, inB, inG := len(la[id]) == 1, served(lb[id]), len(lg[id]) >= 1
			if inA != inB || inA != inG {
				return la, lb, lg, false
			}
		}
		return la, lb, lg, true
	}
	deadline := time.Now().Add(5 * time.Second)
	la, lb, lg, ok := agree()
	for ; !ok && time.Now().Before(deadline); la, lb, lg, ok = agree() {
		time.Sleep(20 * time.Millisecond)
	}
	logged := 0
	for _, id := range ids {
		inA, inB, inG := len(la[id]) == 1, served(lb[id]), len(lg[id]) >= 1
		if inA != inB || inA != inG {
			t.Errorf("request %s: logged at entry %v, holder %v, agentd %v: %v %v %v", id, inA, inB, inG, la[id], lb[id], lg[id])
		}
		if inA {
			logged++
		}
	}
	if logged == 0 || logged == n {
		t.Errorf("sampling at 0.5 logged %d of %d requests", logged, n)
	}
}

// served reports whether one of a holder's lines is the request served (a holder may also have
// refused an attempt that the entry kasd then sent again: that line has a code; and the agent
// may then have served both, which its lines show).
func served(lines []map[string]any) bool {
	n := 0
	for _, l := range lines {
		if _, ok := l["code"]; !ok {
			n++
		}
	}
	return n == 1
}

// TestRequestIDFromClient: a well-formed X-Request-Id is the request's id; a malformed one is
// replaced by one kasd makes, and counted.
func TestRequestIDFromClient(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var seen []string
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, strings.Join(r.Header.Values("X-Request-Id"), ","))
		mu.Unlock()
	}))
	defer svc.Close()
	waitConnected(t, e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}), 1)
	for _, tc := range []struct {
		in   string
		keep bool
	}{
		{"abc-123_X.y:z", true},
		{strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), false},
		{"has space", false},
		{"quote\"d", false},
		{"üñí", false},
	} {
		resp := e.do("GET", "/api/v1/agents/alpha/proxy/web/", nil, "X-Request-Id", tc.in)
		readAll(t, resp)
		got := resp.Header.Get("X-Request-Id")
		if tc.keep && got != tc.in || !tc.keep && (got == tc.in || got == "" || !strings.HasPrefix(got, "kas-test-")) {
			t.Errorf("X-Request-Id %q: client got %q", tc.in, got)
		}
		mu.Lock()
		last := seen[len(seen)-1]
		mu.Unlock()
		if last != got {
			t.Errorf("X-Request-Id %q: service saw %q, client %q", tc.in, last, got)
		}
	}
	if n := counter(t, e.reg, "kasd_header_rejections_total", map[string]string{"reason": "request_id_invalid"}); n != 4 {
		t.Errorf("request_id_invalid counted %v, want 4", n)
	}
	// Without one, kasd makes one, also on errors answered before routing.
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/"), nil)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if resp.StatusCode != 401 || resp.Header.Get("X-Request-Id") == "" {
		t.Errorf("unauthenticated: status %d, X-Request-Id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
}

// TestProfileAccessLog is TestProfileLocalRoute with the access log written (as JSON, to
// io.Discard) when QKAS_PROFILE_ACCESS names the profile's output file (the time per request
// goes to that name plus .txt; run without -v): the per-request cost of the log line, against
// the same run with QKAS_PROFILE_ACCESS_OFF=1.
func TestProfileAccessLog(t *testing.T) {
	out := os.Getenv("QKAS_PROFILE_ACCESS")
	if out == "" {
		t.Skip("set QKAS_PROFILE_ACCESS=file to profile")
	}
	off := os.Getenv("QKAS_PROFILE_ACCESS_OFF") != "" // the same run without the access log
	e := newEnv(t, func(c *kasd.Config) {
		l := zerolog.New(io.Discard).Level(zerolog.InfoLevel)
		c.Log = &l
		c.AccessLog.Off = off
	})
	body := strings.Repeat("x", 1024)
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer svc.Close()
	a := e.startAgent("alpha", "pod-1", map[string]string{"web": svc.URL}, func(c *agentd.Config) {
		l := zerolog.New(io.Discard).Level(zerolog.InfoLevel)
		c.Log = &l
		c.AccessLog.Off = off
	})
	waitConnected(t, a, 1)
	tok := e.token()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	get := func() {
		req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/web/small"), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for range 500 {
		get()
	}
	f, _ := os.Create(out)
	defer f.Close()
	pprof.StartCPUProfile(f)
	start := time.Now()
	const n = 5000
	for range n {
		get()
	}
	pprof.StopCPUProfile()
	// Not printed: without -v (with -v, newEnv logs to the test's output instead), go test
	// shows nothing of a passing test.
	_ = os.WriteFile(out+".txt", fmt.Appendf(nil, "%d requests, %v each\n", n, time.Since(start)/n), 0o644)
}
