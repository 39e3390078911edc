package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/quic"
)

// TestAgentResumesTLSAfterRestart: a real agentd reconnects to a restarted kasd (same data
// directory, so the same development key) by resuming its TLS session, and both sides count
// it; a kasd restarted with --tls-session-resumption=false makes it a full handshake.
func TestAgentResumesTLSAfterRestart(t *testing.T) {
	dir := t.TempDir()
	tok := auth.NewAgentToken()
	secret, tokens := filepath.Join(dir, "jwt.secret"), filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(secret, []byte(auth.NewSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokens, []byte("agents:\n- id: a1\n  token_sha256: "+auth.TokenSHA256(tok)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agentAddr := freeUDPAddr(t)
	obs := freeAddr(t)
	start := func(extra ...string) (stop func()) {
		t.Helper()
		return runKasd(t, obs, append([]string{"--fleet=false", "--data-dir", filepath.Join(dir, "data"),
			"--agent-tokens-file", tokens, "--api-jwt-secret-file", secret, "--log-level", "error", "--log-format", "json",
			"--agent-listen", agentAddr, "--agent-listen-tcp", "off", "--api-listen", "127.0.0.1:0",
			"--observability-listen", obs, "--shutdown-grace", "1s"}, extra...))
	}

	stop := start()
	caPEM, err := os.ReadFile(filepath.Join(dir, "data", quic.DevCAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	agent, reg := startEchoAgent(t, agentAddr, tok, pool)
	resumed := func() float64 { return gathered(t, reg, "agentd_tls_resumptions_total") }
	waitUntil(t, "the agent to connect", func() bool { return agent.Connected() == 1 })
	if n := resumed(); n != 0 {
		t.Fatalf("first connection resumed (%v)", n)
	}
	// The ticket follows the handshake within a round trip; the agent connected a moment ago.
	time.Sleep(200 * time.Millisecond)

	stop()
	stop = start()
	waitUntil(t, "the agent to reconnect by resuming its session", func() bool { return agent.Connected() == 1 && resumed() == 1 })
	if n := metric(t, obs, "kasd_agent_tls_resumptions_total"); n != 1 {
		t.Errorf("kasd_agent_tls_resumptions_total = %v after the restart, want 1", n)
	}
	time.Sleep(200 * time.Millisecond)

	stop()
	stop = start("--tls-session-resumption=false")
	defer stop()
	waitUntil(t, "the agent to reconnect", func() bool {
		return agent.Connected() == 1 && metric(t, obs, `kasd_agent_connections_total{result="accepted"}`) == 1
	})
	if n := resumed(); n != 1 {
		t.Errorf("agentd_tls_resumptions_total = %v after a restart without tickets, want still 1", n)
	}
	if n := metric(t, obs, "kasd_agent_tls_resumptions_total"); n != 0 {
		t.Errorf("kasd without tickets resumed %v sessions", n)
	}
}

// gathered returns the value of the unlabelled counter name in reg, 0 if absent.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
