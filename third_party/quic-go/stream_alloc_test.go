package quic

import (
	"context"
	"testing"

	"github.com/quic-go/quic-go/internal/monotime"
	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/wire"

	"github.com/stretchr/testify/require"
	"go.uber.org/mock/gomock"
)

// qkas patch: a new stream is a few allocations (the halves' senders live in the Stream, the
// frame sorter in the ReceiveStream, its gap list is made only for data out of order), and
// data received in order allocates nothing in the frame sorter.
func TestNewStreamAllocations(t *testing.T) {
	const streamID protocol.StreamID = 1337
	mockCtrl := gomock.NewController(t)
	mockSender := NewMockStreamSender(mockCtrl)
	fc := newTestStreamFlowControllerWithSendWindow(streamID, protocol.MaxByteCount)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		_ = newStream(ctx, streamID, mockSender, fc, false)
	})
	t.Logf("%v allocations per new stream", allocs)
	// Stream; SendStream, its two channels and its context (two); ReceiveStream and its two channels.
	require.LessOrEqual(t, allocs, 9.0)

	str := newStream(ctx, streamID, mockSender, fc, false)
	var offset protocol.ByteCount
	data := []byte("foobar")
	buf := make([]byte, len(data))
	allocs = testing.AllocsPerRun(100, func() {
		require.NoError(t, str.handleStreamFrame(&wire.StreamFrame{StreamID: streamID, Offset: offset, Data: data}, monotime.Now()))
		n, err := str.Read(buf)
		require.NoError(t, err)
		require.Equal(t, len(data), n)
		offset += protocol.ByteCount(n)
	})
	// The stream frame and the method value of its PutBack escape (the receive stream holds the
	// data until it is read); the frame sorter adds nothing.
	require.LessOrEqual(t, allocs, 2.0)
	require.Nil(t, str.receiveStr.frameQueue.gaps)
	require.Nil(t, str.receiveStr.frameQueue.queue)
}
