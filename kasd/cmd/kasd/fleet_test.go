package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/qkas/qkas/auth"
	"github.com/qkas/qkas/registry"
)

// fleetKasd runs kasd in-process in a fleet on the embedded etcd at etcdAddr (started by the
// first kasd, joined by the next ones, as on one machine with the defaults). ready reports
// whether it became ready; otherwise err is what run returned.
func fleetKasd(t *testing.T, etcdAddr string, extra ...string) (ready bool, err error) {
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	args := append([]string{"--data-dir", filepath.Join(dir, "data"),
		"--agent-tokens-file", tokens, "--api-jwt-secret-file", secret, "--log-level", "error", "--log-format", "json",
		"--agent-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--observability-listen", obs,
		"--peer-listen", "127.0.0.1:0", "--embedded-etcd-listen", etcdAddr, "--embedded-etcd-peer-listen", freeAddr(t),
		"--registry-ttl", "2s", "--shutdown-grace", "1s"}, extra...)
	go func() { done <- run(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("kasd did not stop")
		}
	})
	for i := 0; i < 400; i++ {
		if resp, err := http.Get("http://" + obs + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return true, nil
			}
		}
		select {
		case err := <-done:
			done <- nil // for Cleanup
			return false, err
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("kasd neither ready nor exited")
	return false, nil
}

// fleetsInEtcd returns the fleet ids with an instance key under /qkas/fleets/, and how many.
func fleetsInEtcd(t *testing.T, etcdAddr string) map[string]int {
	t.Helper()
	c, err := registry.NewClient(registry.ClientConfig{Endpoints: []string{"http://" + etcdAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "/qkas/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	re := regexp.MustCompile(`^/qkas/fleets/([^/]+)/instances/[^/]+$`)
	for _, kv := range resp.Kvs {
		m := re.FindStringSubmatch(string(kv.Key))
		if m == nil {
			if !strings.HasPrefix(string(kv.Key), "/qkas/fleets/") {
				t.Errorf("key %s outside /qkas/fleets/", kv.Key)
			}
			continue
		}
		out[m[1]]++
	}
	return out
}

// Two kasd on one machine with the defaults (each generates its peer secret in its own data
// dir, the second joins the first one's embedded etcd) are two fleets with derived fleet ids,
// each under its own keys: the second no longer joins the first and serves 502s.
func TestTwoKasdOnOneMachineAreTwoFleets(t *testing.T) {
	etcd := freeAddr(t)
	if ok, err := fleetKasd(t, etcd); !ok {
		t.Fatalf("first kasd: %v", err)
	}
	if ok, err := fleetKasd(t, etcd); !ok {
		t.Fatalf("second kasd: %v", err)
	}
	var fleets map[string]int
	deadline := time.Now().Add(10 * time.Second)
	for fleets = fleetsInEtcd(t, etcd); len(fleets) != 2 && time.Now().Before(deadline); fleets = fleetsInEtcd(t, etcd) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(fleets) != 2 {
		t.Fatalf("fleets in etcd: %v, want two with one instance each", fleets)
	}
	for id, n := range fleets {
		if n != 1 || !regexp.MustCompile(`^f-[0-9a-f]{16}$`).MatchString(id) {
			t.Errorf("fleet %q has %d instances, want a derived id with 1", id, n)
		}
	}
}

// The same --fleet-id with another peer secret: the second kasd refuses to join, saying why,
// and leaves no key behind; with the fleet's secret it joins.
func TestKasdWithAnotherSecretRefusesToJoin(t *testing.T) {
	etcd := freeAddr(t)
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.secret"), filepath.Join(dir, "bad.secret")
	for _, f := range []string{good, bad} {
		if err := os.WriteFile(f, []byte(auth.NewSecret()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := fleetKasd(t, etcd, "--fleet-id", "prod", "--peer-secret-file", good); !ok {
		t.Fatalf("first kasd: %v", err)
	}
	ok, err := fleetKasd(t, etcd, "--fleet-id", "prod", "--peer-secret-file", bad)
	if ok || err == nil || !strings.Contains(err.Error(), "refusing to join") || !strings.Contains(err.Error(), `fleet "prod"`) ||
		!strings.Contains(err.Error(), "--peer-secret-file") {
		t.Fatalf("kasd with another secret: ready=%v err=%v", ok, err)
	}
	t.Logf("refused: %v", err)
	if fleets := fleetsInEtcd(t, etcd); fleets["prod"] != 1 {
		t.Fatalf("fleets in etcd after the refusal: %v, want prod with 1 instance", fleets)
	}
	if ok, err := fleetKasd(t, etcd, "--fleet-id", "prod", "--peer-secret-file", good); !ok {
		t.Fatalf("a replica with the fleet's secret: %v", err)
	}
	if ok, err := fleetKasd(t, etcd, "--fleet-id", "bad/id"); ok || err == nil || !strings.Contains(err.Error(), "--fleet-id") {
		t.Fatalf("--fleet-id bad/id: ready=%v err=%v", ok, err)
	}
}
