package httpstream

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/quic"
)

// Splice copies a→b and b→a until both directions end, then closes both. A clean end of one
// direction (EOF) is passed on as a half-close (CloseWrite, FIN) when the writer supports it, so
// the other direction keeps going. A peer that stops reading (STOP_SENDING: a write fails with
// its remote stream error) ends that direction only, and is passed on upstream: the stream the
// bytes came from stops reading with the same code, and the other direction keeps going (an
// agent that answered and reads no more of the request body has still sent a complete
// response). Any other error, reading or writing, aborts both (streams are reset, never ended
// as if complete). It uses pooled buffers and one goroutine besides the caller's, which it
// waits for. It returns the bytes copied each way.
func Splice(a, b io.ReadWriteCloser) (ab, ba int64) { return SpliceWith(a, b, nil) }

// SpliceWith is Splice where codeFor chooses the reset code for a failure that is not a peer's
// reset (whose code is always passed on); nil means StreamCodeCanceled. A forwarding kasd uses
// it to say "refused" when the agent connection died without taking the request.
func SpliceWith(a, b io.ReadWriteCloser, codeFor func(error) quicgo.StreamErrorCode) (ab, ba int64) {
	ab, ba, _ = splice(a, b, codeFor, 0)
	return ab, ba
}

// SpliceHalfClosed is Splice where, once one direction has ended, the other must carry a byte
// every idle or both are cut (as HAProxy's timeout client-fin and server-fin): a client that
// went away without a word (its FIN read as a half-close) and a service that never closes its
// side held the tunnel, and its in-flight slot, for as long as the service lived. cut reports
// whether the bound ended it. idle 0: no bound.
func SpliceHalfClosed(a, b io.ReadWriteCloser, idle time.Duration) (ab, ba int64, cut bool) {
	return splice(a, b, nil, idle)
}

func splice(a, b io.ReadWriteCloser, codeFor func(error) quicgo.StreamErrorCode, idle time.Duration) (ab, ba int64, cut bool) {
	if idle <= 0 {
		var wg sync.WaitGroup
		wg.Go(func() { ab = pipe(b, a, codeFor, nil) })
		ba = pipe(a, b, codeFor, nil)
		wg.Wait()
		_ = a.Close()
		_ = b.Close()
		return ab, ba, false
	}
	var lastAB, lastBA atomic.Int64 // unix nanoseconds of each direction's last byte
	doneAB, doneBA := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { ab = pipe(b, a, codeFor, &lastAB); close(doneAB) })
	wg.Go(func() { ba = pipe(a, b, codeFor, &lastBA); close(doneBA) })
	var left <-chan struct{}
	var last *atomic.Int64
	select {
	case <-doneAB:
		left, last = doneBA, &lastBA
	case <-doneBA:
		left, last = doneAB, &lastAB
	}
	// One direction has ended: the other is watched from now.
	last.Store(time.Now().UnixNano())
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		select {
		case <-left:
			wg.Wait()
			_ = a.Close()
			_ = b.Close()
			return ab, ba, cut
		case <-t.C:
			if quiet := time.Since(time.Unix(0, last.Load())); quiet < idle {
				t.Reset(idle - quiet)
				continue
			}
			cut = true
			abort(a, quic.StreamCodeCanceled) // ends the direction still running
			abort(b, quic.StreamCodeCanceled)
		}
	}
}

type closeWriter interface{ CloseWrite() error }

func pipe(dst, src io.ReadWriteCloser, codeFor func(error) quicgo.StreamErrorCode, last *atomic.Int64) int64 {
	n, err := copyStream(dst, src, last)
	var we *writeError
	if se := (*quicgo.StreamError)(nil); errors.As(err, &we) && errors.As(we.err, &se) && se.Remote {
		// dst's reader stopped reading (STOP_SENDING; quic-go has reset dst's send side with its
		// code). That ends this direction, not the exchange: the reader may have answered
		// already, and its answer is still on its way the other way. Tell the writer upstream
		// to stop sending too, as this one was told.
		stopReading(src, se.ErrorCode)
		return n
	}
	if err != nil {
		// A peer's reset code is passed on: a refusal (StreamCodeRefused) must still say
		// "not processed" at the far end.
		code := quic.StreamCodeCanceled
		var se *quicgo.StreamError
		switch {
		case errors.As(err, &se) && se.Remote:
			code = se.ErrorCode
		case codeFor != nil:
			code = codeFor(err)
		}
		abort(dst, code)
		abort(src, code)
		return n
	}
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return n
}

// stopReading stops reading c with code (STOP_SENDING on a stream); its other direction goes on.
// Anything that is not a stream is left as it is: Splice closes it at the end.
func stopReading(c io.Closer, code quicgo.StreamErrorCode) {
	switch x := c.(type) {
	case *quic.StreamConn:
		x.Stream().CancelRead(code)
	case *upgradedStream:
		x.sc.Stream().CancelRead(code)
	case *upgradedBody:
		x.x.sc.Stream().CancelRead(code)
	}
}

// abort ends c with an error: a stream is reset with code, anything else closed.
func abort(c io.Closer, code quicgo.StreamErrorCode) {
	switch x := c.(type) {
	case *quic.StreamConn:
		x.Abort(code)
	case *upgradedStream:
		x.sc.Abort(code)
	case *upgradedBody:
		x.x.finish(false)
	default:
		_ = c.Close()
	}
}

// writeError marks a failure of copyStream's writes (as opposed to its reads).
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// copyStream copies src to dst until EOF (a nil error) or a failure, with a pooled buffer
// that grows for bulk transfers (copyBuf). A failure to write is a *writeError.
func copyStream(dst io.Writer, src io.Reader, last *atomic.Int64) (int64, error) {
	cb := newCopyBuf()
	defer cb.release()
	var total int64
	for {
		buf := cb.buf()
		n, err := src.Read(buf)
		if n > 0 {
			if last != nil {
				last.Store(time.Now().UnixNano())
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, &writeError{werr}
			}
			if w != n {
				return total, &writeError{io.ErrShortWrite}
			}
			cb.used(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
