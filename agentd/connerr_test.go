package agentd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"github.com/rs/zerolog"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// selfSigned returns a certificate for dnsName issued by itself (issuer CN "test issuer").
func selfSigned(t *testing.T, dnsName string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "test issuer"},
		DNSNames:     []string{dnsName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, leaf
}

// dialReal dials a real QUIC listener (serving cert with ALPN serverALPN) as agentd does and
// returns the error quic-go gives, so that the table below classifies what quic-go really
// returns, not what we think it returns.
func dialReal(t *testing.T, cert tls.Certificate, serverALPN string, roots *x509.CertPool, serverName string) error {
	t.Helper()
	ln, err := quic.Listen("127.0.0.1:0", quic.ServerTLSConfig(cert, serverALPN), quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // accepts until the listener closes
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			_ = c.CloseWithError(0, "")
		}
	}()
	d, err := quic.NewDialer(&tls.Config{RootCAs: roots, NextProtos: []string{api.ALPNAgent}}, quic.Config{HandshakeTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	qc, err := d.DialUDP(ctx, ln.Addr().(*net.UDPAddr), serverName)
	if err == nil {
		_ = qc.CloseWithError(0, "")
		t.Fatal("dial succeeded")
	}
	return refusalFromClose(err)
}

func TestClassifyConnect(t *testing.T) {
	cert, leaf := selfSigned(t, "kasd.test")
	trusting := x509.NewCertPool()
	trusting.AddCert(leaf)

	// Nothing answers on this UDP port: the dial times out.
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	d, err := quic.NewDialer(&tls.Config{NextProtos: []string{api.ALPNAgent}}, quic.Config{HandshakeTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, noAnswer := d.DialUDP(context.Background(), silent.LocalAddr().(*net.UDPAddr), "kasd.test")
	d.Close()

	tests := []struct {
		name     string
		err      error
		want     ConnectCode
		hintHas  []string
		wantPerm bool // permanent(err): the long backoff applies
	}{
		{"wrong CA (real dial)", dialReal(t, cert, api.ALPNAgent, x509.NewCertPool(), "kasd.test"), ConnectUnknownAuthority,
			[]string{"--ca-file", "kasd.test", `"CN=test issuer"`}, false},
		{"wrong name (real dial)", dialReal(t, cert, api.ALPNAgent, trusting, "other.test"), ConnectNameMismatch,
			[]string{"other.test", "kasd.test", "--server-name"}, false},
		{"ALPN mismatch (real dial)", dialReal(t, cert, "qkas-other", trusting, "kasd.test"), ConnectALPN,
			[]string{api.ALPNAgent}, false},
		{"no answer over UDP (real dial)", noAnswer, ConnectNoAnswer, []string{"firewall", "UDP", "DNS"}, false},
		{"quic handshake timeout", fmt.Errorf("quic: dial: %w", &quicgo.HandshakeTimeoutError{}), ConnectNoAnswer, []string{"UDP"}, false},
		{"idle timeout before TLS", &quicgo.IdleTimeoutError{}, ConnectNoAnswer, nil, false},
		{"hello timeout", &helloError{fmt.Errorf("read: %w", os.ErrDeadlineExceeded)}, ConnectHandshakeTimeout, []string{"Hello"}, false},
		{"hello idle timeout", &helloError{&quicgo.IdleTimeoutError{}}, ConnectHandshakeTimeout, nil, false},
		{"ICMP port unreachable", &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("recvmsg", syscall.ECONNREFUSED)}, ConnectUnreachable, []string{"UDP port"}, false},
		{"no route", &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmsg", syscall.EHOSTUNREACH)}, ConnectUnreachable, nil, false},
		{"DNS", fmt.Errorf("resolve: %w", &net.DNSError{Err: "no such host", Name: "kasd.invalid", IsNotFound: true}), ConnectDNS, []string{"DNS"}, false},
		{"token refused", &helloError{&api.Error{Code: api.CodeUnauthenticated, Message: "unknown token"}}, ConnectTokenRefused, []string{"unknown token", "--token-file"}, true},
		{"token forbidden", &api.Error{Code: api.CodeForbidden, Message: "agent disabled"}, ConnectTokenRefused, []string{"agent disabled"}, true},
		{"version refused by kasd", &helloError{&api.Error{Code: api.CodeUnsupportedVersion, Message: "v9"}}, ConnectVersionRefused, nil, true},
		{"kasd's welcome version", &helloError{api.CheckVersion(api.ProtocolVersion + 1)}, ConnectVersionRefused, nil, true},
		{"overloaded", refusalFromClose(&quicgo.ApplicationError{Remote: true, ErrorCode: quicgo.ApplicationErrorCode(quic.ConnCodeRefused),
			ErrorMessage: api.CloseReason(&api.Error{Code: api.CodeOverloaded, Message: "busy", RetryAfter: time.Second})}), ConnectOverloaded, []string{"busy"}, false},
		{"draining", refusalFromClose(&quicgo.ApplicationError{Remote: true, ErrorCode: quicgo.ApplicationErrorCode(quic.ConnCodeRefused),
			ErrorMessage: api.CloseReason(api.Errorf(api.CodeShuttingDown, "kasd is draining; connect to another instance"))}), ConnectDraining, []string{"draining", "another address"}, false},
		{"hello refused as bad request", &helloError{&api.Error{Code: api.CodeBadRequest, Message: "invalid service name"}}, ConnectRefused, []string{"invalid service name"}, true},
		{"other refusal", &api.Error{Code: api.CodeAuthUnavailable, Message: "gitlab down"}, ConnectRefused, []string{"auth_unavailable"}, false},
		{"QUIC version", &quicgo.VersionNegotiationError{}, ConnectQUICVersion, nil, false},
		{"stateless reset", &helloError{&quicgo.StatelessResetError{}}, ConnectLost, nil, false},
		{"tls alert from kasd", &quicgo.TransportError{Remote: true, ErrorCode: 0x100 + 40}, ConnectTLS, []string{"kasd"}, false},
		{"unknown", errors.New("something else"), ConnectOther, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("no error to classify")
			}
			f := classifyConnect(tt.err)
			if f.Code != tt.want {
				t.Fatalf("classifyConnect(%v [%T]) = %s, want %s", tt.err, tt.err, f.Code, tt.want)
			}
			for _, s := range tt.hintHas {
				if !strings.Contains(f.Hint, s) {
					t.Errorf("hint %q lacks %q", f.Hint, s)
				}
			}
			if permanent(tt.err) != tt.wantPerm {
				t.Errorf("permanent = %v, want %v", !tt.wantPerm, tt.wantPerm)
			}
		})
	}
}

// syncBuffer is a log sink safe for the agent's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(substr string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for l := range strings.SplitSeq(s.b.String(), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// TestConnectFailuresLoggedAndCounted: a real agent against a real kasd logs each failed attempt
// once at warn with its error_code and hint, counts it by code, and waits long after a refused
// token.
func TestConnectFailuresLoggedAndCounted(t *testing.T) {
	k := startTestKasd(t)
	otherCA, err := quic.ClientTLSConfig(func() string {
		_, ca, err := quic.DevCertificate(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	tests := []struct {
		name, addr, token string
		tls               *tls.Config
		code              ConnectCode
		logHas            []string
		minRetry          time.Duration
	}{
		{"wrong CA", k.agentAddr, k.token, otherCA, ConnectUnknownAuthority, []string{`"level":"warn"`, "issued by", "--ca-file"}, 0},
		{"refused token", k.agentAddr, "not-a-token", k.tls, ConnectTokenRefused, []string{`"level":"warn"`, "--token-file"}, 15 * time.Second},
		{"no answer", silent.LocalAddr().String(), k.token, k.tls, ConnectNoAnswer, []string{"firewall"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			log := zerolog.New(&logs)
			a, err := New(Config{
				KasAddresses: []string{tt.addr}, Token: tt.token, TLS: tt.tls,
				Services: map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
				QUIC:     quic.Config{HandshakeTimeout: 300 * time.Millisecond},
				Backoff:  quic.Backoff{Initial: 20 * time.Millisecond, Max: 50 * time.Millisecond},
				Log:      &log,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = a.Run(ctx) }()
			deadline := time.Now().Add(10 * time.Second)
			for len(logs.lines("connecting to kasd failed")) == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // room for more attempts (there must be none for a token)
			cancel()
			<-done
			lines := logs.lines("connecting to kasd failed")
			if len(lines) == 0 {
				t.Fatalf("no failure logged: %s", logs.lines(""))
			}
			if !strings.Contains(lines[0], `"error_code":"`+string(tt.code)+`"`) {
				t.Fatalf("log line %s lacks error_code %s", lines[0], tt.code)
			}
			for _, s := range tt.logHas {
				if !strings.Contains(lines[0], s) {
					t.Errorf("log line %s lacks %q", lines[0], s)
				}
			}
			if got := counterValue(t, a.m.connectFailures.WithLabelValues(string(tt.code))); got != float64(len(lines)) {
				t.Errorf("agentd_connect_failures_total{code=%q} = %v, want %d (one per logged attempt)", tt.code, got, len(lines))
			}
			if tt.minRetry > 0 {
				if len(lines) != 1 {
					t.Errorf("%d attempts logged after a refused token, want 1 (long backoff)", len(lines))
				}
				var rec struct {
					RetryIn float64 `json:"retry_in"` // zerolog: milliseconds
				}
				if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
					t.Fatal(err)
				}
				if got := time.Duration(rec.RetryIn * float64(time.Millisecond)); got < tt.minRetry {
					t.Errorf("retry_in %v after a refused token, want ≥ %v", got, tt.minRetry)
				}
			}
			t.Logf("%s", lines[0])
		})
	}
}

// TestMalformedKasAddressRefused: an address that could only fail every dial stops the agent at
// New, naming the flag; a DNS name is resolved at each dial and accepted.
func TestMalformedKasAddressRefused(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"bogus", false},
		{"127.0.0.1:99999", false},
		{"127.0.0.1:0", false},
		{":8150", false},
		{"kas.example.com:domain", true}, // a service name, resolved as the dial does (udp "domain" is built into Go)
		{"kas.example.com:no-such-service", false},
		{"kas.example.com:8150", true},
		{"127.0.0.1:8150", true},
		{"[::1]:65535", true},
	} {
		_, err := New(Config{KasAddresses: []string{tt.addr}, Token: "t", TLS: &tls.Config{},
			Services: map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}}})
		if tt.ok && err != nil {
			t.Errorf("New with --kas-address %q: %v", tt.addr, err)
		}
		if !tt.ok && (err == nil || !strings.Contains(err.Error(), "--kas-address")) {
			t.Errorf("New with --kas-address %q: %v, want an error naming --kas-address", tt.addr, err)
		}
	}
}

