package quic_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qkas/qkas/quic"
)

// ticketCache is a client session cache that reports each ticket stored.
type ticketCache struct {
	tls.ClientSessionCache
	puts chan struct{}
}

func newTicketCache() *ticketCache { return wrapTicketCache(tls.NewLRUClientSessionCache(4)) }

func wrapTicketCache(c tls.ClientSessionCache) *ticketCache {
	return &ticketCache{ClientSessionCache: c, puts: make(chan struct{}, 16)}
}

func (c *ticketCache) Put(key string, cs *tls.ClientSessionState) {
	c.ClientSessionCache.Put(key, cs)
	if cs != nil {
		select {
		case c.puts <- struct{}{}:
		default:
		}
	}
}

// resumeEnv is one client (its ticket cache kept across dials) and the development
// certificate of a data directory.
type resumeEnv struct {
	t      *testing.T
	cert   tls.Certificate
	client *tls.Config
	cache  *ticketCache
}

func newResumeEnv(t *testing.T) *resumeEnv {
	dir := t.TempDir()
	cert, caFile, err := quic.DevCertificate(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := quic.ClientTLSConfig(caFile, "127.0.0.1", "qkas-test")
	if err != nil {
		t.Fatal(err)
	}
	cache := newTicketCache()
	client.ClientSessionCache = cache
	return &resumeEnv{t: t, cert: cert, client: client, cache: cache}
}

// dial starts a listener with conf (a fresh process, as far as TLS is concerned), connects once,
// waits for a ticket, closes both and reports whether the handshake resumed.
func (e *resumeEnv) dial(conf *tls.Config) (resumed bool) {
	t := e.t
	t.Helper()
	ln, err := quic.Listen("127.0.0.1:0", conf, quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			// A stream carries a byte each way, so that the ticket, sent after the handshake,
			// has arrived before the client closes.
			var s interface {
				io.ReadWriteCloser
			}
			if s, err = c.AcceptStream(ctx); err == nil {
				_, err = io.Copy(s, io.LimitReader(s, 1))
				_ = s.Close()
			}
			<-c.Context().Done()
		}
		accepted <- err
	}()
	qc, err := quic.Dial(ctx, ln.Addr().String(), e.client, quic.Config{})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	s, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.cache.puts:
	case <-ctx.Done():
		t.Fatal("no session ticket")
	}
	resumed = qc.ConnectionState().TLS.DidResume
	_ = qc.CloseWithError(0, "")
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
	return resumed
}

func (e *resumeEnv) server(tickets *quic.SessionTickets) *tls.Config {
	conf := quic.ServerTLSConfig(e.cert, "qkas-test")
	if tickets != nil {
		tickets.Enable(conf)
	}
	return conf
}

