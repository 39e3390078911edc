package kasd_test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/qkas/qkas/agentd"
	agentk8s "github.com/qkas/qkas/agentd/kubernetes"
	"github.com/qkas/qkas/agentd/kubernetes/kubetest"
	"github.com/qkas/qkas/auth"
)

const kubeSAToken = "agent-service-account-token"

// kubeEnv is a kasd, an API server stand-in, and agent alpha offering the kubernetes service
// for it.
func kubeEnv(t *testing.T) (*env, *kubetest.Server) {
	t.Helper()
	e := newEnv(t)
	st := kubetest.NewServer(kubeSAToken)
	t.Cleanup(st.Close)
	svc, err := agentk8s.New(agentk8s.Config{REST: st.RESTConfig()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "alpha-0", nil, func(c *agentd.Config) {
		c.Handlers = map[string]agentd.ServiceHandler{"kubernetes": svc}
	})
	waitConnected(t, a, 1)
	return e, st
}

// kubeClientConfig is how a user points client-go at the agent's cluster through kasd.
func (e *env) kubeClientConfig(jwt string) *rest.Config {
	return &rest.Config{Host: e.url("/api/v1/agents/alpha/proxy/kubernetes"), BearerToken: jwt}
}

// checkSeen asserts what the API server saw on the last request to path: the agent's token,
// never the caller's JWT, and impersonation exactly as the JWT's claim says.
func checkSeen(t *testing.T, st *kubetest.Server, path, wantUser string, wantGroups []string) kubetest.Seen {
	t.Helper()
	seen, ok := st.Last(path)
	if !ok {
		t.Fatalf("API server never saw %s", path)
	}
	if seen.Authorization != "Bearer "+kubeSAToken {
		t.Errorf("%s: API server saw Authorization %q, want the agent's ServiceAccount token", path, seen.Authorization)
	}
	if seen.ImpersonateUser != wantUser || !slices.Equal(seen.ImpersonateGroups, wantGroups) || len(seen.ImpersonateOther) > 0 {
		t.Errorf("%s: impersonation user=%q groups=%q other=%q; want user=%q groups=%q",
			path, seen.ImpersonateUser, seen.ImpersonateGroups, seen.ImpersonateOther, wantUser, wantGroups)
	}
	return seen
}

func TestKubernetesClientGo(t *testing.T) {
	e, st := kubeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("list", func(t *testing.T) {
		cs, err := k8s.NewForConfig(e.kubeClientConfig(e.token()))
		if err != nil {
			t.Fatal(err)
		}
		pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 2 || pods.Items[0].Name != "p1" || pods.Items[1].Namespace != "default" {
			t.Fatalf("pods %+v", pods.Items)
		}
		checkSeen(t, st, "/api/v1/namespaces/default/pods", "", nil)
	})

	t.Run("impersonation", func(t *testing.T) {
		jwt := e.token(func(c *auth.ClientClaims) {
			c.Impersonate = &auth.Impersonation{User: "alice@example.com", Groups: []string{"dev", "oncall"}}
		})
		cfg := e.kubeClientConfig(jwt)
		cs, err := k8s.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods("team-a").List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		checkSeen(t, st, "/api/v1/namespaces/team-a/pods", "alice@example.com", []string{"dev", "oncall"})

		// A caller's own impersonation headers never pass: only the JWT's claim counts, and a
		// request asking for anything else is refused (not run with the claim's rights).
		for _, jwt := range []string{jwt, e.token()} {
			cfg = e.kubeClientConfig(jwt)
			cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:admin", Groups: []string{"system:masters"}}
			cs, err = k8s.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cs.CoreV1().Pods("team-b").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
				t.Fatalf("impersonation headers: %v, want Forbidden", err)
			}
			if _, seen := st.Last("/api/v1/namespaces/team-b/pods"); seen {
				t.Fatal("a request with impersonation headers reached the API server")
			}
		}
	})

	t.Run("watch", func(t *testing.T) {
		cs, err := k8s.NewForConfig(e.kubeClientConfig(e.token()))
		if err != nil {
			t.Fatal(err)
		}
		w, err := cs.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		next := func() watch.Event {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					t.Fatal("watch ended early")
				}
				return ev
			case <-ctx.Done():
				t.Fatal("no watch event")
			}
			return watch.Event{}
		}
		// The first event arrives while the API server holds the watch open; the second is only
		// sent after we have seen the first.
		if ev := next(); ev.Type != watch.Added || ev.Object.(*corev1.Pod).ResourceVersion != "11" {
			t.Fatalf("first event %v %+v", ev.Type, ev.Object)
		}
		st.NextEvent <- struct{}{}
		if ev := next(); ev.Type != watch.Modified || ev.Object.(*corev1.Pod).ResourceVersion != "12" {
			t.Fatalf("second event %v %+v", ev.Type, ev.Object)
		}
		checkSeen(t, st, "/api/v1/namespaces/default/pods", "", nil)
	})

	t.Run("exec-websocket", func(t *testing.T) {
		jwt := e.token(func(c *auth.ClientClaims) { c.Impersonate = &auth.Impersonation{User: "bob"} })
		cfg := e.kubeClientConfig(jwt)
		cs, err := k8s.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace("default").Name("p1").SubResource("exec").
			VersionedParams(&corev1.PodExecOptions{Command: []string{"cat"}, Stdin: true, Stdout: true}, metav1.ParameterCodec).URL()
		ex, err := remotecommand.NewWebSocketExecutor(cfg, "GET", u.String())
		if err != nil {
			t.Fatal(err)
		}
		var stdout strings.Builder
		err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("hello through kasd\n"), Stdout: &stdout})
		if err != nil {
			t.Fatal(err)
		}
		if stdout.String() != "hello through kasd\n" {
			t.Fatalf("stdout %q", stdout.String())
		}
		seen := checkSeen(t, st, "/api/v1/namespaces/default/pods/p1/exec", "bob", nil)
		if !strings.EqualFold(seen.Upgrade, "websocket") || seen.Proto != "HTTP/1.1" {
			t.Errorf("upgrade %q over %s", seen.Upgrade, seen.Proto)
		}
	})

	t.Run("exec-spdy", func(t *testing.T) {
		req, err := http.NewRequestWithContext(ctx, "POST", e.url("/api/v1/agents/alpha/proxy/kubernetes/api/v1/namespaces/default/pods/p2/exec?command=cat&stdin=true"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+e.token())
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "SPDY/3.1")
		req.Header.Set("X-Stream-Protocol-Version", "v4.channel.k8s.io")
		// A plain Transport: http.Client's Timeout would hide the 101 body's io.ReadWriter.
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("X-Stream-Protocol-Version") != "v4.channel.k8s.io" {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("status %d %q: %s", resp.StatusCode, resp.Header, b)
		}
		rw := resp.Body.(io.ReadWriter)
		for _, msg := range []string{"ping", strings.Repeat("x", 100<<10)} {
			if _, err := rw.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(rw, got); err != nil || string(got) != msg {
				t.Fatalf("echo of %d bytes: %v", len(msg), err)
			}
		}
		seen := checkSeen(t, st, "/api/v1/namespaces/default/pods/p2/exec", "", nil)
		if seen.Upgrade != "SPDY/3.1" || seen.Proto != "HTTP/1.1" {
			t.Errorf("upgrade %q over %s", seen.Upgrade, seen.Proto)
		}
	})
}

