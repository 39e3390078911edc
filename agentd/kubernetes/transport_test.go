package kubernetes_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/qkas/qkas/api"
)

// tlsAPIServer is a TLS API server stand-in (HTTP/2 offered, as a real one does) that accepts
// only "Bearer "+token and counts its connections and the protocols it saw.
type tlsAPIServer struct {
	*httptest.Server
	caPEM []byte
	conns atomic.Int64

	mu     sync.Mutex // guards the fields below
	token  string
	protos []string
	auths  []string
	certs  []string // the client certificate's CN per request, "" without one
}

func newTLSAPIServer(t *testing.T, token string, clientCAs *x509.CertPool) *tlsAPIServer {
	t.Helper()
	s := &tlsAPIServer{token: token}
	ca, caKey, caPEM := newTestCA(t, "test API server CA")
	s.caPEM = caPEM
	leaf := newLeaf(t, ca, caKey, "kube-apiserver", x509.ExtKeyUsageServerAuth)
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.protos = append(s.protos, r.Proto)
		s.auths = append(s.auths, r.Header.Get("Authorization"))
		cn := ""
		if len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		s.certs = append(s.certs, cn)
		ok := r.Header.Get("Authorization") == "Bearer "+s.token
		s.mu.Unlock()
		if !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"gitVersion":"v1.37.2"}`)
	}))
	s.Server.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	if clientCAs != nil {
		s.Server.TLS.ClientCAs = clientCAs
		s.Server.TLS.ClientAuth = tls.RequireAndVerifyClientCert
	}
	s.Server.EnableHTTP2 = true
	s.Server.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Server.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	s.Server.StartTLS()
	t.Cleanup(s.Server.Close)
	return s
}

func (s *tlsAPIServer) seen() (protos, auths, certs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.protos...), append([]string(nil), s.auths...), append([]string(nil), s.certs...)
}

func getVersion(t *testing.T, f *front) (int, string) {
	t.Helper()
	resp := do(t, "GET", f.URL+"/version")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// TestOrdinaryRequestsReuseOneHTTP1Connection: ordinary requests go over internal/upstream
// (HTTP/1.1 written and read on the request's goroutine, even though the API server offers
// HTTP/2), sequential requests reuse one verified TLS connection, and client-go's bearer
// token file authentication applies on top (client-go's wrapper re-reads the file a minute
// after it last did, which is how a rotated ServiceAccount token is picked up: its code, not
// ours, and too slow for a test). A connection the API server closed while idle is replaced
// transparently.
func TestOrdinaryRequestsReuseOneHTTP1Connection(t *testing.T) {
	srv := newTLSAPIServer(t, "token-1", nil)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc := &rest.Config{Host: srv.URL, BearerTokenFile: tokenFile, TLSClientConfig: rest.TLSClientConfig{CAData: srv.caPEM}}
	f := newFront(t, rc, nil, &api.Request{Service: "kubernetes"})
	for i := range 5 {
		if code, body := getVersion(t, f); code != 200 || !strings.Contains(body, "v1.37.2") {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	protos, auths, _ := srv.seen()
	for i, p := range protos {
		if p != "HTTP/1.1" {
			t.Errorf("request %d reached the API server over %s, want HTTP/1.1 (internal/upstream)", i, p)
		}
	}
	for i, a := range auths {
		if a != "Bearer token-1" {
			t.Errorf("request %d: Authorization %q, want the token file's", i, a)
		}
	}
	if n := srv.conns.Load(); n != 1 {
		t.Errorf("%d TLS connections for %d sequential requests, want 1", n, len(protos))
	}

	srv.CloseClientConnections() // the API server drops the idle keep-alive connection
	time.Sleep(50 * time.Millisecond)
	if code, body := getVersion(t, f); code != 200 {
		t.Fatalf("after the API server closed the idle connection: %d %s", code, body)
	}
	if n := srv.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestClientCertificateAuthentication: a client certificate from the kubeconfig reaches the
// API server on the upstream path, given as data and as files (which client-go re-reads).
func TestClientCertificateAuthentication(t *testing.T) {
	ca, caKey, caPEM := newTestCA(t, "client CA")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	srv := newTLSAPIServer(t, saToken, pool)
	leaf := newLeaf(t, ca, caKey, "system:agent", x509.ExtKeyUsageClientAuth)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})
	keyDER, err := x509.MarshalECPrivateKey(leaf.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  rest.TLSClientConfig
	}{
		{"data", rest.TLSClientConfig{CAData: srv.caPEM, CertData: certPEM, KeyData: keyPEM}},
		{"files", rest.TLSClientConfig{CAData: srv.caPEM, CertFile: certFile, KeyFile: keyFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFront(t, &rest.Config{Host: srv.URL, BearerToken: saToken, TLSClientConfig: tc.tls}, nil, &api.Request{Service: "kubernetes"})
			if code, body := getVersion(t, f); code != 200 {
				t.Fatalf("%d %s", code, body)
			}
			protos, _, certs := srv.seen()
			if certs[len(certs)-1] != "system:agent" || protos[len(protos)-1] != "HTTP/1.1" {
				t.Errorf("API server saw client certificate %q over %s, want system:agent over HTTP/1.1", certs[len(certs)-1], protos[len(protos)-1])
			}
		})
	}
	// Without the certificate the API server refuses the handshake.
	f := newFront(t, &rest.Config{Host: srv.URL, BearerToken: saToken, TLSClientConfig: rest.TLSClientConfig{CAData: srv.caPEM}}, nil, &api.Request{Service: "kubernetes"})
	if code, _ := getVersion(t, f); code != http.StatusBadGateway {
		t.Errorf("without a client certificate: %d, want 502", code)
	}
}

// TestServerNameVerified: the API server's certificate is verified against the configured
// TLS server name when there is one, else against the URL's host.
func TestServerNameVerified(t *testing.T) {
	st := newStandin(t) // its certificate: localhost, kubernetes.default.svc, 127.0.0.1
	for _, tc := range []struct {
		serverName string
		want       int
	}{
		{"", 200},                       // 127.0.0.1 from the URL
		{"kubernetes.default.svc", 200}, // as in-cluster
		{"other.example", http.StatusBadGateway},
	} {
		rc := st.RESTConfig()
		rc.ServerName = tc.serverName
		f := newFront(t, rc, nil, &api.Request{Service: "kubernetes"})
		resp := do(t, "GET", f.URL+"/version")
		if resp.StatusCode != tc.want {
			t.Errorf("server name %q: status %d, want %d", tc.serverName, resp.StatusCode, tc.want)
		}
		if tc.want != 200 {
			if e := api.ReadHTTPError(resp); !strings.Contains(e.Message, "TLS certificate not valid for the address") {
				t.Errorf("server name %q: %q", tc.serverName, e.Message)
			}
		}
	}
}

func newTestCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return ca, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
