package quic

import (
	"context"
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testALPN = "qkas-test"

// testTLS returns a server and a client tls.Config backed by a fresh DevCertificate. The
// client config has no ServerName: the Dialer fills it in from the dialed address.
func testTLS(t testing.TB, alpn ...string) (server, client *tls.Config) {
	t.Helper()
	if len(alpn) == 0 {
		alpn = []string{testALPN}
	}
	cert, caFile, err := DevCertificate(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err = ClientTLSConfig(caFile, "", alpn...)
	if err != nil {
		t.Fatal(err)
	}
	return ServerTLSConfig(cert, alpn...), client
}

func newDialer(t testing.TB, tlsConf *tls.Config, cfg Config) *Dialer {
	t.Helper()
	d, err := NewDialer(tlsConf, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func dial(t testing.TB, d *Dialer, addr string) *quicgo.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := d.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(ConnCodeNoError, "") })
	return conn
}

// testServer accepts connections on ln and calls handle for each accepted stream. It owns
// its goroutines: the cleanup closes the listener (which ends every connection) and waits.
type testServer struct {
	ln    *Listener
	conns chan *quicgo.Conn // every accepted connection, if the test wants it (buffered)
}

func serve(t testing.TB, ln *Listener, handle func(*StreamConn)) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := &testServer{ln: ln, conns: make(chan *quicgo.Conn, 16)}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			select {
			case srv.conns <- conn:
			default:
			}
			wg.Go(func() {
				defer conn.CloseWithError(ConnCodeShutdown, "")
				for {
					s, err := conn.AcceptStream(ctx)
					if err != nil {
						return
					}
					if handle != nil {
						wg.Go(func() { handle(NewStreamConn(conn, s)) })
					}
				}
			})
		}
	})
	return srv
}

func listen(t testing.TB, tlsConf *tls.Config, cfg Config) *Listener {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", tlsConf, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// echo copies the stream back to its sender, then closes it.
func echo(sc *StreamConn) {
	io.Copy(sc, sc)
	sc.Close()
}