func TestKubernetesKubectl(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH")
	}
	e, st := kubeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// kubectl sends credentials only over TLS (clientcmd drops the token for an http:// server),
	// so serve kasd's API over HTTPS for it, as a deployment must.
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.server().Handler().ServeHTTP(w, r)
	}))
	defer api.Close()
	home := t.TempDir()
	caFile := home + "/kasd-ca.crt"
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, kubectl, "--server="+api.URL+"/api/v1/agents/alpha/proxy/kubernetes", "--token="+e.token(),
		"--certificate-authority="+caFile, "--cache-dir="+home+"/cache", "get", "pods", "-o", "name")
	cmd.Env = append(os.Environ(), "HOME="+home, "KUBECONFIG="+home+"/none")
	var stderr strings.Builder
	cmd.Stderr = &stderr // older kubectl (Debian's 1.20) warns there about the missing config
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl: %v\n%s%s", err, out, stderr.String())
	}
	if got := strings.TrimSpace(string(out)); got != "pod/p1\npod/p2" {
		t.Fatalf("kubectl output %q", got)
	}
	checkSeen(t, st, "/api/v1/namespaces/default/pods", "", nil)
}

// kubeErrEnv is kubeEnv plus agent beta, whose kubernetes service has a policy (reads of
// discovery and of namespace default only), and agent gamma, whose API server is down.
func kubeErrEnv(t *testing.T) (*env, *kubetest.Server) {
	t.Helper()
	e, st := kubeEnv(t)
	policy := &agentk8s.Policy{Rules: []agentk8s.Rule{
		{Paths: []string{"/api", "/apis", "/version"}, Verbs: []string{"get"}},
		{Paths: []string{"/api/v1/namespaces/default"}},
	}}
	beta, err := agentk8s.New(agentk8s.Config{REST: st.RESTConfig(), Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(beta.Close)
	// An API server that refuses connections: its address must not reach the client.
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := strings.Replace(down.URL, "http:", "https:", 1)
	down.Close()
	gamma, err := agentk8s.New(agentk8s.Config{REST: &rest.Config{Host: downURL, BearerToken: kubeSAToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: st.CAData()}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gamma.Close)
	for id, svc := range map[string]*agentk8s.Service{"beta": beta, "gamma": gamma} {
		a := e.startAgent(id, id+"-0", nil, func(c *agentd.Config) {
			c.Handlers = map[string]agentd.ServiceHandler{"kubernetes": svc}
		})
		waitConnected(t, a, 1)
	}
	return e, st
}

// kubeErrorCase is one error qkas produces on the kubernetes service.
type kubeErrorCase struct {
	name    string
	agent   string
	token   func(*auth.ClientClaims)
	header  []string // extra request headers
	as      string   // client-go/kubectl impersonation (--as)
	path    string   // below the service
	status  int
	reason  string // metav1 reason
	code    string // qkas code
	message string // part of the Status message
}

func kubeErrorCases() []kubeErrorCase {
	agents := func(ids ...string) func(*auth.ClientClaims) {
		return func(c *auth.ClientClaims) { c.Agents = ids }
	}
	return []kubeErrorCase{
		{name: "policy denial", agent: "beta", token: agents("beta"), path: "/api/v1/namespaces/locked/pods",
			status: 403, reason: "Forbidden", code: "forbidden", message: "kubernetes policy does not allow list /api/v1/namespaces/locked/pods"},
		{name: "token for another agent", agent: "alpha", token: agents("beta"), path: "/api/v1/namespaces/default/pods",
			status: 403, reason: "Forbidden", code: "forbidden", message: "this token may not reach agent alpha"},
		{name: "impersonation header", agent: "alpha", token: agents("alpha"), as: "alice", path: "/api/v1/namespaces/default/pods",
			status: 403, reason: "Forbidden", code: "forbidden", message: `impersonation comes from the token's impersonate claim only: this request asks for impersonation of user "alice", but it grants none`},
		{name: "impersonation beyond the claim", agent: "alpha", as: "system:admin",
			token: func(c *auth.ClientClaims) {
				c.Agents = []string{"alpha"}
				c.Impersonate = &auth.Impersonation{User: "alice"}
			},
			path: "/api/v1/namespaces/default/pods", status: 403, reason: "Forbidden", code: "forbidden", message: `asks for impersonation of user "system:admin", but it grants only user "alice"`},
		{name: "agent not connected", agent: "nobody", token: agents("nobody"), path: "/api/v1/namespaces/default/pods",
			status: 503, reason: "ServiceUnavailable", code: "agent_not_connected", message: "agent nobody is not connected"},
		{name: "API server unreachable", agent: "gamma", token: agents("gamma"), path: "/api/v1/namespaces/default/pods",
			status: 502, reason: "ServiceUnavailable", code: "service_unavailable", message: "the Kubernetes API server could not be reached by the agent: connection refused"},
		{name: "bad timeout", agent: "alpha", token: agents("alpha"), header: []string{"Qkas-Timeout", "soon"}, path: "/api/v1/namespaces/default/pods",
			status: 400, reason: "BadRequest", code: "bad_request", message: "Qkas-Timeout header: want a duration"},
		{name: "no head within Qkas-Timeout", agent: "alpha", token: agents("alpha"), header: []string{"Qkas-Timeout", "300ms"}, path: "/api/v1/namespaces/default/pods/" + kubetest.SlowPod,
			status: 504, reason: "Timeout", code: "deadline_exceeded", message: "no response head within the Qkas-Timeout of 300ms"},
		{name: "unauthenticated", agent: "alpha", token: nil, path: "/api/v1/namespaces/default/pods",
			status: 401, reason: "Unauthorized", code: "unauthenticated"},
	}
}

func (tc kubeErrorCase) jwt(e *env) string {
	if tc.token == nil {
		return "not-a-jwt"
	}
	return e.token(tc.token)
}

// TestKubernetesStatusErrors: every error qkas produces on the kubernetes service is a
// Kubernetes Status that client-go decodes to its reason and qkas's message (not "unknown"),
// with qkas's code in Qkas-Error and in the details; no internal address in any of them.
func TestKubernetesStatusErrors(t *testing.T) {
	e, _ := kubeErrEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, tc := range kubeErrorCases() {
		t.Run(tc.name, func(t *testing.T) {
			// The wire: status, headers, Status body.
			hdr := append([]string{"Authorization", "Bearer " + tc.jwt(e)}, tc.header...)
			if tc.as != "" {
				hdr = append(hdr, "Impersonate-User", tc.as)
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", e.url("/api/v1/agents/"+tc.agent+"/proxy/kubernetes"+tc.path), nil)
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			var st metav1.Status
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Qkas-Error") != tc.code {
				t.Errorf("status %d, Content-Type %q, Qkas-Error %q; want %d application/json %s", resp.StatusCode,
					resp.Header.Get("Content-Type"), resp.Header.Get("Qkas-Error"), tc.status, tc.code)
			}
			if st.Kind != "Status" || st.APIVersion != "v1" || st.Status != metav1.StatusFailure || int(st.Code) != tc.status ||
				string(st.Reason) != tc.reason || !strings.HasPrefix(st.Message, "qkas: ") || !strings.Contains(st.Message, tc.message) ||
				st.Details == nil || len(st.Details.Causes) != 1 || st.Details.Causes[0].Message != tc.code {
				t.Errorf("Status %s", body)
			}
			if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "dial tcp") {
				t.Errorf("an internal address or error text reached the client: %s", body)
			}

			// client-go: the error is the Status, with its reason and message.
			cfg := e.kubeClientConfig(tc.jwt(e))
			cfg.Host = e.url("/api/v1/agents/" + tc.agent + "/proxy/kubernetes")
			cfg.Impersonate.UserName = tc.as
			if len(tc.header) > 0 {
				cfg.WrapTransport = addHeaders(tc.header...)
			}
			cs, err := k8s.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			// No retries: a 503 with Retry-After is otherwise retried up to 10 times.
			err = cs.CoreV1().RESTClient().Get().AbsPath(tc.path).MaxRetries(0).Do(ctx).Error()
			if !apierrors.IsUnexpectedServerError(err) && apierrors.ReasonForError(err) != metav1.StatusReason(tc.reason) {
				t.Errorf("client-go error %v (reason %q), want reason %s", err, apierrors.ReasonForError(err), tc.reason)
			}
			if err == nil || !strings.Contains(err.Error(), "qkas: ") || !strings.Contains(err.Error(), tc.message) || strings.Contains(err.Error(), "unknown") {
				t.Errorf("client-go error %q, want qkas's message %q", err, tc.message)
			}
		})
	}
}

// TestKubernetesPolicyDenialLargeBody: a request the agent's policy denies is answered 403
// whatever its body. One whose body is larger than kasd's replay buffer, or chunked, is accepted
// by agentd before the service runs, and the policy's error frame after accepted was a protocol
// error: the client got 502 InternalError "forbidden error frame after the request was
// accepted" (known length) or a connection reset (chunked).
func TestKubernetesPolicyDenialLargeBody(t *testing.T) {
	e, st := kubeErrEnv(t)
	tok := e.token(func(c *auth.ClientClaims) { c.Agents = []string{"beta"} })
	for _, tc := range []struct {
		name string
		size int
		te   bool // chunked
	}{{"small", 1000, false}, {"large", 200 << 10, false}, {"chunked", 200 << 10, true}} {
		// Larger than the replay buffer (64 KiB), within what net/http drains after an early
		// answer (256 KiB): a larger upload still running at full speed when kasd answers may be
		// reset by net/http's close, a matter of kasd's HTTP server, not of the policy.
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = strings.NewReader(strings.Repeat("x", tc.size))
			if tc.te {
				body = io.MultiReader(body) // unknown length: chunked
			}
			before := len(st.Requests())
			req, _ := http.NewRequest("POST", e.url("/api/v1/agents/beta/proxy/kubernetes/api/v1/namespaces/locked/configmaps"), body)
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, resp)
			var status metav1.Status
			if err := json.Unmarshal([]byte(got), &status); err != nil || resp.StatusCode != 403 || status.Reason != metav1.StatusReasonForbidden ||
				resp.Header.Get("Qkas-Error") != "forbidden" || !strings.Contains(status.Message, "kubernetes policy does not allow create") {
				t.Errorf("%d %s %s, want 403 Forbidden from the policy", resp.StatusCode, resp.Header.Get("Qkas-Error"), got)
			}
			if len(st.Requests()) != before {
				t.Error("a denied request reached the API server")
			}
		})
	}
}