// TestUnresolvedKasAddressLogged: when no kasd address resolves, the failure's log line names
// the configured addresses (it had an empty kas_address).
func TestUnresolvedKasAddressLogged(t *testing.T) {
	var logs syncBuffer
	log := zerolog.New(&logs)
	a, err := New(Config{KasAddresses: []string{"127.0.0.1:1"}, Token: "t", TLS: &tls.Config{},
		Services: map[string]*url.URL{"web": {Scheme: "http", Host: "127.0.0.1:1"}},
		Backoff:  quic.Backoff{Initial: 20 * time.Millisecond, Max: 50 * time.Millisecond},
		Log:      &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A name that fails to resolve without asking DNS (Validate refuses it; this stands for a
	// DNS name that does not resolve).
	a.cfg.KasAddresses = []string{"kas-0", "kas-1:notaport"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(logs.lines("connecting to kasd failed")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	lines := logs.lines("connecting to kasd failed")
	if len(lines) == 0 {
		t.Fatal("no failure logged")
	}
	var line struct {
		KasAddress string `json:"kas_address"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &line); err != nil {
		t.Fatal(err)
	}
	if line.KasAddress != "kas-0,kas-1:notaport" {
		t.Fatalf("kas_address %q in %s, want the configured addresses", line.KasAddress, lines[0])
	}
}
