package quic

import (
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go/internal/protocol"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/mock/gomock"
)

func getPacketWithContents(b []byte) *packetBuffer {
	buf := getPacketBuffer()
	buf.Data = buf.Data[:len(b)]
	copy(buf.Data, b)
	return buf
}

func TestSendQueueSendOnePacket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mockCtrl := gomock.NewController(t)
		c := NewMockSendConn(mockCtrl)
		q := newSendQueue(c)

		written := make(chan struct{})
		c.EXPECT().Write([]byte("foobar"), uint16(10), protocol.ECT1).Do(
			func([]byte, uint16, protocol.ECN) error { close(written); return nil },
		)

		q.Start(func(err error) { t.Errorf("unexpected write error: %v", err) })

		q.Send(getPacketWithContents([]byte("foobar")), 10, protocol.ECT1)
		synctest.Wait()

		select {
		case <-written:
		default:
			t.Fatal("write should have returned")
		}

		closed := make(chan struct{})
		go func() {
			q.Close()
			close(closed)
		}()
		synctest.Wait()

		select {
		case <-closed:
		default:
			t.Fatal("Close should have returned")
		}
	})
}

func TestSendQueueBlocking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mockCtrl := gomock.NewController(t)
		c := NewMockSendConn(mockCtrl)
		q := newSendQueue(c)

		blockWrite := make(chan struct{})
		written := make(chan struct{}, 1)
		c.EXPECT().Write(gomock.Any(), gomock.Any(), gomock.Any()).Do(
			func([]byte, uint16, protocol.ECN) error {
				select {
				case written <- struct{}{}:
				default:
				}
				<-blockWrite
				return nil
			},
		).AnyTimes()

		q.Start(func(err error) { t.Errorf("unexpected write error: %v", err) })

		// +1, since one packet will be queued in the Write call
		for i := range sendQueueCapacity + 1 {
			require.False(t, q.WouldBlock())
			q.Send(getPacketWithContents([]byte("foobar")), 10, protocol.ECT1)
			// make sure that the first packet is actually enqueued in the Write call
			if i == 0 {
				select {
				case <-written:
				case <-time.After(time.Second):
					t.Fatal("timeout")
				}
			}
		}
		require.True(t, q.WouldBlock())
		select {
		case <-q.Available():
			t.Fatal("should not be available")
		default:
		}
		require.Panics(t, func() { q.Send(getPacketWithContents([]byte("foobar")), 10, protocol.ECT1) })

		// allow one packet to be sent
		blockWrite <- struct{}{}
		select {
		case <-written:
		case <-time.After(time.Second):
			t.Fatal("timeout")
		}
		select {
		case <-q.Available():
			require.False(t, q.WouldBlock())
		case <-time.After(time.Second):
			t.Fatal("timeout")
		}

		// when calling Close, all packets are first sent out
		closed := make(chan struct{})
		go func() {
			q.Close()
			close(closed)
		}()

		synctest.Wait()

		select {
		case <-closed:
			t.Fatal("Close should have blocked")
		default:
		}

		for range sendQueueCapacity {
			blockWrite <- struct{}{}
		}
		synctest.Wait()

		select {
		case <-closed:
		default:
			t.Fatal("Close should have returned")
		}
	})
}

func TestSendQueueWriteError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mockCtrl := gomock.NewController(t)
		c := NewMockSendConn(mockCtrl)
		q := newSendQueue(c)

		c.EXPECT().Write(gomock.Any(), gomock.Any(), gomock.Any()).Return(assert.AnError)
		q.Send(getPacketWithContents([]byte("foobar")), 6, protocol.ECNNon)

		errChan := make(chan error, 2)
		q.Start(func(err error) { errChan <- err })

		synctest.Wait()

		select {
		case err := <-errChan:
			require.ErrorIs(t, err, assert.AnError)
		default:
			t.Fatal("the write error should have been reported")
		}

		// further calls to Send should not block
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			for range 2 * sendQueueCapacity {
				q.Send(getPacketWithContents([]byte("raboof")), 6, protocol.ECNNon)
			}
		}()

		synctest.Wait()

		select {
		case <-sent:
		default:
			t.Fatal("Send should have returned")
		}
		require.Empty(t, errChan, "an error is reported once")
		q.Close() // returns: the queue stopped
	})
}

// qkas patch: the writer goroutine exists only while packets wait to be written.
func TestSendQueueWriterOnlyWhileBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mockCtrl := gomock.NewController(t)
		c := NewMockSendConn(mockCtrl)
		q := newSendQueue(c)
		var got []string
		var hold chan struct{} // while set, Write blocks until it is closed
		c.EXPECT().Write(gomock.Any(), gomock.Any(), gomock.Any()).DoAndReturn(
			func(b []byte, _ uint16, _ protocol.ECN) error {
				if hold != nil {
					<-hold
				}
				got = append(got, string(b))
				return nil
			},
		).AnyTimes()

		// Packets queued before Start wait for it.
		q.Send(getPacketWithContents([]byte("a")), 0, protocol.ECNNon)
		synctest.Wait()
		require.Empty(t, got)

		q.Start(func(err error) { t.Errorf("unexpected write error: %v", err) })
		synctest.Wait()
		require.Equal(t, []string{"a"}, got)
		require.Zero(t, sendQueueWriters(), "no goroutine stays once the queue is empty")

		for _, p := range []string{"b", "c", "d"} {
			q.Send(getPacketWithContents([]byte(p)), 0, protocol.ECNNon)
		}
		synctest.Wait()
		require.Equal(t, []string{"a", "b", "c", "d"}, got, "in order")
		require.Zero(t, sendQueueWriters())

		// While a write is under way there is exactly one writer.
		hold = make(chan struct{})
		q.Send(getPacketWithContents([]byte("x")), 0, protocol.ECNNon)
		synctest.Wait()
		require.Equal(t, 1, sendQueueWriters())
		close(hold)
		synctest.Wait()
		hold = nil
		require.Zero(t, sendQueueWriters())
		got = got[:4]

		q.Close()
		q.Send(getPacketWithContents([]byte("e")), 0, protocol.ECNNon) // after Close: dropped
		synctest.Wait()
		require.Equal(t, []string{"a", "b", "c", "d"}, got)
		require.Zero(t, sendQueueWriters())
	})
}

// sendQueueWriters counts the goroutines running a send queue's writer. It looks at stacks,
// not at runtime.NumGoroutine: goroutines of other tests come and go while this one runs.
func sendQueueWriters() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "(*sendQueue).drain(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestSendQueueSendProbe(t *testing.T) {
	mockCtrl := gomock.NewController(t)
	c := NewMockSendConn(mockCtrl)
	q := newSendQueue(c)

	addr := &net.UDPAddr{IP: net.IPv4(42, 42, 42, 42), Port: 42}
	localAddr := netip.MustParseAddr("43.43.43.43")
	c.EXPECT().WriteTo([]byte("foobar"), addr, packetInfo{
		addr: localAddr,
	})
	q.SendProbe(getPacketWithContents([]byte("foobar")), addr, packetInfo{
		addr: localAddr,
	})
}
