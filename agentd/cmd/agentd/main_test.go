package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qkas/qkas/internal/buildinfo"
)

// TestEnvironment: AGENTD_<FLAG> sets a flag; the command line wins over it, and it wins over
// the config file (which it may name: AGENTD_CONFIG). Repeatable flags take a comma-separated
// list, and a list given in the environment replaces the file's.
func TestEnvironment(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "agentd.yaml")
	if err := os.WriteFile(cfg, []byte("services: {file: 'http://file'}\ndrain-timeout: 9s\nkas-connections: 5\nreplica: from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AGENTD_CONFIG", cfg)
	t.Setenv("AGENTD_SERVICE", "web=http://web:8080,api=http://api:8080")
	t.Setenv("AGENTD_KAS_ADDRESS", "kas-0:8150, kas-1:8150")
	t.Setenv("AGENTD_DRAIN_TIMEOUT", "7s")
	t.Setenv("AGENTD_KAS_CONNECTIONS", "3")
	o, err := parseFlags([]string{"--kas-connections", "4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.drainTimeout != 7*time.Second || o.connections != 4 || o.replica != "from-file" {
		t.Fatalf("drain-timeout=%v kas-connections=%d replica=%q", o.drainTimeout, o.connections, o.replica)
	}
	if got := strings.Join(o.services, " "); got != "web=http://web:8080 api=http://api:8080" {
		t.Fatalf("services %q, want the environment's only", got)
	}
	if got := strings.Join(o.kasAddresses, " "); got != "kas-0:8150 kas-1:8150" {
		t.Fatalf("kas-address %q", got)
	}
}

func TestEnvironmentBadValue(t *testing.T) {
	t.Setenv("AGENTD_KAS_CONNECTIONS", "two")
	err := run(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "AGENTD_KAS_CONNECTIONS") {
		t.Fatalf("err = %v, want one naming AGENTD_KAS_CONNECTIONS", err)
	}
}

func TestVersion(t *testing.T) {
	out := captureStdout(t, func() {
		if err := run(context.Background(), []string{"--version"}); err != nil {
			t.Fatal(err)
		}
	})
	want := buildinfo.Get(version, revision)
	if out != want.String("agentd")+"\n" || !strings.Contains(out, " (revision ") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version printed %q", out)
	}
	obs := startAgentd(t)
	_, metrics := get(t, "http://"+obs+"/metrics")
	if !strings.Contains(metrics, `agentd_build_info{goversion="go1.`) || !strings.Contains(metrics, `version="`+want.Version+`"} 1`) {
		t.Fatalf("no agentd_build_info on /metrics")
	}
}

// captureStdout returns what f printed on os.Stdout.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	defer func() { os.Stdout = old }()
	f()
	w.Close()
	b, _ := io.ReadAll(r)
	return string(b)
}

// TestUsageExampleIsAgentdFlag: the help's example of an environment variable names a flag
// agentd has (it showed kasd's --route-timeout).
func TestUsageExampleIsAgentdFlag(t *testing.T) {
	var b strings.Builder
	if _, err := parseFlags([]string{"-h"}, &b); err == nil {
		t.Fatal("-h: no flag.ErrHelp")
	}
	if !strings.Contains(b.String(), "--kas-address is AGENTD_KAS_ADDRESS") || strings.Contains(b.String(), "route-timeout") {
		t.Fatalf("usage:\n%s", b.String())
	}
}
