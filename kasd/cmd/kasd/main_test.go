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

// TestEnvironment: KASD_<FLAG> sets a flag; the command line wins over it, and it wins over the
// config file (which it may name: KASD_CONFIG).
func TestEnvironment(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "kasd.yaml")
	if err := os.WriteFile(cfg, []byte("route-timeout: 9s\ndrain-delay: 2s\nmax-connections-per-agent: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KASD_CONFIG", cfg)
	t.Setenv("KASD_ROUTE_TIMEOUT", "7s")
	t.Setenv("KASD_MAX_CONNECTIONS_PER_AGENT", "6")
	t.Setenv("KASD_FLEET", "false")
	t.Setenv("KASD_TLS_HOSTS", "a.example, b.example")
	t.Setenv("KASD_PORT", "tcp://10.0.0.1:8151") // a Kubernetes service link, not a flag
	o, err := parseFlags([]string{"--max-connections-per-agent", "4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.config != cfg || o.routeTimeout != 7*time.Second || o.drainDelay != 2*time.Second || o.maxConnsPerAgent != 4 || o.fleet.enabled {
		t.Fatalf("config=%q route-timeout=%v drain-delay=%v max-connections-per-agent=%d fleet=%v",
			o.config, o.routeTimeout, o.drainDelay, o.maxConnsPerAgent, o.fleet.enabled)
	}
	if strings.Join(o.tlsHosts, " ") != "a.example b.example" {
		t.Fatalf("tls-hosts %q", o.tlsHosts)
	}
}

func TestEnvironmentBadValue(t *testing.T) {
	t.Setenv("KASD_SHUTDOWN_GRACE", "forever")
	err := run(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "KASD_SHUTDOWN_GRACE") {
		t.Fatalf("err = %v, want one naming KASD_SHUTDOWN_GRACE", err)
	}
}

func TestVersion(t *testing.T) {
	out := captureStdout(t, func() {
		if err := run(context.Background(), []string{"--version"}); err != nil {
			t.Fatal(err)
		}
	})
	want := buildinfo.Get(version, revision)
	if out != want.String("kasd")+"\n" || !strings.Contains(out, " (revision ") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version printed %q", out)
	}
	obs := startKasd(t)
	_, metrics := status(t, "http://"+obs+"/metrics")
	if !strings.Contains(metrics, `kasd_build_info{goversion="go1.`) || !strings.Contains(metrics, `version="`+want.Version+`"} 1`) {
		t.Fatalf("no kasd_build_info on /metrics")
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

// TestGOMAXPROCSFlag: --gomaxprocs takes auto (the default), runtime or a number, and refuses
// anything else by name.
func TestGOMAXPROCSFlag(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.gomaxprocs.String() != "auto" {
		t.Fatalf("default --gomaxprocs = %v, %v; want auto", o.gomaxprocs, err)
	}
	if o, err = parseFlags([]string{"--gomaxprocs", "3"}, io.Discard); err != nil || o.gomaxprocs.String() != "3" {
		t.Fatalf("--gomaxprocs 3: %v, %v", o.gomaxprocs, err)
	}
	t.Setenv("KASD_GOMAXPROCS", "two")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "KASD_GOMAXPROCS") {
		t.Fatalf("KASD_GOMAXPROCS=two: err = %v, want one naming the variable", err)
	}
}

// TestGOGCFlag: --gogc takes auto (the default), runtime or a number, and refuses anything else
// by name.
func TestGOGCFlag(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil || o.gogc.String() != "auto" {
		t.Fatalf("default --gogc = %v, %v; want auto", o.gogc, err)
	}
	if o, err = parseFlags([]string{"--gogc", "50"}, io.Discard); err != nil || o.gogc.String() != "50" {
		t.Fatalf("--gogc 50: %v, %v", o.gogc, err)
	}
	t.Setenv("KASD_GOGC", "off")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "KASD_GOGC") {
		t.Fatalf("KASD_GOGC=off: err = %v, want one naming the variable", err)
	}
}
