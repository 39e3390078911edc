package kubernetes_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"k8s.io/client-go/rest"

	"github.com/qkas/qkas/agentd/kubernetes"
	"github.com/qkas/qkas/agentd/kubernetes/kubetest"
	"github.com/qkas/qkas/api"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// klog (imported by client-go) starts its flush daemon in init.
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		// Idle HTTP/2 and HTTP/1 client connections unwind after CloseIdleConnections.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

const saToken = "sa-token-of-the-agent"

// front serves the Service as agentd would, with req as every stream's Request frame.
type front struct {
	*httptest.Server
	svc *kubernetes.Service
	reg *prometheus.Registry
}

func newFront(t *testing.T, rc *rest.Config, policy *kubernetes.Policy, req *api.Request) *front {
	t.Helper()
	f := &front{reg: prometheus.NewRegistry()}
	var err error
	f.svc, err = kubernetes.New(kubernetes.Config{REST: rc, Policy: policy, Registerer: f.reg})
	if err != nil {
		t.Fatal(err)
	}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.svc.ServeService(w, r, req)
	}))
	t.Cleanup(func() { f.Server.Close(); f.svc.Close() })
	return f
}

func newStandin(t *testing.T) *kubetest.Server {
	st := kubetest.NewServer(saToken)
	t.Cleanup(st.Close)
	return st
}

func do(t *testing.T, method, url string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	// No Client.Timeout: it would hide a 101 response's ReadWriter body behind a wrapper.
	c := &http.Client{}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close(); c.CloseIdleConnections() })
	return resp
}

// callerHeaders are what a hostile caller might send; none may reach the API server.
var callerHeaders = []string{
	"Authorization", "Bearer the-callers-jwt",
	"Impersonate-User", "system:admin",
	"Impersonate-Group", "system:masters",
	"Impersonate-Uid", "0",
	"Impersonate-Extra-Scopes", "all",
	"X-Remote-User", "system:admin",
}