// TestKubernetesAPIServerDownLargeBody: a request whose body is larger than kasd's replay
// buffer (so agentd accepts it before the service runs) and that the agent cannot deliver to the
// API server gets the same answer as a small one, 502 service_unavailable with the agent's
// cause. The agent's error frame after accepted was taken for a protocol error: 502 agent_failed
// "service_unavailable error frame after the request was accepted".
func TestKubernetesAPIServerDownLargeBody(t *testing.T) {
	e, _ := kubeErrEnv(t)
	tok := e.token(func(c *auth.ClientClaims) { c.Agents = []string{"gamma"} })
	for _, size := range []int{1000, 200 << 10} {
		req, _ := http.NewRequest("POST", e.url("/api/v1/agents/gamma/proxy/kubernetes/api/v1/namespaces/default/configmaps"), strings.NewReader(strings.Repeat("x", size)))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, resp)
		var status metav1.Status
		if err := json.Unmarshal([]byte(got), &status); err != nil || resp.StatusCode != 502 || resp.Header.Get("Qkas-Error") != "service_unavailable" ||
			!strings.Contains(status.Message, "the Kubernetes API server could not be reached by the agent: connection refused") {
			t.Errorf("%d-byte body: %d %s %s, want 502 service_unavailable", size, resp.StatusCode, resp.Header.Get("Qkas-Error"), got)
		}
	}
}