// TestSessionTicketsSurviveRestart: a ticket issued by one listener resumes with a new listener
// and tls.Config (a restarted kasd, another replica) serving the same key, which crypto/tls's
// own per-process ticket keys do not; a new key means a full handshake, and so does a key that
// cannot be exported.
func TestSessionTicketsSurviveRestart(t *testing.T) {
	e := newResumeEnv(t)
	current := func() *tls.Certificate { return &e.cert }
	if e.dial(e.server(quic.NewSessionTickets(current, "qkas-test"))) {
		t.Fatal("the first handshake resumed")
	}
	if !e.dial(e.server(quic.NewSessionTickets(current, "qkas-test"))) {
		t.Error("a new listener with the same key did not resume the session")
	}
	if e.dial(e.server(nil)) {
		t.Error("a listener with crypto/tls's own ticket keys resumed a ticket of another process")
	}

	// The certificate is reloaded with a new key: the keys follow it.
	other := newResumeEnv(t)
	var cur atomic.Pointer[tls.Certificate]
	cur.Store(&e.cert)
	tickets := quic.NewSessionTickets(cur.Load, "qkas-test")
	conf := e.server(tickets)
	conf.Certificates, conf.GetCertificate = nil, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cur.Load(), nil }
	e.dial(conf) // the cached ticket is the last listener's, under crypto/tls's own keys
	if !e.dial(conf) {
		t.Error("no resumption before the reload")
	}
	cur.Store(&other.cert)
	e.client.RootCAs.AddCert(other.cert.Leaf)
	if e.dial(conf) {
		t.Error("a ticket of the old key resumed after the key changed")
	}
	if !e.dial(conf) {
		t.Error("no resumption under the new key")
	}

	// A key that cannot be exported: crypto/tls's keys, this listener only.
	hidden := e.cert
	hidden.PrivateKey = opaqueSigner{e.cert.PrivateKey.(crypto.Signer)}
	if _, ok := quic.TicketKey(&hidden, ""); ok {
		t.Fatal("TicketKey exported an opaque signer")
	}
	opaque := quic.ServerTLSConfig(hidden, "qkas-test")
	quic.NewSessionTickets(func() *tls.Certificate { return &hidden }, "qkas-test").Enable(opaque)
	e.client.ClientSessionCache = newTicketCache()
	e.cache = e.client.ClientSessionCache.(*ticketCache)
	if e.dial(opaque) {
		t.Error("the first handshake with an opaque key resumed")
	}
	if !e.dial(opaque) {
		t.Error("an opaque key's listener did not resume its own ticket")
	}
}

// opaqueSigner hides the private key behind crypto.Signer, as a hardware key does.
type opaqueSigner struct{ crypto.Signer }

func TestTicketKeyDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, _, err := quic.DevCertificate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := quic.DevCertificate(dir, nil) // read back from the files
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := quic.DevCertificate(filepath.Join(dir, "other"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ka, ok1 := quic.TicketKey(&a, "x")
	kb, ok2 := quic.TicketKey(&b, "x")
	kc, ok3 := quic.TicketKey(&c, "x")
	if !ok1 || !ok2 || !ok3 {
		t.Fatal("TicketKey failed on an ECDSA key")
	}
	if ka != kb {
		t.Error("the same key gave two ticket keys")
	}
	if ka == kc {
		t.Error("two keys gave the same ticket key")
	}
	if ky, _ := quic.TicketKey(&a, "y"); ky == ka {
		t.Error("two purposes gave the same ticket key")
	}
	if _, ok := quic.TicketKey(nil, "x"); ok {
		t.Error("TicketKey(nil) ok")
	}
}

// TestClientSessionCacheKeepsTicketThroughFailure: crypto/tls forgets the ticket of a handshake
// that fails (kasd refused it, or did not answer in time); NewClientSessionCache keeps it, so the
// next attempt still resumes.
func TestClientSessionCacheKeepsTicketThroughFailure(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cache tls.ClientSessionCache
		keeps bool
	}{
		{"NewClientSessionCache", quic.NewClientSessionCache(4), true},
		{"crypto/tls LRU", tls.NewLRUClientSessionCache(4), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newResumeEnv(t)
			e.cache = wrapTicketCache(tc.cache)
			e.client.ClientSessionCache = e.cache
			tickets := quic.NewSessionTickets(func() *tls.Certificate { return &e.cert }, "qkas-test")
			e.dial(e.server(tickets))

			// A kasd that does not answer: the handshake, offering the ticket, times out.
			silent, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer silent.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if qc, err := quic.Dial(ctx, silent.LocalAddr().String(), e.client, quic.Config{}); err == nil {
				_ = qc.CloseWithError(0, "")
				t.Fatal("dialled a socket that never answers")
			}

			resumed := e.dial(e.server(tickets))
			switch {
			case tc.keeps && !resumed:
				t.Error("the ticket was lost with the failed handshake")
			case !tc.keeps && resumed:
				// crypto/tls kept it itself: NewClientSessionCache is then no longer needed.
				t.Log("crypto/tls's own cache kept the ticket through a failed handshake")
			}
		})
	}
}
