package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/internal/freeport"
	"github.com/qkas/qkas/kasd"
)

// freeAddr is a loopback TCP address for a listen flag (internal/freeport: below the
// ephemeral range, which other tests' connections draw from).
func freeAddr(t *testing.T) string { return freeport.TCP(t) }

// freeUDPAddr returns a loopback UDP address free a moment ago.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

// startKasd runs a standalone kasd in-process with extra flags and returns its observability
// address; it is stopped when the test ends.
func startKasd(t *testing.T, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	secret := filepath.Join(dir, "jwt.secret")
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(secret, []byte(auth.NewSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokens, []byte("agents: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	obs := freeAddr(t)
	args := append([]string{"--fleet=false", "--data-dir", filepath.Join(dir, "data"),
		"--agent-tokens-file", tokens, "--api-jwt-secret-file", secret, "--log-level", "error", "--log-format", "json",
		"--agent-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--observability-listen", obs,
		"--shutdown-grace", "1s"}, extra...)
	t.Cleanup(runKasd(t, obs, args))
	return obs
}

// runKasd runs kasd in-process with args until the returned stop is called (once), and returns
// when its /readyz on obs answers 200.
func runKasd(t *testing.T, obs string, args []string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("kasd did not stop")
			}
		})
	}
	for i := 0; ; i++ {
		if resp, err := http.Get("http://" + obs + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return stop
			}
		}
		if i > 200 {
			stop()
			t.Fatal("kasd not ready")
		}
		select {
		case err := <-done:
			done <- err // for stop
			stop()
			t.Fatalf("kasd exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func status(t *testing.T, url string) (int, string) {
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
	obs := startKasd(t)
	if code, _ := status(t, "http://"+obs+"/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ on the observability port: %d, want 404", code)
	}
	// The HTTP limits are wired and counted on /metrics.
	_, metrics := status(t, "http://"+obs+"/metrics")
	if !strings.Contains(metrics, `kasd_http_connections{server="observability"}`) {
		t.Fatalf("no kasd_http_connections on /metrics")
	}
}

func TestPprofWhenAsked(t *testing.T) {
	pp := freeAddr(t)
	obs := startKasd(t, "--pprof", "--pprof-listen", pp)
	if code, _ := status(t, "http://"+pp+"/debug/pprof/cmdline"); code != http.StatusOK {
		t.Fatalf("--pprof: /debug/pprof/cmdline %d", code)
	}
	if code, _ := status(t, "http://"+obs+"/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ on the observability port with --pprof: %d, want 404", code)
	}
}

