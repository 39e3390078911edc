package quic

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// qkas patch: the queue starts with room for 2 packets (upstream: 8) and grows when a burst
// needs more; an idle connection (one keep-alive per period) keeps the small array.
func TestReceivedPacketQueueStartsSmall(t *testing.T) {
	h := &pathReceiver{id: 1}
	var q receivedPacketQueue
	q.Init(h)
	// RingBuffer's fields are unexported in another package; its first field is the slice.
	ring := (*[]receivedPacket)(unsafe.Pointer(&q.main))
	require.Equal(t, 2, cap(*ring))

	for i := range 20 {
		require.True(t, q.Push(receivedPacket{data: fmt.Appendf(nil, "%d", i)}, h))
	}
	require.GreaterOrEqual(t, cap(*ring), 20)
	for i := range 20 {
		p, _, ok := q.Pop()
		require.True(t, ok)
		require.Equal(t, fmt.Sprint(i), string(p.data))
	}
	require.True(t, q.Empty())
}
