package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/agentd"
	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/quic"
)

// testCA issues certificates for 127.0.0.1.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for 127.0.0.1 with serial to certFile and keyFile.
func (ca *testCA) issue(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "kasd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Key first, each replaced by rename, as cert-manager and Kubernetes Secrets do.
	writeAtomic(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	writeAtomic(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeAtomic(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type echoService struct{}

func (echoService) ServeService(w http.ResponseWriter, r *http.Request, _ *api.Request) {
	_, _ = io.WriteString(w, "echo "+r.URL.Path)
}

// TestTLSCertificateReload: a real kasd serving --tls-cert-file; the files are rotated (a new
// certificate from the same CA, replaced by rename, no signal): a new agent connection sees
// the new serial, the agent connected before keeps its connection and serves requests; a bad
// file keeps the new certificate in use and is counted.
func TestTLSCertificateReload(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.issue(t, 1001, certFile, keyFile)
	secret := auth.NewSecret()
	tok := auth.NewAgentToken()
	files := map[string]string{
		"jwt.secret":  secret,
		"tokens.yaml": "agents:\n- id: a1\n  token_sha256: " + auth.TokenSHA256(tok) + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	agentAddr := freeUDPAddr(t)
	apiAddr := freeAddr(t)
	obs := startKasd(t, "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--agent-listen", agentAddr,
		"--api-listen", apiAddr, "--api-jwt-secret-file", filepath.Join(dir, "jwt.secret"),
		"--agent-tokens-file", filepath.Join(dir, "tokens.yaml"))

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	serial := func() int64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		qc, err := quic.Dial(ctx, agentAddr, &tls.Config{RootCAs: pool, NextProtos: []string{api.ALPNAgent}}, quic.Config{})
		if err != nil {
			t.Fatalf("dial kasd: %v", err)
		}
		defer qc.CloseWithError(0, "")
		return qc.ConnectionState().TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 1001 {
		t.Fatalf("serial %d before rotation, want 1001", got)
	}

	// An agent connected before the rotation.
	agent, reg := startEchoAgent(t, agentAddr, tok, pool)
	waitUntil(t, "the agent to connect", func() bool { return agent.Connected() == 1 })
	key, err := auth.ReadSecretFile(filepath.Join(dir, "jwt.secret"))
	if err != nil {
		t.Fatal(err)
	}
	jwtTok, err := auth.Mint(key, auth.ClientClaims{RegisteredClaims: jwt.RegisteredClaims{
		Issuer: auth.DefaultIssuer, Audience: jwt.ClaimStrings{auth.DefaultAudience},
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(10 * time.Minute)), IssuedAt: jwt.NewNumericDate(time.Now()),
	}, Agents: []string{"a1"}})
	if err != nil {
		t.Fatal(err)
	}
	try := func() error {
		req, _ := http.NewRequest("GET", "http://"+apiAddr+"/api/v1/agents/a1/proxy/echo/x", nil)
		req.Header.Set("Authorization", "Bearer "+jwtTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), "echo") {
			return fmt.Errorf("request through kasd: %d %q", resp.StatusCode, b)
		}
		return nil
	}
	get := func() {
		t.Helper()
		if err := try(); err != nil {
			t.Fatal(err)
		}
	}
	get()

	// Requests keep flowing through the agent's connection during the rotation; none fails.
	stop := make(chan struct{})
	var load sync.WaitGroup
	var served, failed atomic.Int64
	for range 8 {
		load.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := try(); err != nil {
					failed.Add(1)
					t.Errorf("during the rotation: %v", err)
				} else {
					served.Add(1)
				}
			}
		})
	}
	ca.issue(t, 2002, certFile, keyFile) // rotation: no signal, the file watch sees it
	waitUntil(t, "a new connection to see the new certificate", func() bool { return serial() == 2002 })
	close(stop)
	load.Wait()
	t.Logf("%d requests during the rotation, %d failed", served.Load(), failed.Load())
	if served.Load() == 0 {
		t.Error("no request was served during the rotation")
	}
	if c := metric(t, obs, `kasd_tls_reloads_total{cert="agent",result="ok"}`); c < 1 {
		t.Errorf("ok reloads counted %v", c)
	}
	// The agent's connection from before the rotation still serves: no reconnect happened.
	get()
	if n := connectAttempts(t, reg); n != 1 {
		t.Errorf("the agent connected %v times; the rotation must not drop its connection", n)
	}

	// A bad file: the certificate in use stays, the error is counted.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the bad file to be counted", func() bool {
		return metric(t, obs, `kasd_tls_reloads_total{cert="agent",result="error"}`) >= 1
	})
	if got := serial(); got != 2002 {
		t.Fatalf("serial %d after a bad file, want 2002 (kept)", got)
	}
	if exp := metric(t, obs, `kasd_tls_cert_expiry_timestamp_seconds{cert="agent"}`); exp < float64(time.Now().Unix()) {
		t.Errorf("expiry metric %v is not the certificate's NotAfter", exp)
	}
	get()
}

// connectAttempts is the agent's agentd_connect_attempts_total{result="ok"}.
func connectAttempts(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "agentd_connect_attempts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == "ok" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// metric returns the value of the sample named by series (name{labels} as exposed) on kasd's
// /metrics, 0 if absent.
func metric(t *testing.T, obs, series string) float64 {
	t.Helper()
	_, body := status(t, "http://"+obs+"/metrics")
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return 0
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAPITLSCertificateReload: the client API's HTTPS certificate (--api-tls-cert-file) is
// served and reloaded the same way: a new TLS connection sees the rotated certificate.
func TestAPITLSCertificateReload(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile := filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	ca.issue(t, 31, certFile, keyFile)
	apiAddr := freeAddr(t)
	obs := startKasd(t, "--api-listen", apiAddr, "--api-tls-cert-file", certFile, "--api-tls-key-file", keyFile)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	serial := func() int64 {
		t.Helper()
		c, err := tls.Dial("tcp", apiAddr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("HTTPS to the client API: %v", err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 31 {
		t.Fatalf("serial %d, want 31", got)
	}
	ca.issue(t, 32, certFile, keyFile)
	waitUntil(t, "the API to serve the new certificate", func() bool { return serial() == 32 })
	if c := metric(t, obs, `kasd_tls_reloads_total{cert="api",result="ok"}`); c < 1 {
		t.Errorf("api reloads counted %v", c)
	}
}

// startEchoAgent runs an agentd serving "echo" with token tok, connected to kasd at addr and
// trusting pool, until the test ends; it returns the agent and its metrics registry.
func startEchoAgent(t *testing.T, addr, tok string, pool *x509.CertPool) (*agentd.Agent, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	nop := zerolog.Nop()
	agent, err := agentd.New(agentd.Config{KasAddresses: []string{addr}, Token: tok, Connections: 1,
		TLS: &tls.Config{RootCAs: pool}, Handlers: map[string]agentd.ServiceHandler{"echo": echoService{}},
		Log: &nop, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return agent, reg
}
