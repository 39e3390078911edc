package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/quic"
)

// gitlabModeArgs returns kasd flags for GitLab mode with the given client API and GitLab secret
// contents (GitLab itself is never called: agents authenticate lazily).
func gitlabModeArgs(t *testing.T, apiSecret, gitlabSecret string) (args []string, obs string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{"api.secret": apiSecret, "gitlab.secret": gitlabSecret} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	obs = freeAddr(t)
	return []string{"--fleet=false", "--data-dir", filepath.Join(dir, "data"),
		"--api-jwt-secret-file", filepath.Join(dir, "api.secret"),
		"--gitlab-url", "http://127.0.0.1:1", "--gitlab-auth-secret-file", filepath.Join(dir, "gitlab.secret"),
		"--log-level", "error", "--log-format", "json",
		"--agent-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--observability-listen", obs,
		"--shutdown-grace", "1s"}, obs
}

func TestSharedSecretRefused(t *testing.T) {
	secret := auth.NewSecret()
	// The same secret spelled differently (URL alphabet, no padding, a newline) is the same
	// secret: the decoded bytes are compared.
	key, err := auth.ReadSecretFile(writeTemp(t, secret))
	if err != nil {
		t.Fatal(err)
	}
	respelled := strings.TrimRight(strings.NewReplacer("+", "-", "/", "_").Replace(secret), "=") + "\n"
	if k2, err := auth.ReadSecretFile(writeTemp(t, respelled)); err != nil || !auth.SameSecret(key, k2) {
		t.Fatalf("respelled secret: %v", err)
	}
	args, _ := gitlabModeArgs(t, secret, respelled)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = run(ctx, args)
	if err == nil || !strings.Contains(err.Error(), "--api-jwt-secret-file and --gitlab-auth-secret-file hold the same secret") ||
		!strings.Contains(err.Error(), "--allow-shared-secret") {
		t.Fatalf("run = %v, want the shared-secret refusal", err)
	}
}

func TestSharedSecretAllowed(t *testing.T) {
	for name, tc := range map[string]struct {
		gitlab string
		extra  []string
	}{
		"same secret with --allow-shared-secret": {"", []string{"--allow-shared-secret"}},
		"different secrets":                      {auth.NewSecret(), nil},
	} {
		t.Run(name, func(t *testing.T) {
			secret := auth.NewSecret()
			gl := tc.gitlab
			if gl == "" {
				gl = secret
			}
			args, obs := gitlabModeArgs(t, secret, gl)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, append(args, tc.extra...)) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("run: %v", err)
				}
			}()
			for i := 0; ; i++ {
				if resp, err := http.Get("http://" + obs + "/readyz"); err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						return
					}
				}
				select {
				case err := <-done:
					done <- err
					t.Fatalf("kasd exited: %v", err)
				case <-time.After(50 * time.Millisecond):
				}
				if i > 200 {
					t.Fatal("kasd not ready")
				}
			}
		})
	}
}

func TestJWTFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.apiJWTIssuer != auth.DefaultIssuer || o.apiAllowWildcard || o.allowSharedSecret {
		t.Fatalf("defaults: issuer %q, wildcard %v, shared secret %v", o.apiJWTIssuer, o.apiAllowWildcard, o.allowSharedSecret)
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBudgetFlags: the per-agent budgets have safe defaults, and a connection window below the
// initial default is one setting (the initial window follows it) that gives a valid config.
func TestBudgetFlags(t *testing.T) {
	o, err := parseFlags([]string{"--agent-connection-window", "8388608"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.maxIncomingStreams != 100 || o.budget.streamsPerAgent != 64 || o.budget.modulesRate != 20 ||
		o.budget.authBurst != 20 || o.budget.authRate != 0.2 || o.budget.authMaxSources != 65536 {
		t.Fatalf("defaults: streams %d, %+v", o.maxIncomingStreams, o.budget)
	}
	c := quic.Config{MaxConnectionReceiveWindow: o.budget.connectionWindow, MaxStreamReceiveWindow: o.budget.streamWindow}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if d := c.WithDefaults(); d.InitialConnectionReceiveWindow != 8<<20 || d.MaxConnectionReceiveWindow != 8<<20 {
		t.Fatalf("windows: %+v", d)
	}
}
