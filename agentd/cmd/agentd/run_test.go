package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/internal/freeport"
)

// freeAddr is a loopback TCP address for a listen flag (internal/freeport: below the
// ephemeral range, which other tests' connections draw from).
func freeAddr(t *testing.T) string { return freeport.TCP(t) }

// startAgentd runs agentd in-process (its kasd never answers) with extra flags and returns its
// observability address; it is stopped when the test ends.
func startAgentd(t *testing.T, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	obs := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	args := append([]string{"--kas-address", "127.0.0.1:1", "--token-file", tok, "--kubernetes=false", "--service", "web=http://127.0.0.1:1",
		"--gitlab-proxy-listen", "127.0.0.1:0", "--observability-listen", obs, "--drain-timeout", "1s",
		"--log-level", "error", "--log-format", "json"}, extra...)
	go func() { done <- run(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("agentd did not stop")
		}
	})
	for i := 0; ; i++ {
		if resp, err := http.Get("http://" + obs + "/healthz"); err == nil {
			resp.Body.Close()
			return obs
		}
		if i > 200 {
			t.Fatal("agentd not serving")
		}
		select {
		case err := <-done:
			done <- err // for Cleanup
			t.Fatalf("agentd exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPprofOffByDefault(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.debug.Enabled || !strings.HasPrefix(o.debug.Listen, "127.0.0.1:") {
		t.Fatalf("pprof defaults: %+v, want off and on loopback", o.debug)
	}
	obs := startAgentd(t)
	if code, _ := get(t, "http://"+obs+"/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ on the observability port: %d, want 404", code)
	}
	if code, _ := get(t, "http://"+obs+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz without kasd: %d", code)
	}
	_, metrics := get(t, "http://"+obs+"/metrics")
	if !strings.Contains(metrics, `agentd_http_connections{server="observability"}`) {
		t.Fatalf("no agentd_http_connections on /metrics")
	}
}

func TestPprofWhenAsked(t *testing.T) {
	pp := freeAddr(t)
	startAgentd(t, "--pprof", "--pprof-listen", pp)
	if code, _ := get(t, "http://"+pp+"/debug/pprof/cmdline"); code != http.StatusOK {
		t.Fatalf("--pprof: /debug/pprof/cmdline %d", code)
	}
}

func TestHTTPLimitFlags(t *testing.T) {
	o, err := parseFlags([]string{"--gitlab-proxy-idle-timeout", "7s", "--observability-max-connections", "3", "--gitlab-response-header-timeout", "90s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.gitlabProxyHTTP.IdleTimeout != 7*time.Second || o.obsHTTP.MaxConnections != 3 || o.gitlabHeaderTimeout != 90*time.Second {
		t.Fatalf("gitlab proxy %+v, observability %+v", o.gitlabProxyHTTP, o.obsHTTP)
	}
}

// TestTooManyServicesRefused: more --service than kasd accepts in a Hello stops agentd at start,
// naming the flag, instead of retrying a refused Hello for ever.
func TestTooManyServicesRefused(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--kas-address", "127.0.0.1:1", "--token-file", tok, "--kubernetes=false",
		"--gitlab-proxy-listen", "", "--observability-listen", "", "--log-level", "error", "--log-format", "json"}
	for i := range api.MaxServices + 1 {
		args = append(args, "--service", fmt.Sprintf("s%d=http://127.0.0.1:1", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := run(ctx, args)
	if err == nil || !strings.Contains(err.Error(), "--service") {
		t.Fatalf("run with %d services: %v, want an error naming --service", api.MaxServices+1, err)
	}
}

// TestLimitFlagsRefuseWhatTheyWouldReplace: agentd.Config takes 0 for "the default", so a 0 for
// a limit is refused, as a negative one is, instead of running with the default.
func TestLimitFlagsRefuseWhatTheyWouldReplace(t *testing.T) {
	for _, args := range [][]string{
		{"--kas-connections", "0"},
		{"--kas-connections", "17"},
		{"--max-idle-conns-per-service", "0"},
		{"--drain-timeout", "0s"},
		{"--drain-timeout", "-1s"},
		{"--keep-alive-period", "0s"},
		{"--quic-fallback-after", "0s"},
		{"--gitlab-proxy-max-connections", "0"},
		{"--gitlab-response-header-timeout", "0s"},
		{"--observability-max-header-bytes", "-1"},
		{"--udp-send-buffer", "0"},
	} {
		_, err := parseFlags(args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want an error naming %s", args, err, args[0])
		}
	}
	if _, err := parseFlags([]string{"--kas-connections", "16", "--udp-send-buffer", "-1"}, io.Discard); err != nil {
		t.Fatal(err)
	}
}

// TestLongReplicaRefused: a --replica longer than kasd accepts in a Hello (api.MaxReplicaLen)
// stops agentd at start, naming the flag. It started, and every Hello was refused as
// bad_request: the agent waited 30s doubling to 5 minutes between attempts, for ever, never
// ready.
func TestLongReplicaRefused(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--kas-address", "127.0.0.1:1", "--token-file", tok, "--kubernetes=false", "--service", "web=http://127.0.0.1:1",
		"--gitlab-proxy-listen", "", "--observability-listen", "", "--log-level", "error", "--log-format", "json",
		"--replica", strings.Repeat("r", api.MaxReplicaLen+1)}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := run(ctx, args)
	if err == nil || !strings.Contains(err.Error(), "--replica") {
		t.Fatalf("run with a %d-byte --replica: %v, want an error naming --replica", api.MaxReplicaLen+1, err)
	}
}

// A configuration with several problems is printed one per line, each prefixed "agentd:" once.
func TestPrintErrorOnePrefixPerLine(t *testing.T) {
	var b strings.Builder
	printError(&b, fmt.Errorf("agentd: %w", errors.Join(errors.New("at least one kas address is required (--kas-address)"), errors.New("at least one service is required (--service)"))))
	want := "agentd: at least one kas address is required (--kas-address)\nagentd: at least one service is required (--service)\n"
	if b.String() != want {
		t.Errorf("printed %q, want %q", b.String(), want)
	}
}

// A --service URL without a scheme is refused saying what is wanted, not with Go's URL parser's
// "first path segment in URL cannot contain colon" (operator review).
func TestServiceURLWithoutSchemeExplained(t *testing.T) {
	_, err := parseServices([]string{"m=127.0.0.1:9090"})
	if err == nil || !strings.Contains(err.Error(), "want http(s)://host[:port][/path]") {
		t.Fatalf("got %v", err)
	}
}
