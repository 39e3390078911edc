package quic

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/testdata"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/quic-go/quic-go/testutils/events"

	"github.com/stretchr/testify/require"
)

// qkas patch: a packet of nothing but PING frames (a keep-alive) is acknowledged at once, not
// after max_ack_delay. The server here sends no keep-alives of its own, keeps quic-go's default
// max_ack_delay (25ms) and acknowledges the client's keep-alives (every 50ms); upstream sends
// each of those ACKs when its ACK alarm fires, 25ms after the PING, with an ACK delay of 25ms.
func TestKeepAlivePingAckedAtOnce(t *testing.T) {
	var recorder events.Recorder
	serverConf := &Config{Tracer: func(context.Context, bool, ConnectionID) qlogwriter.Trace {
		return &events.Trace{Recorder: &recorder}
	}}
	serverTr := &Transport{Conn: newUDPConnLocalhost(t)}
	defer serverTr.Close()
	serverTLS := testdata.GetTLSConfig()
	serverTLS.NextProtos = []string{"keep-alive"}
	ln, err := serverTr.Listen(serverTLS, serverConf)
	require.NoError(t, err)
	defer ln.Close()

	clientTr := &Transport{Conn: newUDPConnLocalhost(t)}
	defer clientTr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), scaleDuration(5*time.Second))
	defer cancel()
	conn, err := clientTr.Dial(ctx, ln.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"keep-alive"}},
		&Config{KeepAlivePeriod: 50 * time.Millisecond, MaxIdleTimeout: time.Second})
	require.NoError(t, err)
	defer conn.CloseWithError(0, "")
	sconn, err := ln.Accept(ctx)
	require.NoError(t, err)
	defer sconn.CloseWithError(0, "")

	// After the handshake's own frames (HANDSHAKE_DONE, NEW_CONNECTION_ID...) are acknowledged,
	// the client sends nothing but keep-alives.
	time.Sleep(scaleDuration(200 * time.Millisecond))
	recorder.Clear()
	time.Sleep(scaleDuration(500 * time.Millisecond))

	// Only the ACKs of keep-alives count: a packet the server received that held nothing but
	// PING frames, and that is the largest the ACK acknowledges. Anything else at the window's
	// start (a PTO probe's ACK, or the client's ACK of it bundled with a keep-alive) is
	// acknowledged under the ordinary rules.
	pingOnly := map[int64]bool{}
	for _, ev := range recorder.Events(qlog.PacketReceived{}) {
		p := ev.(qlog.PacketReceived)
		only := len(p.Frames) > 0
		for _, f := range p.Frames {
			if _, ok := f.Frame.(*qlog.PingFrame); !ok {
				only = false
			}
		}
		pingOnly[int64(p.Header.PacketNumber)] = only
	}
	var delays []time.Duration
	for _, ev := range recorder.Events(qlog.PacketSent{}) {
		for _, f := range ev.(qlog.PacketSent).Frames {
			if ack, ok := f.Frame.(*qlog.AckFrame); ok && len(ack.AckRanges) > 0 && pingOnly[int64(ack.AckRanges[0].Largest)] {
				delays = append(delays, ack.DelayTime)
			}
		}
	}
	// ~10 keep-alives in 500ms; a loaded machine may delay the client's timer.
	require.GreaterOrEqual(t, len(delays), 3, "the server acknowledged too few keep-alives")
	for _, d := range delays {
		require.Less(t, d, 10*time.Millisecond, "ACK delays of the keep-alives' ACKs: %v", delays)
	}
	t.Logf("%d keep-alives acknowledged, ACK delays %v", len(delays), delays)
}

func TestOnlyPingAndPadding(t *testing.T) {
	for _, tc := range []struct {
		data []byte
		want bool
	}{
		{nil, false},
		{[]byte{0x01}, true},                   // PING
		{[]byte{0x01, 0x00, 0x00, 0x00}, true}, // PING, PADDING
		{[]byte{0x00, 0x00, 0x01, 0x01}, true},
		{[]byte{0x00, 0x00}, true},                    // not ack-eliciting: the caller checks that too
		{[]byte{0x01, 0x02, 0x00, 0x00, 0x00}, false}, // PING, ACK
		{[]byte{0x08, 0x00, 0x01}, false},             // STREAM
		{[]byte{0x1e}, false},                         // HANDSHAKE_DONE
	} {
		require.Equal(t, tc.want, onlyPingAndPadding(tc.data), "% x", tc.data)
	}
}
