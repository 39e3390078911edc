package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/quic"
)

// A draining kasd (SIGTERM, during --drain-delay and the grace) answers a new agent connection
// at once with shutting_down, so the agent dials another kasd. Its accept loop used to stop at
// the signal while the listener stayed open until the end of the drain: QUIC handshakes
// completed and the agent waited its whole handshake timeout (10 s) for an answer, then backed
// off for up to a minute.
func TestDrainingKasdRefusesNewAgentsAtOnce(t *testing.T) {
	dir := t.TempDir()
	secret, tokens := filepath.Join(dir, "jwt.secret"), filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(secret, []byte(auth.NewSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokens, []byte("agents: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agentAddr, obs := freeUDPAddr(t), freeAddr(t)
	stop := runKasd(t, obs, []string{"--fleet=false", "--data-dir", filepath.Join(dir, "data"),
		"--agent-tokens-file", tokens, "--api-jwt-secret-file", secret, "--log-level", "error", "--log-format", "json",
		"--agent-listen", agentAddr, "--agent-listen-tcp", "off", "--api-listen", "127.0.0.1:0",
		"--observability-listen", obs, "--shutdown-grace", "1s", "--drain-delay", "5s"})
	stopped := make(chan struct{})
	go func() { defer close(stopped); stop() }() // SIGTERM: the drain begins, then 5 s of drain delay
	t.Cleanup(func() { <-stopped })
	waitUntil(t, "/readyz to fail", func() bool {
		resp, err := http.Get("http://" + obs + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})

	tlsConf, err := quic.ClientTLSConfig(filepath.Join(dir, "data", quic.DevCAFile), "localhost", api.ALPNAgent)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	qc, err := quicgo.DialAddr(ctx, agentAddr, tlsConf, &quicgo.Config{})
	if err != nil {
		t.Fatalf("dial during the drain: %v", err)
	}
	defer qc.CloseWithError(0, "")
	select {
	case <-qc.Context().Done():
	case <-ctx.Done():
		t.Fatal("a draining kasd left a new agent connection unanswered")
	}
	var ae *quicgo.ApplicationError
	if err := context.Cause(qc.Context()); !errors.As(err, &ae) || !ae.Remote ||
		(ae.ErrorCode != quic.ConnCodeRefused && ae.ErrorCode != quic.ConnCodeShutdown) || !strings.Contains(ae.ErrorMessage, "shutting_down") {
		t.Fatalf("connection ended with %v, want kasd's shutting_down refusal", err)
	}
}
