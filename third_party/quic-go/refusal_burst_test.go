package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/testdata"

	"github.com/stretchr/testify/require"
)

// heldConn holds every write until release is closed, as a send goroutine waiting for a CPU does.
type heldConn struct {
	net.PacketConn
	release chan struct{}
}

func (c *heldConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	<-c.release
	return c.PacketConn.WriteTo(b, addr)
}

// qkas patch: a burst of refusals made while the server's send goroutine is busy is queued, not
// dropped: every refused client hears its CONNECTION_REFUSED as soon as the sender catches up.
// Upstream queues 4 refusals and drops the rest; those clients learn of the refusal only from a
// retransmitted Initial's refusal, a probe timeout or more later (here about 400 ms after the
// release).
func TestConnectionRefusedBurstQueued(t *testing.T) {
	const clients = 24
	var initials atomic.Int64
	held := &heldConn{PacketConn: newUDPConnLocalhost(t), release: make(chan struct{})}
	serverTr := &Transport{
		Conn: held,
		ConnContext: func(context.Context, *ClientInfo) (context.Context, error) {
			initials.Add(1)
			return nil, &TransportError{ErrorCode: ConnectionRefused, ErrorMessage: "busy"}
		},
	}
	defer serverTr.Close()
	serverTLS := testdata.GetTLSConfig()
	serverTLS.NextProtos = []string{"burst"}
	ln, err := serverTr.Listen(serverTLS, &Config{})
	require.NoError(t, err)
	defer ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), scaleDuration(10*time.Second))
	defer cancel()
	start := time.Now()
	refusedAt := make([]time.Time, clients)
	var wg sync.WaitGroup
	for i := range clients {
		tr := &Transport{Conn: newUDPConnLocalhost(t)}
		defer tr.Close()
		wg.Go(func() {
			_, err := tr.Dial(ctx, ln.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"burst"}}, &Config{})
			var te *TransportError
			if errors.As(err, &te) && te.Remote && te.ErrorCode == ConnectionRefused {
				refusedAt[i] = time.Now()
			}
		})
	}
	// Every client's first flight has been refused (and queued behind the held sender).
	require.Eventually(t, func() bool { return initials.Load() >= clients }, scaleDuration(5*time.Second), time.Millisecond)
	// Held past the clients' first probe timeouts (their retransmissions are refused and queued
	// too), so that the next one comes hundreds of milliseconds after the release.
	time.Sleep(time.Until(start.Add(time.Second)))
	released := time.Now()
	close(held.release)
	wg.Wait()
	for i, at := range refusedAt {
		require.False(t, at.IsZero(), "client %d was not refused", i)
		require.Less(t, at.Sub(released), scaleDuration(300*time.Millisecond), "client %d heard its refusal %v after the sender caught up", i, at.Sub(released))
	}
}
