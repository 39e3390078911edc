package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAPIOverTLS: with --api-tls-agent-cert kasd serves its client API over HTTPS with the development
// certificate (what kubectl needs: it sends tokens only over TLS), and plain HTTP is refused.
func TestAPIOverTLS(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	web := startService(t, "web")
	sec := newSecrets(t, dir, "demo")
	kasd := startKasd(t, KasdOpts{
		Dir: dir, TokensFile: sec.TokensFile, JWTSecretFile: sec.JWTSecretFile,
		Args: []string{"--api-tls-agent-cert", "--fleet=false"},
	})
	startAgentd(t, AgentdOpts{
		Dir: dir, KasAddrs: []string{kasd.Opts.AgentAddr}, TokenFile: sec.TokenFiles["demo"],
		CAFile: filepath.Join(kasd.DataDir(), "ca.pem"), Services: map[string]string{"web": web.URL},
	}).WaitConnected(t)

	caPEM, err := os.ReadFile(filepath.Join(kasd.DataDir(), "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	jwt := mintJWT(t, sec.JWTSecretFile, "--agents", "demo")
	url := "https://" + kasd.Opts.APIAddr + "/api/v1/agents/demo/proxy/web/over-tls"
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+jwt)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("HTTPS request: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "/over-tls") || resp.TLS == nil {
		t.Fatalf("over TLS: %d %q", resp.StatusCode, body)
	}
	// The same port does not speak plain HTTP.
	if r, err := tryGet(kasd.APIURL()+"/api/v1/agents", jwt); err == nil && r.Status == 200 {
		t.Errorf("plain HTTP answered 200 on the TLS API port")
	}
}
