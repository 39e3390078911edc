package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// TestKubeconfig: the kubeconfig written loads with clientcmd into a rest.Config whose host is
// kasd's proxy URL for the agent's kubernetes service and whose credentials come from
// "kasctl credential" with the token flags; -o merges into an existing kubeconfig, 0600.
func TestKubeconfig(t *testing.T) {
	dir := t.TempDir()
	secret, _ := writeSecret(t, dir)
	ca := filepath.Join(dir, "ca.pem")
	caPEM := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	if err := os.WriteFile(ca, []byte(caPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(dir, "kube", "config")
	if err := os.MkdirAll(filepath.Dir(kc), 0o700); err != nil {
		t.Fatal(err)
	}
	other := clientcmdapi.NewConfig()
	other.Clusters["prod"] = &clientcmdapi.Cluster{Server: "https://prod.example.com"}
	other.AuthInfos["prod"] = &clientcmdapi.AuthInfo{Token: "prod-token"}
	other.Contexts["prod"] = &clientcmdapi.Context{Cluster: "prod", AuthInfo: "prod"}
	other.CurrentContext = "prod"
	if err := clientcmd.WriteToFile(*other, kc); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(kc, 0o644); err != nil {
		t.Fatal(err)
	}

	out := mustRun(t, "kubeconfig", "--agent", "alpha", "--server", "https://kas.example.com:8151/kas/",
		"--secret-file", secret, "--certificate-authority", ca, "--tls-server-name", "kas.internal", "--namespace", "apps",
		"--ttl", "5m", "--impersonate-user", "alice", "--impersonate-group", "dev", "--cache-dir", filepath.Join(dir, "cache"),
		"--kasctl", "/opt/bin/kasctl", "-o", kc)
	if !strings.Contains(out, "qkas-alpha") {
		t.Fatalf("stdout %q", out)
	}
	fi, err := os.Stat(kc)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig mode %v %v, want 0600", fi.Mode(), err)
	}
	cfg, err := clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatalf("clientcmd cannot load the kubeconfig: %v", err)
	}
	if cfg.CurrentContext != "qkas-alpha" || cfg.Contexts["prod"] == nil || cfg.AuthInfos["prod"].Token != "prod-token" {
		t.Fatalf("merge lost or kept the wrong things: current %q, contexts %v", cfg.CurrentContext, cfg.Contexts)
	}
	if ns := cfg.Contexts["qkas-alpha"].Namespace; ns != "apps" {
		t.Errorf("namespace %q", ns)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
	if err != nil {
		t.Fatalf("client config: %v", err)
	}
	if want := "https://kas.example.com:8151/kas/api/v1/agents/alpha/proxy/kubernetes"; rc.Host != want {
		t.Errorf("host %q, want %q", rc.Host, want)
	}
	if string(rc.CAData) != caPEM || rc.ServerName != "kas.internal" || rc.Insecure {
		t.Errorf("TLS config %+v", rc.TLSClientConfig)
	}
	if rc.BearerToken != "" || rc.ExecProvider == nil {
		t.Fatalf("want an exec provider and no static token: %+v", rc)
	}
	ex := rc.ExecProvider
	wantArgs := []string{"credential", "--agents=alpha", "--secret-file=" + secret, "--ttl=5m0s",
		"--impersonate-user=alice", "--impersonate-group=dev", "--cache-dir=" + filepath.Join(dir, "cache")}
	if ex.Command != "/opt/bin/kasctl" || ex.APIVersion != "client.authentication.k8s.io/v1" ||
		!slices.Equal(ex.Args, wantArgs) || ex.InteractiveMode != clientcmdapi.NeverExecInteractiveMode {
		t.Fatalf("exec %q %q %s %s; want args %q", ex.Command, ex.Args, ex.APIVersion, ex.InteractiveMode, wantArgs)
	}
	// The args it wrote are ones credential takes.
	if _, stderr, code := kasctl(t, append(ex.Args, "-h")...); code != 0 || stderr != "" {
		t.Fatalf("credential refuses the kubeconfig's args: %s", stderr)
	}

	// Written again with other flags: the same entries replaced, not duplicated.
	mustRun(t, "kubeconfig", "--agent", "alpha", "--server", "https://kas2.example.com", "--secret-file", secret, "-o", kc)
	cfg, err = clientcmd.LoadFromFile(kc)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Contexts) != 2 || cfg.Clusters["qkas-alpha"].Server != "https://kas2.example.com/api/v1/agents/alpha/proxy/kubernetes" {
		t.Fatalf("after rewrite: contexts %v, server %q", cfg.Contexts, cfg.Clusters["qkas-alpha"].Server)
	}

	// To stdout, a relative secret path becomes absolute (kubectl runs the plugin elsewhere).
	t.Chdir(dir)
	out = mustRun(t, "kubeconfig", "--agent", "beta", "--secret-file", "jwt.secret")
	cfg, err = clientcmd.Load([]byte(out))
	if err != nil {
		t.Fatalf("printed kubeconfig does not load: %v\n%s", err, out)
	}
	u := cfg.AuthInfos["qkas-beta"]
	if u == nil || u.Exec == nil || !slices.Contains(u.Exec.Args, "--secret-file="+secret) {
		t.Fatalf("user %+v", u)
	}
	if s := cfg.Clusters["qkas-beta"].Server; s != defaultServer+"/api/v1/agents/beta/proxy/kubernetes" {
		t.Fatalf("default server %q", s)
	}
}
