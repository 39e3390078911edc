package logbuf

import (
	"io"
	"sync"
	"time"
)

// Defaults of New's arguments.
const (
	DefaultFlushInterval = 100 * time.Millisecond
	DefaultMaxBuffer     = 1 << 20
)

// Writer is an io.Writer that batches writes to its destination. Safe for concurrent use.
type Writer struct {
	dst      io.Writer
	interval time.Duration
	max      int

	wmu    sync.Mutex // held while writing to dst
	mu     sync.Mutex // guards what follows
	room   *sync.Cond // signalled when a flush empties buf
	buf    []byte
	spare  []byte
	closed bool

	kick   chan struct{} // the first line of a batch arrived
	urgent chan struct{} // the buffer holds max/2 bytes or more
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// New returns a Writer to dst that flushes interval after a batch's first line (interval <= 0:
// DefaultFlushInterval) and holds at most maxBuffer bytes before writers wait (<= 0:
// DefaultMaxBuffer). It starts the flushing goroutine; Close stops it.
func New(dst io.Writer, interval time.Duration, maxBuffer int) *Writer {
	if interval <= 0 {
		interval = DefaultFlushInterval
	}
	if maxBuffer <= 0 {
		maxBuffer = DefaultMaxBuffer
	}
	w := &Writer{
		dst: dst, interval: interval, max: maxBuffer,
		kick: make(chan struct{}, 1), urgent: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	w.room = sync.NewCond(&w.mu)
	go w.run()
	return w
}

// Write copies p into the buffer (p is one log line: zerolog writes an event in one call). It
// waits while the buffer is full. After Close it writes p through.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	for !w.closed && len(w.buf) > 0 && len(w.buf)+len(p) > w.max {
		signal(w.urgent)
		w.room.Wait()
	}
	if w.closed {
		w.mu.Unlock()
		w.wmu.Lock()
		defer w.wmu.Unlock()
		return w.dst.Write(p)
	}
	first := len(w.buf) == 0
	w.buf = append(w.buf, p...)
	full := len(w.buf) >= w.max/2
	w.mu.Unlock()
	if first {
		signal(w.kick)
	}
	if full {
		signal(w.urgent)
	}
	return len(p), nil
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (w *Writer) run() {
	defer close(w.done)
	t := time.NewTimer(w.interval)
	t.Stop()
	for {
		select {
		case <-w.kick: // a batch began: give it the interval to fill
			t.Reset(w.interval)
			select {
			case <-t.C:
			case <-w.urgent:
				t.Stop()
			case <-w.stop:
				t.Stop()
				w.flush()
				return
			}
		case <-w.urgent:
		case <-w.stop:
			w.flush()
			return
		}
		w.flush()
	}
}

// flush writes out what the buffer holds; writers fill the other buffer meanwhile. wmu keeps
// the destination's writes in the order the lines arrived.
func (w *Writer) flush() {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.mu.Lock()
	out := w.buf
	w.buf, w.spare = w.spare[:0], nil
	w.room.Broadcast()
	w.mu.Unlock()
	if len(out) == 0 {
		return
	}
	_, _ = w.dst.Write(out) // as zerolog's own writes: a line that cannot be written is lost
	if cap(out) > 2*w.max {
		out = nil // a burst grew it; let it go
	}
	w.mu.Lock()
	w.spare = out[:0]
	w.mu.Unlock()
}

// Flush writes out what the buffer holds now and returns when it has been written.
func (w *Writer) Flush() { w.flush() }

// Close writes out the buffer, stops the flushing goroutine and waits for it. Later writes go
// straight to the destination. Safe to call more than once.
func (w *Writer) Close() error {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		w.mu.Lock()
		w.closed = true
		rest := w.buf
		w.buf = nil
		w.room.Broadcast()
		w.mu.Unlock()
		if len(rest) > 0 {
			w.wmu.Lock()
			_, _ = w.dst.Write(rest)
			w.wmu.Unlock()
		}
	})
	return nil
}
