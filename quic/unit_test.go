package quic

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestConfig(t *testing.T) {
	d := Config{}.WithDefaults()
	want := Config{
		HandshakeTimeout: 5 * time.Second, KeepAlivePeriod: 2 * time.Second, MaxIdleTimeout: 6 * time.Second,
		MaxIncomingStreams: 10000, InitialStreamReceiveWindow: 256 << 10, MaxStreamReceiveWindow: 16 << 20,
		InitialConnectionReceiveWindow: 32 << 20, MaxConnectionReceiveWindow: 64 << 20, MaxAckDelay: time.Millisecond,
		SocketReceiveBuffer: 7 << 20, SocketSendBuffer: 7 << 20,
	}
	if d != want {
		t.Errorf("defaults = %+v, want %+v", d, want)
	}
	q := Config{}.QUICConfig()
	if q.MaxIncomingUniStreams != -1 || q.MaxIncomingStreams != 10000 || q.MaxIdleTimeout != 6*time.Second ||
		q.KeepAlivePeriod != 2*time.Second || q.HandshakeIdleTimeout != 5*time.Second ||
		q.InitialStreamReceiveWindow != 256<<10 || q.MaxConnectionReceiveWindow != 64<<20 {
		t.Errorf("QUICConfig = %+v", q)
	}
	if got := (Config{MaxIdleTimeout: 600 * time.Millisecond}).WithDefaults().KeepAlivePeriod; got != 200*time.Millisecond {
		t.Errorf("default KeepAlivePeriod with a short idle timeout = %v, want 200ms", got)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"zero", Config{}, true},
		{"keepalive not below idle", Config{KeepAlivePeriod: 6 * time.Second, MaxIdleTimeout: 6 * time.Second}, false},
		{"negative handshake", Config{HandshakeTimeout: -1}, false},
		{"negative streams", Config{MaxIncomingStreams: -1}, false},
		{"initial stream window above max", Config{InitialStreamReceiveWindow: 32 << 20}, false},
		{"initial conn window above max", Config{InitialConnectionReceiveWindow: 1 << 30}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestBackoff(t *testing.T) {
	ms := time.Millisecond
	fixed := func(v float64) func() float64 { return func() float64 { return v } }
	for _, tc := range []struct {
		name string
		b    Backoff
		want []time.Duration // for attempts 0, 1, ...
	}{
		{"defaults, no jitter", Backoff{Jitter: -1}, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 6400 * ms, 10000 * ms, 10000 * ms}},
		{"middle of jitter range is exact", Backoff{Rand: fixed(0.5)}, []time.Duration{100 * ms, 200 * ms, 400 * ms}},
		{"lowest jitter", Backoff{Rand: fixed(0)}, []time.Duration{80 * ms, 160 * ms, 320 * ms}},
		{"highest jitter capped at Max", Backoff{Initial: 10 * ms, Max: 50 * ms, Multiplier: 3, Jitter: 0.5, Rand: fixed(1)}, []time.Duration{15 * ms, 45 * ms, 50 * ms, 50 * ms}},
		{"multiplier below 1 is constant", Backoff{Multiplier: 0.5, Jitter: -1}, []time.Duration{100 * ms, 100 * ms}},
	} {
		for attempt, want := range tc.want {
			if got := tc.b.Delay(attempt); got != want {
				t.Errorf("%s: Delay(%d) = %v, want %v", tc.name, attempt, got, want)
			}
		}
	}
	if got := (Backoff{Jitter: -1}).Delay(1 << 20); got != 10*time.Second {
		t.Errorf("Delay(huge) = %v, want Max", got)
	}
	if got := (Backoff{Jitter: -1}).Delay(-3); got != 100*ms {
		t.Errorf("Delay(-3) = %v, want Initial", got)
	}
	// Real randomness stays within the jitter bounds.
	for attempt := range 10 {
		base := min(100*ms<<attempt, 10*time.Second)
		for range 100 {
			d := Backoff{}.Delay(attempt)
			lo, hi := time.Duration(float64(base)*0.8), min(time.Duration(float64(base)*1.2), 10*time.Second)
			if d < lo || d > hi {
				t.Fatalf("Delay(%d) = %v outside [%v, %v]", attempt, d, lo, hi)
			}
		}
	}
}

func TestBackoffSleep(t *testing.T) {
	if err := (Backoff{Initial: time.Millisecond}).Sleep(context.Background(), 0); err != nil {
		t.Errorf("Sleep = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	if err := (Backoff{Initial: time.Hour, Max: time.Hour}).Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Sleep returned after %v, want soon after cancel", d)
	}
	if err := (Backoff{}).Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep on a done context = %v, want context.Canceled", err)
	}
}

func TestLoadOrCreateStatelessResetKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "reset.key")
	k1, err := LoadOrCreateStatelessResetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if *k1 == [32]byte{} {
		t.Error("key is all zeros")
	}
	assertMode(t, path, 0o600)
	k2, err := LoadOrCreateStatelessResetKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if *k1 != *k2 {
		t.Error("second call returned a different key")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
	bad := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(bad, []byte("too short"), 0o600)
	if _, err := LoadOrCreateStatelessResetKey(bad); err == nil {
		t.Error("accepted a 9-byte key")
	}
	if b, _ := os.ReadFile(bad); string(b) != "too short" {
		t.Error("a wrong-size key file was overwritten")
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode = %v, want %v", filepath.Base(path), got, want)
	}
}

func TestDevCertificate(t *testing.T) {
	dir := t.TempDir()
	cert1, caFile, err := DevCertificate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if caFile != filepath.Join(dir, "ca.pem") {
		t.Errorf("caFile = %s", caFile)
	}
	assertMode(t, filepath.Join(dir, "ca-key.pem"), 0o600)
	assertMode(t, filepath.Join(dir, "server-key.pem"), 0o600)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca1, server1 := read("ca.pem"), read("server.pem")

	// The chain verifies for every default SAN.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca1)
	if len(cert1.Certificate) != 2 {
		t.Fatalf("chain has %d certificates, want server + CA", len(cert1.Certificate))
	}
	leaf, err := x509.ParseCertificate(cert1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	hostname, _ := os.Hostname()
	for _, name := range []string{"localhost", "127.0.0.1", "::1", hostname} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	if d := time.Until(leaf.NotAfter); d < 360*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("server cert valid for %v, want 1 year", d)
	}

	// Restart: everything reused.
	if _, _, err := DevCertificate(dir, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read("ca.pem"), ca1) || !bytes.Equal(read("server.pem"), server1) {
		t.Error("restart re-created certificates that were still good")
	}

	// A new SAN re-issues the server certificate from the same CA, keeping the old SANs.
	cert3, _, err := DevCertificate(dir, []string{"kas.example.test", "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read("ca.pem"), ca1) {
		t.Error("CA changed")
	}
	if bytes.Equal(read("server.pem"), server1) {
		t.Error("server certificate not re-issued for a new SAN")
	}
	leaf3 := cert3.Leaf
	if !slices.Contains(leaf3.DNSNames, "kas.example.test") || !slices.Contains(leaf3.DNSNames, "localhost") ||
		!slices.ContainsFunc(leaf3.IPAddresses, net.ParseIP("10.1.2.3").Equal) {
		t.Errorf("SANs = %v %v", leaf3.DNSNames, leaf3.IPAddresses)
	}
	if _, err := leaf3.Verify(x509.VerifyOptions{Roots: roots, DNSName: "kas.example.test"}); err != nil {
		t.Errorf("re-issued cert does not verify against the same CA: %v", err)
	}

	// A deleted server certificate is re-issued; a damaged CA is an error, not replaced.
	os.Remove(filepath.Join(dir, "server.pem"))
	if _, _, err := DevCertificate(dir, nil); err != nil {
		t.Fatalf("re-issue after deletion: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("garbage"), 0o644)
	if _, _, err := DevCertificate(dir, nil); err == nil {
		t.Error("a damaged ca.pem was silently replaced")
	}
}

func TestClientTLSConfig(t *testing.T) {
	if _, err := ClientTLSConfig(filepath.Join(t.TempDir(), "missing.pem"), "", "a"); err == nil {
		t.Error("missing CA file accepted")
	}
	empty := filepath.Join(t.TempDir(), "empty.pem")
	os.WriteFile(empty, []byte("no pem here"), 0o644)
	if _, err := ClientTLSConfig(empty, "", "a"); err == nil {
		t.Error("CA file without certificates accepted")
	}
	c, err := ClientTLSConfig("", "kas.example", "a", "b")
	if err != nil || c.RootCAs != nil || c.ServerName != "kas.example" || len(c.NextProtos) != 2 || c.MinVersion != 0x0304 {
		t.Errorf("ClientTLSConfig = %+v, %v", c, err)
	}
}

func TestDeriveStatelessResetKey(t *testing.T) {
	s1 := bytes.Repeat([]byte("a"), 32)
	s2 := bytes.Repeat([]byte("b"), 32)
	k1, err := DeriveStatelessResetKey(s1)
	if err != nil {
		t.Fatal(err)
	}
	k1b, _ := DeriveStatelessResetKey(s1)
	k2, _ := DeriveStatelessResetKey(s2)
	if *k1 != *k1b || *k1 == *k2 || bytes.Equal(k1[:], s1) {
		t.Errorf("derived keys: same secret equal %v, other secret differs %v, not the secret %v", *k1 == *k1b, *k1 != *k2, !bytes.Equal(k1[:], s1))
	}
	if _, err := DeriveStatelessResetKey(s1[:16]); err == nil {
		t.Error("a 16-byte secret was accepted")
	}
}
