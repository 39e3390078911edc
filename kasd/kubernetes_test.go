package kasd_test

import (
	"context"
	"encoding/pem"
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
		// A caller's own impersonation headers must not pass: only the JWT's claim counts.
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:admin", Groups: []string{"system:masters"}}
		cs, err := k8s.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods("team-a").List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		checkSeen(t, st, "/api/v1/namespaces/team-a/pods", "alice@example.com", []string{"dev", "oncall"})

		// Without the claim, the caller's Impersonate-* headers are dropped, not passed.
		cfg = e.kubeClientConfig(e.token())
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:admin"}
		cs, err = k8s.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods("team-b").List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		checkSeen(t, st, "/api/v1/namespaces/team-b/pods", "", nil)
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