func TestCredentialsAndImpersonation(t *testing.T) {
	st := newStandin(t)
	for _, tc := range []struct {
		name       string
		meta       []api.KV
		wantUser   string
		wantGroups []string
	}{
		{name: "no claim"},
		{name: "user", meta: []api.KV{{Key: "impersonate-user", Value: "alice"}}, wantUser: "alice"},
		{name: "user and groups", meta: []api.KV{{Key: "impersonate-user", Value: "alice"}, {Key: "impersonate-group", Value: "dev"}, {Key: "impersonate-group", Value: "ops"}},
			wantUser: "alice", wantGroups: []string{"dev", "ops"}},
		{name: "groups without user", meta: []api.KV{{Key: "impersonate-group", Value: "dev"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFront(t, st.RESTConfig(), nil, &api.Request{Service: "kubernetes", Meta: tc.meta})
			resp := do(t, "GET", f.URL+"/api/v1/namespaces/default/pods", callerHeaders...)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			seen, _ := st.Last("/api/v1/namespaces/default/pods")
			if seen.Authorization != "Bearer "+saToken {
				t.Errorf("API server saw Authorization %q, want the ServiceAccount token", seen.Authorization)
			}
			if seen.ImpersonateUser != tc.wantUser || !slices.Equal(seen.ImpersonateGroups, tc.wantGroups) || len(seen.ImpersonateOther) > 0 {
				t.Errorf("API server saw impersonation user=%q groups=%q other=%q, want user=%q groups=%q",
					seen.ImpersonateUser, seen.ImpersonateGroups, seen.ImpersonateOther, tc.wantUser, tc.wantGroups)
			}
			// Ordinary requests take internal/upstream, HTTP/1.1, even to an API server that
			// offers HTTP/2 (as the stand-in does).
			if seen.Proto != "HTTP/1.1" {
				t.Errorf("proto %s, want HTTP/1.1 from internal/upstream", seen.Proto)
			}
			// Counted when ServeService returns, which may be just after the client has the body.
			waitFor(t, func() bool {
				return value(t, f.reg, "agentd_kubernetes_requests_total", map[string]string{"verb": "list", "code": "200"}) == 1
			}, "requests_total{list,200} == 1")
		})
	}
}

func TestWrongCAFails(t *testing.T) {
	st := newStandin(t)
	rc := st.RESTConfig()
	rc.CAData = kubetest.WrongCA()
	f := newFront(t, rc, nil, &api.Request{})
	resp := do(t, "GET", f.URL+"/api/v1/namespaces/default/pods")
	e := api.ReadHTTPError(resp)
	if resp.StatusCode != http.StatusBadGateway || api.CodeOf(e) != api.CodeServiceUnavailable {
		t.Fatalf("status %d, error %v; want 502 service_unavailable", resp.StatusCode, e)
	}
	if !strings.Contains(e.Error(), "certificate") {
		t.Errorf("error %q does not mention the certificate", e)
	}
	if host := strings.TrimPrefix(st.URL, "https://"); strings.Contains(e.Error(), host) || strings.Contains(e.Error(), "x509") {
		t.Errorf("error %q shows the API server's address or the TLS error text", e)
	}
	if n := len(st.Requests()); n != 0 {
		t.Errorf("API server served %d requests over an unverified connection", n)
	}
}

// TestUnreachableAPIServer: the client learns that the API server could not be reached and
// why in general terms, never its in-cluster address; the log has the full error and the
// request id.
func TestUnreachableAPIServer(t *testing.T) {
	st := newStandin(t)
	rc := st.RESTConfig()
	down := httptest.NewServer(http.NotFoundHandler())
	host := strings.TrimPrefix(down.URL, "http://")
	down.Close()
	rc.Host = "https://" + host
	var logBuf syncBuffer
	lg := zerolog.New(&logBuf)
	svc, err := kubernetes.New(kubernetes.Config{REST: rc, Registerer: prometheus.NewRegistry(), Log: &lg})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		svc.ServeService(w, r, &api.Request{Service: "kubernetes", RequestID: "req-42"})
	}))
	defer srv.Close()
	resp := do(t, "GET", srv.URL+"/api/v1/namespaces/default/pods")
	e := api.ReadHTTPError(resp)
	if resp.StatusCode != http.StatusBadGateway || api.CodeOf(e) != api.CodeServiceUnavailable {
		t.Fatalf("status %d, error %v; want 502 service_unavailable", resp.StatusCode, e)
	}
	if want := "the Kubernetes API server could not be reached by the agent: connection refused"; e.Message != want {
		t.Errorf("message %q, want %q", e.Message, want)
	}
	logged := logBuf.String()
	if !strings.Contains(logged, `"request_id":"req-42"`) || !strings.Contains(logged, host) {
		t.Errorf("log %s lacks the request id or the full error", logged)
	}
}

// syncBuffer is a bytes.Buffer safe for the log writer and the test.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestUpgradeUsesHTTP1(t *testing.T) {
	st := newStandin(t)
	f := newFront(t, st.RESTConfig(), nil, &api.Request{Meta: []api.KV{{Key: "impersonate-user", Value: "alice"}}})
	hdr := append([]string{"Connection", "Upgrade", "Upgrade", "SPDY/3.1", "X-Stream-Protocol-Version", "v4.channel.k8s.io"}, callerHeaders...)
	resp := do(t, "POST", f.URL+"/api/v1/namespaces/default/pods/p1/exec?command=cat&stdin=true&stdout=true", hdr...)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := resp.Header.Get("X-Stream-Protocol-Version"); got != "v4.channel.k8s.io" {
		t.Errorf("negotiated protocol %q", got)
	}
	rw, ok := resp.Body.(io.ReadWriter)
	if !ok {
		t.Fatalf("101 body is a %T, not a ReadWriter", resp.Body)
	}
	for _, msg := range []string{"hello", "second message"} {
		if _, err := rw.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(rw, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	seen, _ := st.Last("/api/v1/namespaces/default/pods/p1/exec")
	if seen.Proto != "HTTP/1.1" || seen.Upgrade != "SPDY/3.1" || seen.Authorization != "Bearer "+saToken ||
		seen.ImpersonateUser != "alice" || len(seen.ImpersonateGroups)+len(seen.ImpersonateOther) != 0 {
		t.Errorf("API server saw %+v", seen)
	}
	resp.Body.Close()
	waitFor(t, func() bool {
		return value(t, f.reg, "agentd_kubernetes_requests_total", map[string]string{"verb": "create", "code": "101"}) == 1
	}, "requests_total{create,101} == 1")
}

func TestWatchStreams(t *testing.T) {
	st := newStandin(t)
	f := newFront(t, st.RESTConfig(), nil, &api.Request{})
	resp := do(t, "GET", f.URL+"/api/v1/namespaces/default/pods?watch=true")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	readEvent := func() string {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		var ev struct{ Type string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatal(err)
		}
		return ev.Type
	}
	// The first event arrives while the API server still holds the watch open.
	if got := readEvent(); got != "ADDED" {
		t.Fatalf("first event %s", got)
	}
	st.NextEvent <- struct{}{}
	if got := readEvent(); got != "MODIFIED" {
		t.Fatalf("second event %s", got)
	}
	if _, err := br.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("after the watch ended: %v", err)
	}
}

