package quic

import (
	"context"
	"crypto/tls"
	"io"
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/testdata"

	"github.com/stretchr/testify/require"
)

// qkas patch: ConnectionStats tells whether the peer acknowledged anything sent after a given
// point. Data written after LargestSentAppData was read is acknowledged (LargestAckedAppData
// exceeds the mark) once the live peer has it; after the peer stopped receiving, data written
// after a new mark goes out (LargestSentAppData moves past it) and is never acknowledged.
func TestConnectionStatsAckWatermark(t *testing.T) {
	serverUDP := newUDPConnLocalhost(t)
	serverTr := &Transport{Conn: serverUDP}
	defer serverTr.Close()
	serverTLS := testdata.GetTLSConfig()
	serverTLS.NextProtos = []string{"watermark"}
	ln, err := serverTr.Listen(serverTLS, &Config{})
	require.NoError(t, err)
	defer ln.Close()
	received := make(chan string, 4)
	go func() {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		for {
			st, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			b, _ := io.ReadAll(st)
			received <- string(b)
		}
	}()

	clientTr := &Transport{Conn: newUDPConnLocalhost(t)}
	defer clientTr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scaleDuration(5*time.Second))
	defer cancel()
	conn, err := clientTr.Dial(ctx, ln.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"watermark"}},
		&Config{MaxIdleTimeout: 10 * time.Second})
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")

	send := func(s string) {
		t.Helper()
		st, err := conn.OpenStreamSync(ctx)
		require.NoError(t, err)
		_, err = st.Write([]byte(s))
		require.NoError(t, err)
		require.NoError(t, st.Close())
	}

	// A live peer acknowledges what was written after the mark.
	mark := conn.ConnectionStats().LargestSentAppData
	send("live")
	require.Equal(t, "live", <-received)
	require.Eventually(t, func() bool { return conn.ConnectionStats().LargestAckedAppData > mark },
		scaleDuration(2*time.Second), time.Millisecond, "the live peer's acknowledgement")

	// The peer no longer receives: what is written after the new mark is sent, never acknowledged.
	require.NoError(t, serverUDP.Close())
	mark = conn.ConnectionStats().LargestSentAppData
	send("dead")
	require.Eventually(t, func() bool { return conn.ConnectionStats().LargestSentAppData > mark },
		scaleDuration(2*time.Second), time.Millisecond, "the request's packet was sent")
	time.Sleep(scaleDuration(200 * time.Millisecond)) // retransmissions too
	stats := conn.ConnectionStats()
	require.LessOrEqual(t, stats.LargestAckedAppData, mark, "acknowledged by a peer that receives nothing")
	require.Greater(t, stats.LargestSentAppData, mark)
}
