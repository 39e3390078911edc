package quic

import (
	"testing"

	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/wire"

	"github.com/stretchr/testify/require"
)

// qkas patch: data received in order never makes the frame sorter's map.
func TestFrameSorterInOrderMakesNoMap(t *testing.T) {
	s := newFrameSorter()
	var offset protocol.ByteCount
	for i := range 100 {
		data := []byte{byte(i), byte(i), byte(i)}
		cb, tr := getFrameSorterTestCallback(t)
		require.NoError(t, s.Push(data, offset, cb))
		require.True(t, s.HasMoreData())
		p := make([]byte, 2)
		require.NoError(t, s.Peek(offset, p))
		require.Equal(t, data[:2], p)
		off, got, done := s.Pop()
		require.Equal(t, offset, off)
		require.Equal(t, data, got)
		done()
		require.True(t, tr.WasCalled())
		require.False(t, s.HasMoreData())
		offset += 3
	}
	require.Nil(t, s.queue, "in-order data made the map")
	require.Nil(t, s.gaps, "in-order data made the gap list")
	require.Equal(t, offset, s.gapStart)

	// A duplicate of what was read is still a duplicate, and its buffer is released.
	cb, tr := getFrameSorterTestCallback(t)
	require.NoError(t, s.Push([]byte("xyz"), offset-3, cb))
	require.True(t, tr.WasCalled())
	require.False(t, s.HasMoreData())

	require.Nil(t, s.queue, "a duplicate made the map")

	// A duplicate of head while it waits is dropped (its buffer released), head is kept.
	cbHead, trHead := getFrameSorterTestCallback(t)
	require.NoError(t, s.Push([]byte("abc"), offset, cbHead))
	require.True(t, s.hasHead)
	cbDup, trDup := getFrameSorterTestCallback(t)
	require.NoError(t, s.Push([]byte("abc"), offset, cbDup))
	require.True(t, trDup.WasCalled())
	require.False(t, trHead.WasCalled())

	// Data that arrives while head waits moves head into the map, at its offset.
	require.NoError(t, s.Push([]byte("ghi"), offset+6, nil))
	require.False(t, s.hasHead)
	require.Contains(t, s.queue, offset)
	require.NoError(t, s.Push([]byte("def"), offset+3, nil))
	p := make([]byte, 9)
	require.NoError(t, s.Peek(offset, p))
	require.Equal(t, "abcdefghi", string(p))
	var read []byte
	for s.HasMoreData() {
		_, data, done := s.Pop()
		if done != nil {
			done()
		}
		read = append(read, data...)
	}
	require.Equal(t, "abcdefghi", string(read))
	require.True(t, trHead.WasCalled())

	// A longer retransmission of head replaces it, as upstream replaces a shorter entry, and
	// releases head's buffer.
	offset += 9
	cbShort, trShort := getFrameSorterTestCallback(t)
	require.NoError(t, s.Push([]byte("ab"), offset, cbShort))
	require.True(t, s.hasHead)
	require.NoError(t, s.Push([]byte("abcd"), offset, nil))
	require.True(t, trShort.WasCalled())
	_, data, _ := s.Pop()
	require.Equal(t, "abcd", string(data))
	require.False(t, s.HasMoreData())
}

// qkas patch: a crypto stream lets its frame sorter go once it is finished.
func TestCryptoStreamReleasesFrameSorter(t *testing.T) {
	str := newCryptoStream()
	// a message in three frames, out of order (as a scrambled ClientHello arrives)
	require.NoError(t, str.HandleCryptoFrame(&wire.CryptoFrame{Offset: 6, Data: []byte("ghi")}))
	require.NoError(t, str.HandleCryptoFrame(&wire.CryptoFrame{Offset: 3, Data: []byte("def")}))
	require.NoError(t, str.HandleCryptoFrame(&wire.CryptoFrame{Offset: 0, Data: []byte("abc")}))
	require.NotNil(t, str.queue.queue)
	var got []byte
	for {
		data := str.GetCryptoData()
		if data == nil {
			break
		}
		got = append(got, data...)
	}
	require.Equal(t, "abcdefghi", string(got))
	require.NoError(t, str.Finish())
	require.Nil(t, str.queue.queue)
	require.Nil(t, str.queue.gaps)

	// A retransmission after the change of encryption level is still ignored, new data still
	// refused, and nothing is read.
	require.NoError(t, str.HandleCryptoFrame(&wire.CryptoFrame{Offset: 3, Data: []byte("def")}))
	require.NoError(t, str.HandleCryptoFrame(&wire.CryptoFrame{Offset: 0, Data: []byte("abc")}))
	require.Nil(t, str.GetCryptoData())
	require.Error(t, str.HandleCryptoFrame(&wire.CryptoFrame{Offset: 9, Data: []byte("jkl")}))
	require.NoError(t, str.Finish())
}