// A watch whose client goes away is counted in agentd_kubernetes_requests_total, with the
// status it was sent. forward aborts such a response (panic(http.ErrAbortHandler), on agentd's
// streams as under net/http), and the count after it was skipped: watches ended by their
// clients, the usual end of a watch, were never counted.
func TestCanceledWatchIsCounted(t *testing.T) {
	st := newStandin(t)
	f := newFront(t, st.RESTConfig(), nil, &api.Request{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.URL+"/api/v1/namespaces/default/pods?watch=true", nil)
	c := &http.Client{}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, func() bool {
		return value(t, f.reg, "agentd_kubernetes_requests_total", map[string]string{"verb": "watch", "code": "200"}) == 1
	}, "the canceled watch to be counted")
}

func TestPolicy(t *testing.T) {
	st := newStandin(t)
	policy := &kubernetes.Policy{Rules: []kubernetes.Rule{
		{Paths: []string{"/api", "/apis"}, Verbs: []string{"get", "list", "watch"}},
		{Paths: []string{"/api/v1/namespaces/team-a"}},
	}}
	f := newFront(t, st.RESTConfig(), policy, &api.Request{})
	for _, tc := range []struct {
		method, path string
		status       int
		reason       string // denial reason label
	}{
		{"GET", "/api/v1/namespaces/default/pods", 200, ""},
		{"DELETE", "/api/v1/namespaces/default/pods/p1", 403, "verb"},
		{"POST", "/api/v1/namespaces/default/pods/p1/exec", 403, "verb"},
		{"GET", "/api/v1/namespaces/default/pods/p1/exec", 403, "verb"}, // WebSocket exec is "create" too
		{"POST", "/api/v1/namespaces/team-a/pods/p1/exec", 400, ""},     // allowed; not an upgrade, so the stand-in refuses
		{"GET", "/version", 403, "path"},
		{"GET", "/api/v1/namespaces/team-a/../kube-system/secrets", 403, "path_not_canonical"},
	} {
		before := st.Requests()
		resp := do(t, tc.method, f.URL+tc.path)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: status %d, want %d: %s", tc.method, tc.path, resp.StatusCode, tc.status, body)
			continue
		}
		if tc.reason == "" {
			continue
		}
		if resp.Header.Get(api.HeaderError) != "forbidden" || !strings.Contains(string(body), "policy") {
			t.Errorf("%s %s: denial %q %s", tc.method, tc.path, resp.Header.Get(api.HeaderError), body)
		}
		if len(st.Requests()) != len(before) {
			t.Errorf("%s %s: a denied request reached the API server", tc.method, tc.path)
		}
	}
	for reason, want := range map[string]float64{"verb": 3, "path": 1, "path_not_canonical": 1} {
		if got := value(t, f.reg, "agentd_kubernetes_policy_denied_total", map[string]string{"reason": reason}); got != want {
			t.Errorf("policy_denied_total{%s} = %v, want %v", reason, got, want)
		}
	}
}

