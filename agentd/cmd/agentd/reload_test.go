package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qkas/qkas/api"
)

// TestReloadWiring: agentd reloads its services when --config changes and on SIGHUP; a bad file
// is counted as an error and agentd keeps running with its services.
func TestReloadWiring(t *testing.T) {
	dir := t.TempDir()
	tok, cfg := filepath.Join(dir, "token"), filepath.Join(dir, "agentd.yaml")
	if err := os.WriteFile(tok, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("services: {web: http://127.0.0.1:1}\n")
	obs := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", cfg, "--kas-address", "127.0.0.1:1", "--token-file", tok, "--kubernetes=false",
			"--gitlab-proxy-listen", "", "--observability-listen", obs, "--drain-timeout", "1s", "--log-level", "error", "--log-format", "json"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	metric := func(result string) string {
		resp, err := http.Get("http://" + obs + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(line, `agentd_config_reloads_total{result="`+result+`"}`) {
				return strings.Fields(line)[1]
			}
		}
		return "0"
	}
	waitMetric := func(result, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for metric(result) != want {
			if time.Now().After(deadline) {
				t.Fatalf("agentd_config_reloads_total{result=%q} = %q, want %s", result, metric(result), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitMetric("ok", "0") // serving
	time.Sleep(100 * time.Millisecond)

	write("services: {web: http://127.0.0.1:1, api: http://127.0.0.1:2}\n")
	waitMetric("ok", "1")
	write("services: {web: ftp://127.0.0.1:1}\n")
	waitMetric("error", "1")
	write("services: {web: [not a url}\n")
	waitMetric("error", "2")
	var many strings.Builder // more services than kasd accepts (api.MaxServices)
	many.WriteString("services:\n")
	for i := range api.MaxServices + 1 {
		fmt.Fprintf(&many, "  s%d: http://127.0.0.1:1\n", i)
	}
	write(many.String())
	waitMetric("error", "3")
	write("services: {web: http://127.0.0.1:1, api: http://127.0.0.1:2}\n")
	waitMetric("ok", "1")
	waitMetric("unchanged", "1")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitMetric("unchanged", "2")
	select {
	case err := <-done:
		done <- err
		t.Fatalf("agentd exited: %v", err)
	default:
	}
}