// TestKubernetesPathErrors: the errors kasd answers from the path alone, before any target is
// resolved — dot segments, a malformed proxy path, a Kubernetes path sent to kasd's root — are
// Statuses (text on discovery paths) when the path names the kubernetes service or is a
// Kubernetes root path, decoded by client-go to their reason and qkas's message; any other
// service keeps qkas's JSON error.
func TestKubernetesPathErrors(t *testing.T) {
	e, _ := kubeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jwt := e.token()
	for _, tc := range []struct {
		name    string
		host    string // client-go's Host below kasd's URL
		path    string // client-go's path
		wire    string // the path as sent (client-go's is rewritten to it); default host+path
		status  int
		reason  string
		code    string
		text    bool // discovery: text/plain
		message string
	}{
		{name: "dot segment", host: "/api/v1/agents/alpha/proxy/kubernetes", path: "/api/v1/namespaces/default/pods",
			wire:   "/api/v1/agents/alpha/proxy/kubernetes/api/v1/namespaces/default/../kube-system/pods",
			status: 400, reason: "BadRequest", code: "bad_request", message: "path may not contain . or .. segments"},
		{name: "encoded dot segment", host: "/api/v1/agents/alpha/proxy/kubernetes", path: "/api/v1/namespaces/default/pods",
			wire:   "/api/v1/agents/alpha/proxy/kube%72netes/api/v1/namespaces/%2e%2e/pods",
			status: 400, reason: "BadRequest", code: "bad_request", message: "path may not contain . or .. segments"},
		{name: "malformed agent name", host: "/api/v1/agents/-alpha/proxy/kubernetes", path: "/api/v1/namespaces/default/pods",
			status: 400, reason: "BadRequest", code: "bad_request", message: `invalid agent id "-alpha": letters, digits, '.', '_' and '-', starting with a letter or digit`},
		{name: "malformed agent name, discovery", host: "/api/v1/agents/-alpha/proxy/kubernetes", path: "/version",
			status: 400, reason: "BadRequest", code: "bad_request", text: true, message: `invalid agent id "-alpha"`},
		{name: "kasd's root (kubectl proxy without --append-server-path)", host: "", path: "/api/v1/namespaces/default/pods",
			status: 404, reason: "NotFound", code: "not_found",
			message: `unknown API path "/api/v1/namespaces/default/pods": kasd serves an agent's Kubernetes API at /api/v1/agents/{agent}/proxy/kubernetes/ (kubectl proxy needs --append-server-path)`},
		{name: "kasd's root, discovery", host: "", path: "/apis", status: 404, reason: "NotFound", code: "not_found", text: true,
			message: `unknown API path "/apis": kasd serves an agent's Kubernetes API at /api/v1/agents/{agent}/proxy/kubernetes/`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire := tc.wire
			if wire == "" {
				wire = tc.host + tc.path
			}
			// The wire: status, headers, body.
			req, _ := http.NewRequestWithContext(ctx, "GET", e.url(""), nil)
			req.URL.Opaque = wire // as is: no cleaning, no re-escaping
			req.Header.Set("Authorization", "Bearer "+jwt)
			resp, err := e.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			ctype := "application/json"
			if tc.text {
				ctype = "text/plain; charset=utf-8"
			}
			if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != ctype || resp.Header.Get("Qkas-Error") != tc.code {
				t.Errorf("status %d, Content-Type %q, Qkas-Error %q; want %d %s %s", resp.StatusCode,
					resp.Header.Get("Content-Type"), resp.Header.Get("Qkas-Error"), tc.status, ctype, tc.code)
			}
			if tc.text {
				if body != "qkas: "+tc.message+"\n" && !strings.HasPrefix(body, "qkas: "+tc.message) {
					t.Errorf("body %q, want qkas: %s", body, tc.message)
				}
			} else {
				var st metav1.Status
				if err := json.Unmarshal([]byte(body), &st); err != nil {
					t.Fatalf("body %q: %v", body, err)
				}
				if st.Kind != "Status" || st.Status != metav1.StatusFailure || int(st.Code) != tc.status || string(st.Reason) != tc.reason ||
					!strings.HasPrefix(st.Message, "qkas: "+tc.message) || st.Details == nil || len(st.Details.Causes) != 1 || st.Details.Causes[0].Message != tc.code {
					t.Errorf("Status %s", body)
				}
			}

			// client-go: the error carries the reason and qkas's message.
			cfg := e.kubeClientConfig(jwt)
			cfg.Host = e.url(tc.host)
			if tc.wire != "" {
				cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
					return roundTripFunc(func(r *http.Request) (*http.Response, error) {
						r = r.Clone(r.Context())
						r.URL.Opaque = tc.wire
						return rt.RoundTrip(r)
					})
				}
			}
			cs, err := k8s.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tc.path == "/version" {
				_, err = cs.Discovery().ServerVersion()
			} else {
				err = cs.CoreV1().RESTClient().Get().AbsPath(tc.path).Do(ctx).Error()
			}
			msg := fmt.Sprint(err)
			if tc.text {
				// On a discovery path client-go keeps the text of a 4xx (other than 403) as
				// the cause, and prints a fixed message for its status.
				cause, _ := apierrors.StatusCause(err, metav1.CauseTypeUnexpectedServerResponse)
				msg = cause.Message
			}
			if err == nil || !strings.Contains(msg, "qkas: "+tc.message) {
				t.Errorf("client-go error %q (%q), want qkas's message %q", err, msg, tc.message)
			}
			if apierrors.ReasonForError(err) != metav1.StatusReason(tc.reason) {
				t.Errorf("client-go error %v: reason %q, want %s", err, apierrors.ReasonForError(err), tc.reason)
			}
		})
	}
	// Another service's path errors stay qkas's JSON.
	for _, p := range []string{"/api/v1/agents/-alpha/proxy/web/x", "/api/v1/agents/alpha/proxy/web/%2e%2e/x", "/nothing"} {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url(""), nil)
		req.URL.Opaque = p
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if !strings.HasPrefix(body, `{"error":"`) || strings.Contains(body, `"kind"`) {
			t.Errorf("%s: body %q, want qkas's JSON error", p, body)
		}
	}
}

