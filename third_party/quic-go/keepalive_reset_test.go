package quic

// qkas patch (change 12): ack-eliciting packets are large enough to be answered by a stateless
// reset.

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/ackhandler"
	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/testdata"
	"github.com/quic-go/quic-go/internal/wire"

	"github.com/stretchr/testify/require"
)

func TestResettablePadding(t *testing.T) {
	ping := payload{frames: []ackhandler.Frame{{Frame: &wire.PingFrame{}}}, length: 1}
	// A PING behind a 4-byte connection ID and a 2-byte packet number: 1+4+2 header, 1 frame,
	// 1 byte of padding for header protection's sample, 16 of tag: 25 bytes sealed.
	require.Equal(t, protocol.ByteCount(protocol.MinStatelessResetSize+1-25), resettablePadding(&ping, 9, 16))
	require.Zero(t, resettablePadding(&ping, protocol.MinStatelessResetSize+1-16, 16), "already large enough")
	require.Equal(t, protocol.ByteCount(1), resettablePadding(&ping, protocol.MinStatelessResetSize-16, 16), "one byte short")
	ackOnly := payload{ack: &wire.AckFrame{AckRanges: []wire.AckRange{{Smallest: 1, Largest: 1}}}, length: 5}
	require.Zero(t, resettablePadding(&ackOnly, 12, 16), "an ACK-only packet is not padded")
	stream := payload{streamFrames: []ackhandler.StreamFrame{{Frame: &wire.StreamFrame{}}}, length: 3}
	require.NotZero(t, resettablePadding(&stream, 10, 16))
	closing := payload{frames: []ackhandler.Frame{{Frame: &wire.ConnectionCloseFrame{}}}, length: 3}
	require.Zero(t, resettablePadding(&closing, 10, 16), "a CONNECTION_CLOSE is not padded")

}

// TestKeepAliveAnsweredByStatelessReset: a server crashes and a new process takes its address
// with the same stateless reset key. A client whose connection is idle, sending nothing but
// keep-alive PINGs, learns of it from the stateless reset that answers its next keep-alive,
// long before its idle timeout. Upstream, a PING packet is about 25 bytes, below the 43 that
// a Transport answers, and the client waits for its idle timeout.
func TestKeepAliveAnsweredByStatelessReset(t *testing.T) {
	var key StatelessResetKey
	copy(key[:], "a stateless reset key, 32 bytes!")
	serverConn := newUDPConnLocalhost(t)
	serverTr := &Transport{Conn: serverConn, StatelessResetKey: &key}
	serverTLS := testdata.GetTLSConfig()
	serverTLS.NextProtos = []string{"keep-alive-reset"}
	ln, err := serverTr.Listen(serverTLS, &Config{})
	require.NoError(t, err)
	accepted := make(chan *Conn, 1)
	go func() {
		if c, err := ln.Accept(context.Background()); err == nil {
			accepted <- c
		}
	}()

	clientTr := &Transport{Conn: newUDPConnLocalhost(t)}
	defer clientTr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scaleDuration(5*time.Second))
	defer cancel()
	conn, err := clientTr.Dial(ctx, serverConn.LocalAddr(), &tls.Config{
		InsecureSkipVerify: true,
		NextProtos:         []string{"keep-alive-reset"},
	}, &Config{
		KeepAlivePeriod: 100 * time.Millisecond, MaxIdleTimeout: 30 * time.Second,
		// Path MTU probes are large and ack-eliciting, so a restarted server resets them: off,
		// as they are once a long-lived connection's search is over.
		DisablePathMTUDiscovery: true,
	})
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")
	select {
	case <-accepted:
	case <-ctx.Done():
		t.Fatal("server did not accept the connection")
	}
	time.Sleep(300 * time.Millisecond) // a few keep-alives answered by the live server

	// The crash: the socket goes, the connections die without a CONNECTION_CLOSE.
	addr := serverConn.LocalAddr().(*net.UDPAddr)
	serverConn.Close()
	restarted, err := net.ListenUDP("udp", addr)
	require.NoError(t, err)
	restartedTr := &Transport{Conn: restarted, StatelessResetKey: &key}
	defer restartedTr.Close()
	ln2, err := restartedTr.Listen(serverTLS, &Config{})
	require.NoError(t, err)
	defer ln2.Close()
	defer serverTr.Close()

	start := time.Now()
	select {
	case <-conn.Context().Done():
	case <-time.After(scaleDuration(3 * time.Second)):
		t.Fatal("the client's keep-alives were not answered by a stateless reset within 3s (idle timeout 30s)")
	}
	var reset *StatelessResetError
	require.True(t, errors.As(context.Cause(conn.Context()), &reset), "connection ended with %v", context.Cause(conn.Context()))
	t.Logf("reset after %v", time.Since(start))
}