func TestHTTPLimitFlags(t *testing.T) {
	o, err := parseFlags([]string{"--api-idle-timeout", "7s", "--observability-max-connections", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.apiHTTP.IdleTimeout != 7*time.Second || o.obsHTTP.MaxConnections != 3 {
		t.Fatalf("api %+v, observability %+v", o.apiHTTP, o.obsHTTP)
	}
	if o.apiHTTP.ReadHeaderTimeout <= 0 || o.apiHTTP.MaxHeaderBytes <= 0 || o.apiHTTP.MaxConnections <= 0 || o.obsHTTP.IdleTimeout <= 0 {
		t.Fatalf("a limit without a default: api %+v, observability %+v", o.apiHTTP, o.obsHTTP)
	}
}

// TestLimitFlagsRefuseWhatTheyWouldReplace: kasd.Config and its parts take 0 for "the
// default", so a 0 for a limit is refused, as a negative one is, instead of running with the
// default; a flag where 0 means something (none, no margin) refuses only negative values.
func TestLimitFlagsRefuseWhatTheyWouldReplace(t *testing.T) {
	for _, args := range [][]string{
		{"--api-max-connections", "0"},
		{"--api-max-header-bytes", "0"},
		{"--max-agent-connections", "0"},
		{"--max-agent-connections", "-1"},
		{"--max-incoming-streams", "0"},
		{"--route-timeout", "0s"},
		{"--shutdown-grace", "0s"},
		{"--modules-rate-per-agent", "0"},
		{"--observability-idle-timeout", "0s"},
		{"--drain-delay", "-1s"},
		{"--rebalance-tolerance", "-1"},
		{"--rebalance-tolerance", "NaN"},
		{"--udp-receive-buffer", "0"},
		// NaN passed the GitLab mode's "<= 0" check: x/time/rate then admits every request.
		{"--gitlab-rate-limit", "NaN"},
		{"--gitlab-rate-limit", "0"},
		{"--gitlab-cache-ttl", "0s"},
		{"--peer-idle-timeout", "0s"},
	} {
		_, err := parseFlags(args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want an error naming %s", args, err, args[0])
		}
	}
	o, err := parseFlags([]string{"--drain-delay", "0s", "--rebalance-tolerance", "0", "--udp-receive-buffer", "-1", "--peer-idle-timeout", "3s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.fleet.peerIdleTimeout != 3*time.Second {
		t.Errorf("--peer-idle-timeout 3s parsed as %v", o.fleet.peerIdleTimeout)
	}
	var fc kasd.FleetConfig
	o.fleet.rebalance(&fc)
	if fc.RebalanceTolerance >= 0 {
		t.Errorf("--rebalance-tolerance 0 passed as %v, want FleetConfig's negative (no margin), not 0 (the default 0.1)", fc.RebalanceTolerance)
	}
	o, err = parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o.fleet.rebalance(&fc)
	if fc.RebalanceTolerance != 0.1 {
		t.Errorf("default --rebalance-tolerance passed as %v, want 0.1", fc.RebalanceTolerance)
	}
}

// TestPeerAdvertiseAddressValidated: --peer-advertise-address is what every other replica dials
// to forward to this one. A value without a port (--peer-advertise-address=10.0.0.5, or an IPv6
// $(POD_IP):8152 without brackets) was published as it was: this kasd started and was ready, and
// every request another replica forwarded to it failed with 502 "peer unreachable", logged only
// by the others. It is refused at start, naming the flag.
func TestPeerAdvertiseAddressValidated(t *testing.T) {
	for _, bad := range []string{"10.0.0.5", "fd00::1:8152", ":8152", "10.0.0.5:0", "10.0.0.5:70000", "10.0.0.5:nosuchservice"} {
		if _, err := parseFlags([]string{"--peer-advertise-address", bad}, io.Discard); err == nil || !strings.Contains(err.Error(), "--peer-advertise-address") {
			t.Errorf("--peer-advertise-address %q: %v, want an error naming the flag", bad, err)
		}
	}
	for _, good := range []string{"", "10.0.0.5:8152", "[fd00::1]:8152", "kasd-0.kasd:8152"} {
		if _, err := parseFlags([]string{"--peer-advertise-address", good}, io.Discard); err != nil {
			t.Errorf("--peer-advertise-address %q: %v", good, err)
		}
	}
}

// TestEmptyListenAddressRefused: an empty --api-listen, --agent-listen, --observability-listen
// or --peer-listen (KASD_API_LISTEN=, "observability-listen:" with nothing in --config, or
// agentd's "empty disables" applied to kasd) made kasd listen on a random port of every
// interface and report itself started. It is refused, naming the flag.
func TestEmptyListenAddressRefused(t *testing.T) {
	for _, name := range []string{"agent-listen", "api-listen", "observability-listen", "peer-listen"} {
		if _, err := parseFlags([]string{"--" + name, ""}, io.Discard); err == nil || !strings.Contains(err.Error(), "--"+name) {
			t.Errorf("--%s \"\": %v, want an error naming the flag", name, err)
		}
		if _, err := parseFlags([]string{"--" + name, "127.0.0.1:0"}, io.Discard); err != nil {
			t.Errorf("--%s 127.0.0.1:0: %v", name, err)
		}
	}
}

// TestTLSHostsValidated: --tls-hosts entries that no certificate name can be (a URL, a
// host:port) were written into the development certificate as they were, and agents dialling
// the host could not verify it; with --tls-cert-file the flag was ignored in silence.
func TestTLSHostsValidated(t *testing.T) {
	for _, bad := range []string{"https://kas.example.com", "kas.example.com:8150", "kas example", "-kas.example.com", "kas..example.com", "kas-1.internal."} {
		if _, err := parseFlags([]string{"--tls-hosts", bad}, io.Discard); err == nil || !strings.Contains(err.Error(), "--tls-hosts") {
			t.Errorf("--tls-hosts %q: %v, want an error naming the flag", bad, err)
		}
	}
	for _, good := range []string{"kas.example.com", "kas", "*.kas.example.com", "10.0.0.7", "fd00::7", "KAS.example.com"} {
		if _, err := parseFlags([]string{"--tls-hosts", good}, io.Discard); err != nil {
			t.Errorf("--tls-hosts %q: %v", good, err)
		}
	}
	if _, err := parseFlags([]string{"--tls-hosts", "kas.example.com", "--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"}, io.Discard); err == nil || !strings.Contains(err.Error(), "no effect") {
		t.Errorf("--tls-hosts with --tls-cert-file: %v", err)
	}
}

// The replicas of a fleet given one --peer-secret-file share their stateless reset key (each its
// own --data-dir), so that the replica a dead kasd's agents reach next resets their connections
// at once; without a shared secret (or without a fleet) each data dir keeps a key of its own,
// the same across restarts.
func TestStatelessResetKeySharedByFleet(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "peer.secret")
	if err := os.WriteFile(secret, []byte(auth.NewSecret()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := func(args ...string) [32]byte {
		t.Helper()
		o, err := parseFlags(append([]string{"--data-dir", t.TempDir()}, args...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		k, err := statelessResetKey(o, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		return *k
	}
	a, b := key("--peer-secret-file", secret), key("--peer-secret-file", secret)
	if a != b {
		t.Error("two replicas with the same --peer-secret-file have different stateless reset keys")
	}
	if c := key("--peer-secret-file", secret, "--fleet=false"); c == a {
		t.Error("a standalone kasd took its reset key from a peer secret it does not use")
	}
	if d1, d2 := key(), key(); d1 == d2 {
		t.Error("two data dirs without a shared secret have the same reset key")
	}
	dir := t.TempDir()
	o, err := parseFlags([]string{"--data-dir", dir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := statelessResetKey(o, zerolog.Nop())
	k2, _ := statelessResetKey(o, zerolog.Nop())
	if *k1 != *k2 {
		t.Error("a data dir's reset key changed across restarts")
	}
}