// addHeaders returns a rest.Config.WrapTransport adding kv pairs to every request.
func addHeaders(kv ...string) func(http.RoundTripper) http.RoundTripper {
	return func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			r = r.Clone(r.Context())
			for i := 0; i+1 < len(kv); i += 2 {
				r.Header.Set(kv[i], kv[i+1])
			}
			return rt.RoundTrip(r)
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestKubernetesImpersonationClaim: headers asking for exactly the claim's identity pass (the
// API server sees the claim); without headers the claim applies as before.
func TestKubernetesImpersonationClaim(t *testing.T) {
	e, st := kubeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jwt := e.token(func(c *auth.ClientClaims) {
		c.Agents = []string{"alpha"}
		c.Impersonate = &auth.Impersonation{User: "alice", Groups: []string{"dev", "ops"}}
	})
	for _, tc := range []struct {
		name   string
		imp    rest.ImpersonationConfig
		ns     string
		status int
	}{
		{"same identity", rest.ImpersonationConfig{UserName: "alice", Groups: []string{"ops", "dev"}}, "same", 200},
		{"no headers", rest.ImpersonationConfig{}, "none", 200},
		{"fewer groups", rest.ImpersonationConfig{UserName: "alice", Groups: []string{"dev"}}, "fewer", 403},
		{"uid", rest.ImpersonationConfig{UserName: "alice", Groups: []string{"dev", "ops"}, UID: "1"}, "uid", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.kubeClientConfig(jwt)
			cfg.Impersonate = tc.imp
			cs, err := k8s.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cs.CoreV1().Pods(tc.ns).List(ctx, metav1.ListOptions{})
			switch {
			case tc.status == 200 && err != nil:
				t.Fatal(err)
			case tc.status == 200:
				checkSeen(t, st, "/api/v1/namespaces/"+tc.ns+"/pods", "alice", []string{"dev", "ops"})
			case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "impersonation comes from the token's impersonate claim only"):
				t.Fatalf("error %v, want the impersonation refusal", err)
			default:
				if _, seen := st.Last("/api/v1/namespaces/" + tc.ns + "/pods"); seen {
					t.Error("a refused request reached the API server")
				}
			}
		})
	}
	// Any case: HTTP/1.1 header names are case-insensitive.
	resp := e.do("GET", "/api/v1/agents/alpha/proxy/kubernetes/api/v1/namespaces/lower/pods", nil)
	readAll(t, resp)
	req, _ := http.NewRequest("GET", e.url("/api/v1/agents/alpha/proxy/kubernetes/api/v1/namespaces/lower/pods"), nil)
	req.Header.Set("Authorization", "Bearer "+jwt)
	req.Header["impersonate-user"] = []string{"bob"} // not canonicalised by Go's client
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, "impersonation comes from") {
		t.Fatalf("lower-case impersonate-user: %d %s", resp.StatusCode, body)
	}
}

