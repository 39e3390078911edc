package ackhandler

import (
	"testing"

	"github.com/quic-go/quic-go/internal/monotime"
	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/utils"

	"github.com/stretchr/testify/require"
)

// qkas patch: AckNow makes the ACK of what was received due at once, without the alarm.
func TestReceivedPacketHandlerAckNow(t *testing.T) {
	handler := NewReceivedPacketHandler(utils.DefaultLogger)
	now := monotime.Now()
	// Nothing received: nothing to acknowledge, now or later.
	handler.AckNow()
	require.Nil(t, handler.GetAckFrame(protocol.Encryption1RTT, now, true))

	require.NoError(t, handler.ReceivedPacket(1, protocol.ECNNon, protocol.Encryption1RTT, now, true))
	require.Equal(t, now.Add(MaxAckDelay), handler.GetAlarmTimeout())
	require.Nil(t, handler.GetAckFrame(protocol.Encryption1RTT, now, true), "one packet: the ACK waits for the alarm")
	handler.AckNow()
	require.Zero(t, handler.GetAlarmTimeout())
	ack := handler.GetAckFrame(protocol.Encryption1RTT, now, true)
	require.NotNil(t, ack)
	require.Equal(t, protocol.PacketNumber(1), ack.LargestAcked())

	// Acknowledged already: AckNow queues nothing more.
	handler.AckNow()
	require.Nil(t, handler.GetAckFrame(protocol.Encryption1RTT, now, true))
}
