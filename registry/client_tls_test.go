package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"

	"github.com/qkas/qkas/quic"
)

// The etcd client's TLS with reloadable material (kasd's --etcd-ca-file, --etcd-cert-file and
// --etcd-key-file under internal/certreload): each handshake verifies against the roots and
// presents the client certificate in use at that moment, so a rotation needs no restart. Real
// TLS handshakes against a server that requires a client certificate.
func TestClientTLSReloadHooks(t *testing.T) {
	serverCert, caFile := devCert(t)
	otherCert, otherCAFile := devCert(t) // another CA: its certificate is also a client certificate
	pool := func(file string) *x509.CertPool {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		p.AppendCertsFromPEM(b)
		return p
	}
	var roots atomic.Pointer[x509.CertPool]
	roots.Store(pool(caFile))
	var client atomic.Pointer[tls.Certificate]
	client.Store(&serverCert)
	cfg, err := clientTLS(ClientConfig{RootCAs: roots.Load, ClientCert: client.Load})
	if err != nil {
		t.Fatal(err)
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAnyClientCert, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan []byte, 8) // the leaf the server was shown, per accepted handshake
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				seen <- tc.ConnectionState().PeerCertificates[0].Raw
			}
			c.Close()
		}
	}()
	creds := &reloadingTLS{base: cfg, roots: roots.Load} // what NewClient hands gRPC
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	dial := func(host string) error {
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		// gRPC passes the endpoint's authority; the name verified is its host.
		conn, _, err := creds.ClientHandshake(context.Background(), net.JoinHostPort(host, port), raw)
		if err == nil {
			conn.Close()
		}
		return err
	}

	if err := dial("127.0.0.1"); err != nil {
		t.Fatalf("handshake with the right roots: %v", err)
	}
	if got := <-seen; string(got) != string(serverCert.Certificate[0]) {
		t.Error("the server was not shown the client certificate in use")
	}
	client.Store(&otherCert)
	if err := dial("127.0.0.1"); err != nil {
		t.Fatalf("handshake after the client certificate changed: %v", err)
	}
	if got := <-seen; string(got) != string(otherCert.Certificate[0]) {
		t.Error("the server was shown the old client certificate after a reload")
	}
	if err := dial("etcd.example"); err == nil {
		t.Error("a server name the certificate does not carry was accepted")
	}
	roots.Store(pool(otherCAFile))
	var unknown x509.UnknownAuthorityError
	if err := dial("127.0.0.1"); !errors.As(err, &unknown) {
		t.Errorf("handshake after the roots moved to another CA: %v, want unknown authority", err)
	}
}

// devCert is a server certificate for 127.0.0.1 from a CA of its own (quic's development CA).
func devCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	cert, caFile, err := quic.DevCertificate(t.TempDir(), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return cert, caFile
}