// TestKubernetesWatchOutlivesTimeout: Qkas-Timeout bounds the wait for the response head only;
// a watch runs on after it as long as the client and the API server keep it.
func TestKubernetesWatchOutlivesTimeout(t *testing.T) {
	e, st := kubeEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := e.kubeClientConfig(e.token())
	cfg.WrapTransport = addHeaders("Qkas-Timeout", "300ms")
	cs, err := k8s.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := cs.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	next := func() watch.Event {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch ended early")
			}
			return ev
		case <-ctx.Done():
			t.Fatal("no watch event")
		}
		return watch.Event{}
	}
	if ev := next(); ev.Type != watch.Added {
		t.Fatalf("first event %v", ev.Type)
	}
	time.Sleep(1 * time.Second) // more than three times the Qkas-Timeout
	st.NextEvent <- struct{}{}
	if ev := next(); ev.Type != watch.Modified {
		t.Fatalf("second event %v %+v", ev.Type, ev.Object)
	}
	if n := counter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_timeout"}); n != 0 {
		t.Errorf("qkas_timeout counted %v times for a watch whose head came in time", n)
	}
}

// TestKubernetesWatchDeadline: an explicit Qkas-Deadline ends a watch cleanly — the final
// chunk over HTTP/1.1, END_STREAM over HTTP/2 — with the trailer Qkas-Error: deadline_exceeded,
// and is counted as a deadline, not as a tunnel failure.
func TestKubernetesWatchDeadline(t *testing.T) {
	e, _ := kubeEnv(t)
	h2 := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.server().Handler().ServeHTTP(w, r)
	}))
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()
	for i, tc := range []struct {
		name   string
		base   string
		client *http.Client
		proto  string
	}{
		{"HTTP/1.1 chunked", e.url(""), e.client, "HTTP/1.1"},
		{"HTTP/2", h2.URL, h2.Client(), "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tc.base+"/api/v1/agents/alpha/proxy/kubernetes/api/v1/namespaces/default/pods?watch=true", nil)
			req.Header.Set("Authorization", "Bearer "+e.token())
			req.Header.Set("Qkas-Deadline", "700ms")
			start := time.Now()
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 || resp.Proto != tc.proto {
				t.Fatalf("status %d over %s", resp.StatusCode, resp.Proto)
			}
			body, err := io.ReadAll(resp.Body) // a cut body would be an error here
			if err != nil {
				t.Fatalf("body after %v: %v (%q)", time.Since(start), err, body)
			}
			if !strings.Contains(string(body), `"type":"ADDED"`) {
				t.Errorf("body %q", body)
			}
			if d := time.Since(start); d < 700*time.Millisecond || d > 5*time.Second {
				t.Errorf("watch ended after %v, want at the 700ms deadline", d)
			}
			if got := resp.Trailer.Get("Qkas-Error"); got != "deadline_exceeded" {
				t.Errorf("trailer Qkas-Error %q, want deadline_exceeded", got)
			}
			waitCounter(t, e.reg, "kasd_limit_rejections_total", map[string]string{"reason": "qkas_deadline"}, float64(i+1))
			if n := counter(t, e.reg, "kasd_api_errors_total", map[string]string{"code": "agent_failed"}); n != 0 {
				t.Errorf("counted as agent_failed %v times", n)
			}
		})
	}
	tr := h2.Client().Transport.(*http.Transport)
	tr.CloseIdleConnections()
}

