package kasd_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/qkas/qkas/agentd"
	agentk8s "github.com/qkas/qkas/agentd/kubernetes"
	"github.com/qkas/qkas/agentd/kubernetes/kubetest"
	"github.com/qkas/qkas/kasd"
)

// TestKasctlKubeconfig: `kasctl kubeconfig` writes a kubeconfig with which kubectl reaches the
// agent's cluster through kasd, its exec plugin (`kasctl credential`) caching the token in a 0600
// file that later kubectl runs reuse, and minting a new one once the first has expired, so that
// kubectl (and client-go within one process) keep working across token expiries. kasd here
// allows no clock leeway, so an expired token is refused the moment it expires.
func TestKasctlKubeconfig(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH (.ci/run installs Debian's kubernetes-client): skipping kubectl with kasctl kubeconfig")
	}
	home := t.TempDir()
	kasctl := filepath.Join(home, "kasctl")
	build := exec.Command("go", "build", "-o", kasctl, "github.com/qkas/qkas/kasctl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build kasctl: %v\n%s", err, out)
	}

	e := newEnv(t, func(c *kasd.Config) { c.ClientAuth.Leeway = -1 })
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
	// kubectl sends credentials only over TLS.
	front := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.server().Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	caFile := filepath.Join(home, "kasd-ca.crt")
	secretFile := filepath.Join(home, "api-jwt-secret")
	cacheDir := filepath.Join(home, "cache")
	kubeconfig := filepath.Join(home, "kubeconfig")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secretFile, []byte(base64.StdEncoding.EncodeToString(e.secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// 8s tokens: client-go is told to renew 1.6s before exp.
	const ttl = 8 * time.Second
	cmd := exec.CommandContext(ctx, kasctl, "kubeconfig", "--agent", "alpha", "--server", front.URL, "--secret-file", secretFile,
		"--certificate-authority", caFile, "--ttl", ttl.String(), "--cache-dir", cacheDir, "--subject", "kubectl-test", "-o", kubeconfig)
	cmd.Env = append(os.Environ(), "HOME="+home)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kasctl kubeconfig: %v\n%s", err, out)
	}
	getPods := func(step string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig="+kubeconfig, "--cache-dir="+home+"/kube-cache", "get", "pods", "-o", "name")
		cmd.Env = append(os.Environ(), "HOME="+home)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || strings.TrimSpace(string(out)) != "pod/p1\npod/p2" {
			t.Fatalf("%s: kubectl get pods: %v %q\n%s", step, err, out, stderr.String())
		}
		checkSeen(t, st, "/api/v1/namespaces/default/pods", "", nil)
	}
	// cached returns the token in the cache and checks the file is private.
	cached := func() string {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(cacheDir, "*.json"))
		if len(files) != 1 {
			t.Fatalf("token cache files %v, want one", files)
		}
		fi, err := os.Stat(files[0])
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("cache file mode %v (%v), want 0600", fi.Mode(), err)
		}
		b, err := os.ReadFile(files[0])
		if err != nil {
			t.Fatal(err)
		}
		var c struct{ Token string }
		if err := json.Unmarshal(b, &c); err != nil || c.Token == "" {
			t.Fatalf("cache file %q: %v", b, err)
		}
		return c.Token
	}
	// waitRefused waits until kasd refuses token: it has expired.
	waitRefused := func(token string) {
		t.Helper()
		deadline := time.Now().Add(2 * ttl)
		for {
			req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/api/v1/agents/alpha/proxy/kubernetes/version", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("kasd still accepts the token %v after its ttl (status %d)", 2*ttl, resp.StatusCode)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	getPods("first kubectl")
	t1 := cached()
	getPods("second kubectl")
	if cached() != t1 {
		t.Fatal("the second kubectl did not reuse the cached token")
	}
	waitRefused(t1)
	getPods("kubectl after the first token expired")
	t2 := cached()
	if t2 == t1 {
		t.Fatal("no new token after expiry")
	}

	// client-go within one process: it runs the plugin again at expirationTimestamp.
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	list := func(step string) {
		t.Helper()
		pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != 2 {
			t.Fatalf("%s: list pods: %v", step, err)
		}
	}
	list("client-go")
	t3 := cached()
	waitRefused(t3)
	list("client-go after its token expired")
	if cached() == t3 {
		t.Fatal("client-go did not run the plugin again after the token expired")
	}
	if rcl, ok := cs.CoreV1().RESTClient().(*rest.RESTClient); ok {
		rcl.Client.CloseIdleConnections()
	}
}