func TestNewRefusesImpersonatingConfig(t *testing.T) {
	rc := &rest.Config{Host: "https://127.0.0.1:1", Impersonate: rest.ImpersonationConfig{UserName: "admin"}}
	if _, err := kubernetes.New(kubernetes.Config{REST: rc}); err == nil {
		t.Fatal("New accepted a REST config that impersonates by itself")
	}
	if _, err := kubernetes.New(kubernetes.Config{}); err == nil {
		t.Fatal("New accepted a nil REST config")
	}
}

func TestLoadRESTConfigKubeconfig(t *testing.T) {
	st := newStandin(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, st.CAData(), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(dir, "kubeconfig")
	err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "`+st.URL+`", certificate-authority: "`+caFile+`"}
users:
- name: u
  user: {token: "`+saToken+`"}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := kubernetes.LoadRESTConfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	f := newFront(t, rc, nil, &api.Request{})
	if resp := do(t, "GET", f.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		if _, err := kubernetes.LoadRESTConfig(""); !errors.Is(err, rest.ErrNotInCluster) {
			t.Errorf("in-cluster config outside a cluster: %v", err)
		}
	}
}

// value returns the counter name with exactly labels, or 0.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestForwardHead: what the hot path (forward, not ReverseProxy) passes each way, against an
// API server behind a path prefix: the path and query joined to the server's URL, X-Forwarded-For
// kept for the audit log, kasd's other X-Forwarded-* and Forwarded dropped, the response's
// headers and trailers passed, a forged Qkas-Error dropped, and a body the API server cuts
// after its head not delivered as complete.
func TestForwardHead(t *testing.T) {
	var mu sync.Mutex
	var seen *http.Request
	apiserver := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = r.Clone(r.Context())
		mu.Unlock()
		if r.URL.Path == "/k8s/clusters/c1/api/v1/namespaces/default/pods/cut" {
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(200)
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush() // the head goes out, then the stream is reset
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("Qkas-Error", "forged")
		w.Header().Set("Audit-Id", "a-1")
		w.Write([]byte(`{"kind":"PodList"}`))
		w.Header().Set("X-Checksum", "c-1")
	}))
	apiserver.EnableHTTP2 = true
	apiserver.StartTLS()
	defer apiserver.Close()
	rc := &rest.Config{Host: apiserver.URL + "/k8s/clusters/c1", BearerToken: saToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: pemCert(apiserver.Certificate().Raw)}}
	f := newFront(t, rc, nil, &api.Request{Service: "kubernetes"})

	resp := do(t, "GET", f.URL+"/api/v1/namespaces/default/pods?limit=5",
		"X-Forwarded-For", "203.0.113.7", "X-Forwarded-Host", "kas.example.com", "X-Forwarded-Proto", "https", "Forwarded", "for=x")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != `{"kind":"PodList"}` {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if resp.Header.Get("Audit-Id") != "a-1" || resp.Header.Get("Qkas-Error") != "" || resp.Trailer.Get("X-Checksum") != "c-1" {
		t.Errorf("response head %v trailer %v: want Audit-Id, no Qkas-Error, trailer X-Checksum", resp.Header, resp.Trailer)
	}
	mu.Lock()
	r := seen
	mu.Unlock()
	if r.URL.Path != "/k8s/clusters/c1/api/v1/namespaces/default/pods" || r.URL.RawQuery != "limit=5" || r.Proto != "HTTP/1.1" {
		t.Errorf("API server saw %s %s?%s", r.Proto, r.URL.Path, r.URL.RawQuery)
	}
	if r.Header.Get("Authorization") != "Bearer "+saToken || r.Header.Get("X-Forwarded-For") != "203.0.113.7" ||
		r.Header.Get("X-Forwarded-Host") != "" || r.Header.Get("X-Forwarded-Proto") != "" || r.Header.Get("Forwarded") != "" {
		t.Errorf("API server saw headers %v", r.Header)
	}

	c := &http.Client{}
	defer c.CloseIdleConnections()
	if resp, err := c.Get(f.URL + "/api/v1/namespaces/default/pods/cut"); err == nil {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("a response cut by the API server read as complete: %d %q", resp.StatusCode, b)
		}
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