// kubectlFront serves kasd's API over HTTPS for kubectl (which sends tokens only over TLS) and
// returns a function that runs kubectl against agent's kubernetes service.
func kubectlFront(t *testing.T, e *env, kubectl string) func(ctx context.Context, agent, jwt string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	front := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.server().Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	home := t.TempDir()
	caFile := home + "/kasd-ca.crt"
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, agent, jwt string, args ...string) (string, string, error) {
		cmd := exec.CommandContext(ctx, kubectl, append([]string{"--server=" + front.URL + "/api/v1/agents/" + agent + "/proxy/kubernetes",
			"--token=" + jwt, "--certificate-authority=" + caFile, "--cache-dir=" + home + "/cache"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+home, "KUBECONFIG="+home+"/none")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
}

// TestKubernetesKubectlErrors: kubectl prints qkas's cause for each error qkas produces, with
// the Status reason, where it printed "unknown" before.
func TestKubernetesKubectlErrors(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH (.ci/run installs Debian's kubernetes-client)")
	}
	e, _ := kubeErrEnv(t)
	run := kubectlFront(t, e, kubectl)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for _, tc := range kubeErrorCases() {
		if len(tc.header) > 0 || tc.code == "agent_not_connected" {
			continue // kubectl sends no Qkas-* headers; a 503 with Retry-After is retried 10 times
		}
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"get", "pods", "-n", "default"}
			if strings.Contains(tc.path, "/locked/") {
				args = []string{"get", "pods", "-n", "locked"}
			}
			if tc.as != "" {
				args = append(args, "--as="+tc.as)
			}
			out, stderr, err := run(ctx, tc.agent, tc.jwt(e), args...)
			if err == nil {
				t.Fatalf("kubectl %v succeeded: %s", args, out)
			}
			t.Logf("kubectl %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr))
			// kubectl's discovery (GET /api first) shows a 5xx as InternalError with the text
			// of the body, and a 401 with client-go's fixed text whatever the body says.
			want := "Error from server (" + tc.reason + "): qkas: "
			switch {
			case tc.status == 401:
				want = "error: You must be logged in to the server"
			case tc.status >= 500:
				want = `Error from server (InternalError): an error on the server ("qkas: `
			}
			if !strings.Contains(stderr, want) || !strings.Contains(stderr, tc.message) || strings.Contains(stderr, "unknown") {
				t.Errorf("kubectl printed %q, want %q and %q", stderr, want, tc.message)
			}
			if strings.Contains(stderr, "127.0.0.1") {
				t.Errorf("kubectl printed an internal address: %s", stderr)
			}
		})
	}
	t.Run("as the claim's identity", func(t *testing.T) {
		jwt := e.token(func(c *auth.ClientClaims) { c.Impersonate = &auth.Impersonation{User: "alice"} })
		out, stderr, err := run(ctx, "alpha", jwt, "get", "pods", "-o", "name", "--as=alice")
		if err != nil || strings.TrimSpace(out) != "pod/p1\npod/p2" {
			t.Fatalf("kubectl --as=alice with alice's token: %v %s %s", err, out, stderr)
		}
	})
}

