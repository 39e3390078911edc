package certreload_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qkas/qkas/internal/certreload"
	"github.com/qkas/qkas/quic"
)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{cert: c, key: key}
}

func (c *ca) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})
}

// issue returns PEM certificate and key for 127.0.0.1, valid until notAfter.
func (c *ca) issue(t *testing.T, serial int64, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	return c.issueFrom(t, serial, time.Now().Add(-2*time.Hour), notAfter)
}

// issueFrom is issue with a NotBefore.
func (c *ca) issueFrom(t *testing.T, serial int64, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "kasd"},
		NotBefore: notBefore, NotAfter: notAfter,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func serialOf(t *testing.T, k *certreload.KeyPair) int64 {
	t.Helper()
	c, err := k.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.Int64()
}

// TestKeyPairReload: a good pair replaces the one in use (ok), the same files are unchanged,
// and every bad case (garbage, a key of another certificate, an expired certificate) keeps the
// pair in use and counts an error; the expiry gauge follows the pair in use.
func TestKeyPairReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	a := newCA(t, "a")
	c1, k1 := a.issue(t, 1, time.Now().Add(time.Hour))
	write(t, certFile, c1)
	write(t, keyFile, k1)
	reg := prometheus.NewRegistry()
	m, err := certreload.NewMetrics(reg, "test")
	if err != nil {
		t.Fatal(err)
	}
	k, err := certreload.NewKeyPair(certreload.KeyPairConfig{Name: "agent", CertFile: certFile, KeyFile: keyFile, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	count := func(result string) float64 {
		return series(t, reg, "test_tls_reloads_total", "agent", result)
	}
	notAfter2 := time.Now().Add(3 * time.Hour).Truncate(time.Second)
	c2, k2 := a.issue(t, 2, notAfter2)
	write(t, certFile, c2)
	write(t, keyFile, k2)
	if err := k.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := serialOf(t, k); got != 2 {
		t.Fatalf("serial %d after reload, want 2", got)
	}
	if err := k.Reload(); err != nil || count("unchanged") != 1 || count("ok") != 1 {
		t.Fatalf("reload of the same files: %v, unchanged %v ok %v", err, count("unchanged"), count("ok"))
	}
	c3, k3 := a.issue(t, 3, time.Now().Add(time.Hour))
	expired, expiredKey := a.issue(t, 4, time.Now().Add(-time.Minute))
	for name, files := range map[string][2][]byte{
		"garbage":       {[]byte("not a certificate"), k3},
		"another's key": {c3, k1},
		"expired":       {expired, expiredKey},
	} {
		write(t, certFile, files[0])
		write(t, keyFile, files[1])
		if err := k.Reload(); err == nil {
			t.Errorf("%s: reload succeeded", name)
		}
		if got := serialOf(t, k); got != 2 {
			t.Fatalf("%s: serial %d in use, want 2 (kept)", name, got)
		}
	}
	if count("error") != 3 {
		t.Errorf("errors counted %v, want 3", count("error"))
	}
	exp := series(t, reg, "test_tls_cert_expiry_timestamp_seconds", "agent")
	if exp != float64(notAfter2.Unix()) {
		t.Errorf("expiry %v, want %v", exp, notAfter2.Unix())
	}
}

// A certificate that has expired, or is not valid yet, is refused at start as it is on a
// reload: a daemon started on one was ready, and every handshake failed with nothing logged. A
// NotBefore a minute ahead (clocks apart) is taken.
func TestNewKeyPairRefusesOutsideValidity(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	a := newCA(t, "a")
	now := time.Now()
	for _, tc := range []struct {
		name                string
		notBefore, notAfter time.Time
		wantErr             string
	}{
		{"expired", now.Add(-2 * time.Hour), now.Add(-time.Minute), "expired at"},
		{"not yet valid", now.Add(time.Hour), now.Add(2 * time.Hour), "not valid before"},
		{"a minute ahead", now.Add(time.Minute), now.Add(2 * time.Hour), ""},
	} {
		c, k := a.issueFrom(t, 1, tc.notBefore, tc.notAfter)
		write(t, certFile, c)
		write(t, keyFile, k)
		_, err := certreload.NewKeyPair(certreload.KeyPairConfig{Name: "agent", CertFile: certFile, KeyFile: keyFile})
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestWatchRotation: Watch sees a pair replaced by rename (no signal), and a signal reloads a
// file rewritten in place; it returns when its context ends.
func TestWatchRotation(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	a := newCA(t, "a")
	c1, k1 := a.issue(t, 1, time.Now().Add(time.Hour))
	write(t, certFile, c1)
	write(t, keyFile, k1)
	k, err := certreload.NewKeyPair(certreload.KeyPairConfig{Name: "agent", CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- certreload.Watch(ctx, hup, nil, k) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	c2, k2 := a.issue(t, 2, time.Now().Add(time.Hour))
	// Watch places its inotify watch in its own goroutine: a rename before that is not seen
	// (CI once renamed first). Rename again every half second until the new pair is in use;
	// still no signal.
	var renamed time.Time
	waitFor(t, "the renamed files", func() bool {
		if time.Since(renamed) > 500*time.Millisecond {
			write(t, keyFile, k2)
			write(t, certFile, c2)
			renamed = time.Now()
		}
		return serialOf(t, k) == 2
	})
}

// TestCAPoolDial: agentd's path. A dialer whose quic.Config.RootCAs is a CAPool verifies with
// the bundle in use at each dial: a kasd certificate from a new CA is refused until the bundle
// naming that CA is reloaded, then accepted; a bad bundle keeps the one in use.
func TestCAPoolDial(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "ca.pem")
	oldCA, newCA := newCA(t, "old"), newCA(t, "new")
	write(t, bundle, oldCA.pem())
	reg := prometheus.NewRegistry()
	m, _ := certreload.NewMetrics(reg, "test")
	pool, err := certreload.NewCAPool(certreload.CAPoolConfig{Name: "ca", File: bundle, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := newCA.issue(t, 7, time.Now().Add(time.Hour))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, "test"), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := quic.NewDialer(&tls.Config{NextProtos: []string{"test"}}, quic.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		qc, err := d.Dial(ctx, ln.Addr().String())
		if err == nil {
			_ = qc.CloseWithError(0, "")
		}
		return err
	}
	if err := dial(); err == nil {
		t.Fatal("a certificate of a CA not in the bundle was accepted")
	}
	write(t, bundle, append(oldCA.pem(), newCA.pem()...))
	if err := pool.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err != nil {
		t.Fatalf("dial after the bundle was reloaded: %v", err)
	}
	write(t, bundle, []byte("garbage"))
	if err := pool.Reload(); err == nil {
		t.Fatal("a bundle without a certificate was accepted")
	}
	if err := dial(); err != nil {
		t.Fatalf("a bad bundle replaced the one in use: %v", err)
	}
	if got := series(t, reg, "test_tls_reloads_total", "ca", "error"); got != 1 {
		t.Errorf("errors counted %v, want 1", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// series is the value of the series of reg named name with the label values values.
func series(t *testing.T, reg *prometheus.Registry, name string, values ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i, l := range m.GetLabel() {
				if i >= len(values) || l.GetValue() != values[i] {
					continue metrics
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}
