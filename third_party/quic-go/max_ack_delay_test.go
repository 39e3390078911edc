package quic

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/testdata"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/quic-go/quic-go/testutils/events"

	"github.com/stretchr/testify/require"
)

// dropConn drops the next datagram larger than 1000 bytes once dropNext is set.
// It is not an OOBCapablePacketConn, so quic-go writes every datagram with WriteTo.
type dropConn struct {
	net.PacketConn
	dropNext atomic.Bool
}

func (c *dropConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if len(b) > 1000 && c.dropNext.CompareAndSwap(true, false) {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, addr)
}

// tailLossRecovery serves 1100-byte responses with Config.MaxAckDelay set to maxAckDelay on
// both ends, drops one response (the last and only packet in flight) and returns the
// max_ack_delay the client received in the server's transport parameters and how long that
// request took: the server only learns of the loss when its PTO fires.
func tailLossRecovery(t *testing.T, maxAckDelay time.Duration) (advertised, took time.Duration) {
	t.Helper()
	conf := &Config{MaxAckDelay: maxAckDelay}
	serverConn := &dropConn{PacketConn: newUDPConnLocalhost(t)}
	serverTr := &Transport{Conn: serverConn}
	defer serverTr.Close()
	serverTLS := testdata.GetTLSConfig()
	serverTLS.NextProtos = []string{"max-ack-delay"}
	ln, err := serverTr.Listen(serverTLS, conf)
	require.NoError(t, err)
	defer ln.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		for {
			str, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			io.Copy(io.Discard, str)
			str.Write(make([]byte, 1100))
			str.Close()
		}
	})

	var recorder events.Recorder
	clientConf := conf.Clone()
	clientConf.Tracer = func(context.Context, bool, ConnectionID) qlogwriter.Trace {
		return &events.Trace{Recorder: &recorder}
	}
	clientTr := &Transport{Conn: newUDPConnLocalhost(t)}
	defer clientTr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scaleDuration(5*time.Second))
	defer cancel()
	conn, err := clientTr.Dial(ctx, serverConn.LocalAddr(), &tls.Config{
		InsecureSkipVerify: true,
		NextProtos:         []string{"max-ack-delay"},
	}, clientConf)
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")

	request := func() time.Duration {
		start := time.Now()
		str, err := conn.OpenStreamSync(ctx)
		require.NoError(t, err)
		_, err = str.Write([]byte("request"))
		require.NoError(t, err)
		require.NoError(t, str.Close())
		resp, err := io.ReadAll(str)
		require.NoError(t, err)
		require.Len(t, resp, 1100)
		return time.Since(start)
	}
	for range 20 { // let the RTT estimate settle
		request()
	}
	serverConn.dropNext.Store(true)
	took = request()
	require.False(t, serverConn.dropNext.Load(), "no response was dropped")

	for _, ev := range recorder.Events(qlog.ParametersSet{}) {
		if p := ev.(qlog.ParametersSet); p.Initiator == qlog.InitiatorRemote {
			advertised = p.MaxAckDelay
		}
	}
	t.Logf("max_ack_delay %s: a request whose response was lost took %s", advertised, took)
	return advertised, took
}

func TestMaxAckDelayTailLossRecovery(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		advertised, took := tailLossRecovery(t, 0)
		require.Equal(t, 26*time.Millisecond, advertised)
		// The server's PTO is at least smoothed RTT + 1ms + the 26ms it was told.
		require.Greater(t, took, 26*time.Millisecond)
	})
	t.Run("1ms", func(t *testing.T) {
		advertised, took := tailLossRecovery(t, time.Millisecond)
		require.Equal(t, 2*time.Millisecond, advertised)
		// On loopback the PTO is about 1ms (timer granularity) + 2ms.
		require.Less(t, took, scaleDuration(20*time.Millisecond))
	})
}
