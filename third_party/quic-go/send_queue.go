package quic

import (
	"net"
	"sync"

	"github.com/quic-go/quic-go/internal/protocol"
)

type sender interface {
	Send(p *packetBuffer, gsoSize uint16, ecn protocol.ECN)
	SendProbe(*packetBuffer, net.Addr, packetInfo)
	// Start arms the queue: from now on a packet passed to Send is written by a goroutine the
	// queue starts when it needs one. onError is called (once, from that goroutine) when a
	// write fails with an error other than "message too large"; the queue drops what it holds
	// and every later packet.
	Start(onError func(error))
	WouldBlock() bool
	Available() <-chan struct{}
	Close()
}

type queueEntry struct {
	buf     *packetBuffer
	gsoSize uint16
	ecn     protocol.ECN
}

// qkas patch: the queue's goroutine runs only while there are packets to write.
// Upstream runs one goroutine per connection for the connection's whole life, blocked on the
// queue when there is nothing to send: on a server holding tens of thousands of idle
// connections that is a goroutine and its stack (2-8 KiB) for each of them. Here the first
// packet queued while no writer runs starts one; it writes until the queue is empty and
// returns. Packets are still written in the order they were queued, by one goroutine at a
// time, and Send still never blocks.
type sendQueue struct {
	conn      sendConn
	queue     chan queueEntry
	available chan struct{}
	done      chan struct{} // closed once the queue is closed and drained, or stopped by an error

	mu       sync.Mutex
	onError  func(error) // nil until Start
	running  bool        // a writer goroutine is draining the queue
	closing  bool        // Close was called
	stopped  bool        // no packet will be written any more (closed and drained, or a write failed)
	doneOnce bool        // done is closed
}

var _ sender = &sendQueue{}

const sendQueueCapacity = 8

func newSendQueue(conn sendConn) sender {
	return &sendQueue{
		conn:      conn,
		done:      make(chan struct{}),
		available: make(chan struct{}, 1),
		queue:     make(chan queueEntry, sendQueueCapacity),
	}
}

// Send sends out a packet. It's guaranteed to not block.
// Callers need to make sure that there's actually space in the send queue by calling WouldBlock.
// Otherwise Send will panic.
func (h *sendQueue) Send(p *packetBuffer, gsoSize uint16, ecn protocol.ECN) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	select {
	case h.queue <- queueEntry{buf: p, gsoSize: gsoSize, ecn: ecn}:
		// clear available channel if we've reached capacity
		if len(h.queue) == sendQueueCapacity {
			select {
			case <-h.available:
			default:
			}
		}
	default:
		panic("sendQueue.Send would have blocked")
	}
	h.startLocked()
}

// startLocked starts a writer if packets wait, none runs, and the queue was started.
func (h *sendQueue) startLocked() {
	if h.running || h.onError == nil || len(h.queue) == 0 {
		return
	}
	h.running = true
	go h.drain()
}

func (h *sendQueue) Start(onError func(error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.onError = onError
	h.startLocked()
}

// drain writes queued packets until the queue is empty.
func (h *sendQueue) drain() {
	for {
		var e queueEntry
		h.mu.Lock()
		select {
		case e = <-h.queue:
		default:
			h.running = false
			if h.closing {
				h.stopLocked()
			}
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		if err := h.conn.Write(e.buf.Data, e.gsoSize, e.ecn); err != nil {
			// This additional check enables:
			// 1. Checking for "datagram too large" message from the kernel, as such,
			// 2. Path MTU discovery,and
			// 3. Eventual detection of loss PingFrame.
			if !isSendMsgSizeErr(err) {
				h.mu.Lock()
				h.running = false
				h.stopLocked()
				onError := h.onError
				h.mu.Unlock()
				onError(err)
				return
			}
		}
		e.buf.Release()
		select {
		case h.available <- struct{}{}:
		default:
		}
	}
}

// stopLocked ends the queue: later packets are dropped and Close returns.
func (h *sendQueue) stopLocked() {
	h.stopped = true
	if !h.doneOnce {
		h.doneOnce = true
		close(h.done)
	}
}

func (h *sendQueue) SendProbe(p *packetBuffer, addr net.Addr, info packetInfo) {
	h.conn.WriteTo(p.Data, addr, info)
}

func (h *sendQueue) WouldBlock() bool {
	return len(h.queue) == sendQueueCapacity
}

func (h *sendQueue) Available() <-chan struct{} {
	return h.available
}

// Close waits until every queued packet was written (or a write failed), then returns.
func (h *sendQueue) Close() {
	h.mu.Lock()
	h.closing = true
	if !h.running {
		h.stopLocked()
	}
	h.mu.Unlock()
	<-h.done
}