// TestKubernetesKubectlProxy: `kubectl proxy` reaches the agent's API server through kasd with
// --append-server-path (docs/kubernetes.md); without it, kubectl proxy drops the server's path
// and kasd cannot know the agent.
func TestKubernetesKubectlProxy(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH (.ci/run installs Debian's kubernetes-client)")
	}
	e, st := kubeEnv(t)
	front := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.server().Handler().ServeHTTP(w, r)
	}))
	defer front.Close()
	home := t.TempDir()
	caFile := home + "/kasd-ca.crt"
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		append bool
		status int
	}{{"append-server-path", true, 200}, {"without", false, 404}} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"proxy", "--port=0", "--server=" + front.URL + "/api/v1/agents/alpha/proxy/kubernetes",
				"--token=" + e.token(), "--certificate-authority=" + caFile}
			if tc.append {
				args = append(args, "--append-server-path")
			}
			cmd := exec.Command(kubectl, args...)
			cmd.Env = append(os.Environ(), "HOME="+home, "KUBECONFIG="+home+"/none")
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			// "Starting to serve on 127.0.0.1:NNNNN"
			line, err := bufio.NewReader(out).ReadString('\n')
			_, addr, ok := strings.Cut(strings.TrimSpace(line), "Starting to serve on ")
			if err != nil || !ok {
				t.Fatalf("kubectl proxy said %q: %v", line, err)
			}
			resp, err := http.Get("http://" + addr + "/api/v1/namespaces/default/pods")
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			if resp.StatusCode != tc.status {
				t.Fatalf("through kubectl proxy: %d %s", resp.StatusCode, body)
			}
			if tc.append {
				if !strings.Contains(body, `"name":"p1"`) {
					t.Fatalf("body %s", body)
				}
				checkSeen(t, st, "/api/v1/namespaces/default/pods", "", nil)
			} else if !strings.Contains(body, `"kind":"Status"`) || !strings.Contains(body, "kubectl proxy needs --append-server-path") {
				t.Fatalf("without --append-server-path: body %s, want a Status naming the flag", body)
			}
			http.DefaultClient.CloseIdleConnections()
		})
	}
}

// TestKubernetesPathCost measures GET /version, one request at a time on one client
// connection: directly to the API server stand-in (TLS, HTTP/2, as client-go talks to it),
// through kasd and agentd's kubernetes service to it, and through kasd and agentd's plain URL
// service to an HTTP server answering the same bytes. kubernetes minus plain is what the
// kubernetes service adds over any other service (its ReverseProxy and client-go transport,
// TLS and HTTP/2 to the API server). A measurement, not a check: it runs only with
// QKAS_BENCH_KUBERNETES=1 and prints the figures:
//
//	go test -c -o /tmp/kasd.test ./kasd && QKAS_BENCH_KUBERNETES=1 /tmp/kasd.test -test.run TestKubernetesPathCost
func TestKubernetesPathCost(t *testing.T) {
	if os.Getenv("QKAS_BENCH_KUBERNETES") == "" {
		t.Skip("a measurement: set QKAS_BENCH_KUBERNETES=1")
	}
	st := kubetest.NewServer(kubeSAToken)
	defer st.Close()
	version := []byte(`{"major":"1","minor":"37","gitVersion":"v1.37.2-kubetest"}`)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(version)
	}))
	defer plain.Close()
	measure := func(client *http.Client, url string, hdr ...string) testing.BenchmarkResult {
		req, _ := http.NewRequest("GET", url, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		var failed error
		res := testing.Benchmark(func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed = err
					b.SkipNow()
				}
			}
		})
		if failed != nil {
			t.Fatalf("GET %s: %v", url, failed)
		}
		return res
	}
	rt, err := rest.TransportFor(st.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	direct := measure(&http.Client{Transport: rt}, st.URL+"/version")
	if c, ok := rt.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	directClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	directPlain := measure(directClient, plain.URL+"/version")
	directClient.CloseIdleConnections()
	e := newEnv(t)
	svc, err := agentk8s.New(agentk8s.Config{REST: st.RESTConfig()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	a := e.startAgent("alpha", "alpha-0", map[string]string{"plain": plain.URL}, func(c *agentd.Config) {
		c.Handlers = map[string]agentd.ServiceHandler{"kubernetes": svc}
	})
	waitConnected(t, a, 1)
	bearer := []string{"Authorization", "Bearer " + e.token()}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	var kube, plainRes testing.BenchmarkResult
	for range 2 { // alternate, so that neither path gets the quieter half of the machine
		kube = measure(client, e.url("/api/v1/agents/alpha/proxy/kubernetes/version"), bearer...)
		plainRes = measure(client, e.url("/api/v1/agents/alpha/proxy/plain/version"), bearer...)
	}
	us := func(r testing.BenchmarkResult) float64 { return float64(r.NsPerOp()) / 1e3 }
	// Printed, not logged: run it without -v (-v makes kasd log every request to the test).
	// Each path's own cost is what it adds over its backend reached directly (the stand-in
	// speaks TLS and HTTP/2, the plain server HTTP/1.1): kubernetes minus plain of those is
	// what the kubernetes service costs more than any other service (issue 13's bar: 100 µs).
	fmt.Printf("GET /version, c=1: direct to the API server stand-in %.0f µs, to the plain server %.0f µs; via kasd, kubernetes service %.0f µs (%d allocs, adds %.0f µs); via kasd, plain service %.0f µs (%d allocs, adds %.0f µs); the kubernetes path adds %+.0f µs more than the plain path",
		us(direct), us(directPlain), us(kube), kube.AllocsPerOp(), us(kube)-us(direct), us(plainRes), plainRes.AllocsPerOp(), us(plainRes)-us(directPlain),
		(us(kube)-us(direct))-(us(plainRes)-us(directPlain)))
	fmt.Println()
}
