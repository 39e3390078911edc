package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"
)

// TestHandshakeGate: a refused connection fails its dial with a remote CONNECTION_REFUSED that
// carries the gate's reason and never reaches TLS; an admitted one ends its slot exactly once, at Accept; one whose handshake
// fails (no common ALPN) ends it exactly once too, without Accept.
func TestHandshakeGate(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	var hellos atomic.Int64
	serverTLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		hellos.Add(1)
		return nil, nil
	}
	ln := listen(t, serverTLS, Config{})
	var open atomic.Bool
	var begun, ended atomic.Int64
	var refused atomic.Value // the refused dial's address: refused for good
	const reason = "overloaded: busy (retry_after_ms=1500)"
	ln.SetHandshakeGate(func(remote net.Addr) (func(), string, bool) {
		if _, ok := remote.(*net.UDPAddr); !ok {
			t.Errorf("gate called with %T", remote)
		}
		// An Initial the refused dial retransmitted before its refusal reached it may arrive
		// after the gate opened (under load, CI saw it): it must not count as the admitted dial.
		if !open.Load() || refused.Load() == remote.String() {
			refused.CompareAndSwap(nil, remote.String())
			return nil, reason, false
		}
		begun.Add(1)
		return func() { ended.Add(1) }, "", true
	})
	srv := serve(t, ln, nil)

	// Refused before TLS.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := newDialer(t, clientTLS, Config{}).Dial(ctx, ln.Addr().String())
	var trErr *quicgo.TransportError
	if !errors.As(err, &trErr) || !trErr.Remote || trErr.ErrorCode != quicgo.ConnectionRefused {
		t.Fatalf("dial through a closed gate: %v, want a remote CONNECTION_REFUSED", err)
	}
	if trErr.ErrorMessage != reason {
		t.Fatalf("refusal's reason phrase %q, want the gate's %q", trErr.ErrorMessage, reason)
	}
	if n := hellos.Load(); n != 0 {
		t.Fatalf("%d ClientHellos reached TLS through a closed gate", n)
	}

	// Admitted: the slot ends at Accept, once.
	open.Store(true)
	dial(t, newDialer(t, clientTLS, Config{}), ln.Addr().String())
	var accepted *quicgo.Conn
	select {
	case accepted = <-srv.conns:
	case <-ctx.Done():
		t.Fatal("the admitted connection was not accepted")
	}
	if b, e := begun.Load(), ended.Load(); b != 1 || e != 1 {
		t.Fatalf("after Accept: %d slots taken, %d ended; want 1 and 1", b, e)
	}
	// The connection's context keeps its slot record for the connection's life, but not the
	// gate's closure nor the AfterFunc's context.
	if h := accepted.Context().Value(handshakeKey{}).(*gatedHandshake); h.end != nil || h.stop != nil {
		t.Fatal("an accepted connection still holds its gate slot's closures")
	}

	// A failed handshake ends its slot without Accept.
	_, otherALPN := testTLS(t, "not-"+testALPN)
	if _, err := newDialer(t, otherALPN, Config{}).Dial(ctx, ln.Addr().String()); err == nil {
		t.Fatal("a dial without a common ALPN succeeded")
	}
	for deadline := time.Now().Add(5 * time.Second); ended.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("the failed handshake's slot never ended (%d taken, %d ended)", begun.Load(), ended.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a second end would come now
	if b, e := begun.Load(), ended.Load(); b != 2 || e != 2 {
		t.Fatalf("after a failed handshake: %d slots taken, %d ended; want 2 and 2", b, e)
	}
}
