package httpstream

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// errBodyTooLong: the peer sent more body bytes than the head's content length.
var errBodyTooLong = &api.Error{Code: api.CodeProtocol, Message: "body longer than its content length"}

// errFrameOversize: a frame in a body (not its trailers) declares more than its type's limit.
var errFrameOversize = errors.New("body frame over its limit")

// errBodyTooShort: a framed body ended (its trailers) before the head's content length.
var errBodyTooShort = &api.Error{Code: api.CodeProtocol, Message: "body shorter than its content length"}

// bodyReader reads a message body from a stream: raw bytes up to the content length (or FIN),
// or, for FlagFramed, data frames ended by a trailers frame. A body shorter than its content
// length, cut by a reset, or longer than declared is an error, never a clean EOF: a truncated
// body must never look complete.
type bodyReader struct {
	r         io.Reader
	remaining int64 // bytes still due by the content length, -1 = not declared (raw bodies: up to FIN)
	framed    bool
	frameLeft int         // framed bodies: bytes left in the current data frame
	trailer   http.Header // framed bodies: filled from the trailers frame; may be nil
	err       error       // sticky
}

func newBodyReader(r io.Reader, contentLength int64, framed bool, trailer http.Header) *bodyReader {
	return &bodyReader{r: r, remaining: contentLength, framed: framed, trailer: trailer}
}

// requestBody is the body of a request NewRequest builds: a bodyReader of the stream whose
// Close stops reading it. Whoever reads the body closes it when done, and a proxy closes it to
// end a Read blocked on the client: internal/upstream's bodyWriter (as net/http's Transport)
// closes the body when the service's response ends first. That happens when a service answers
// early (a 401 after the first chunk of an upload) to a client that waits for the answer before
// it sends more: a Close that interrupted nothing left the proxy waiting for the client, and the
// answer, held until the handler returned, never reached it.
//
// Close stops the receive side with STOP_SENDING code 0, not a read deadline: code 0 tells the
// opener (kasd) that this side answers without the rest of the body, so it stops the upload and
// reads the answer as a complete one (api/SPEC.md); otherwise the upload would go on into a
// stream nobody reads. After the body's end was read (its FIN) nothing is sent. The body of an
// upgrade request does not stop the stream: after a 101 its receive side carries the upgraded
// protocol. Close is idempotent and safe concurrently with a Read (quic-go's CancelRead is
// both); a Read it interrupts, or a later one, returns a *quicgo.StreamError (Remote false).
type requestBody struct {
	bodyReader
	sc      *quic.StreamConn
	upgrade bool
}

// newRequestBody returns the body of the request f read from sc; the trailers of a framed body
// go to trailer.
func newRequestBody(sc *quic.StreamConn, f *api.Request, trailer http.Header) *requestBody {
	return &requestBody{
		bodyReader: bodyReader{r: sc, remaining: f.ContentLength, framed: f.Has(api.FlagFramed), trailer: trailer},
		sc:         sc,
		upgrade:    f.Has(api.FlagUpgrade),
	}
}

func (b *requestBody) Close() error {
	if !b.upgrade {
		b.sc.Stream().CancelRead(quic.StreamCodeNoError)
	}
	return nil
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.read(p)
	if err != nil {
		b.err = err
	}
	return n, err
}

func (b *bodyReader) read(p []byte) (int, error) {
	if b.framed {
		return b.readFramed(p)
	}
	if b.remaining == 0 {
		return 0, b.expectEOF()
	}
	if b.remaining > 0 && int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.r.Read(p)
	if b.remaining > 0 {
		b.remaining -= int64(n)
		if err == io.EOF && b.remaining > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err == nil && b.remaining == 0 && n > 0 {
			// The last bytes go out only with the end of the stream (the FIN usually came
			// in the same packet): a body followed by more bytes, or by a reset, is an
			// error, and its last bytes must not complete it for the reader.
			if err := b.expectEOF(); err != io.EOF {
				return 0, err
			}
			return n, io.EOF
		}
	}
	return n, err
}

// expectEOF checks that the body ends where its content length says.
func (b *bodyReader) expectEOF() error {
	var one [1]byte
	n, err := b.r.Read(one[:])
	if n > 0 {
		return errBodyTooLong
	}
	if err == nil {
		return b.expectEOF()
	}
	return err
}

func (b *bodyReader) readFramed(p []byte) (int, error) {
	for b.frameLeft == 0 {
		t, n, err := api.ReadFrameHeader(b.r)
		if err == io.EOF {
			return 0, io.ErrUnexpectedEOF // a framed body ends with its trailers, not FIN
		}
		if err != nil && t != api.TypeTrailers && errors.Is(err, api.ErrFrameTooLarge) {
			// Only a head or trailers over MaxHeadSize is a head limit (counted as
			// response_head_too_large); a data frame over MaxDataSize is a protocol error.
			msg := err.Error()
			if e, ok := errors.AsType[*api.Error](err); ok {
				msg = e.Message // its code is said once, by the new error
			}
			return 0, &api.Error{Code: api.CodeProtocol, Message: msg, Err: errFrameOversize}
		}
		if err != nil {
			return 0, err
		}
		switch t {
		case api.TypeData:
			if b.remaining >= 0 {
				// A framed body with a declared length (a sender may declare both): its data
				// must add up to it, as a raw body's bytes must.
				if int64(n) > b.remaining {
					return 0, errBodyTooLong
				}
				b.remaining -= int64(n)
			}
			b.frameLeft = n
		case api.TypeTrailers:
			if b.remaining > 0 {
				return 0, errBodyTooShort
			}
			buf := make([]byte, api.FrameHeaderSize+n)
			buf[0], buf[1], buf[2], buf[3] = byte(t), byte(n>>16), byte(n>>8), byte(n)
			if _, err := io.ReadFull(b.r, buf[api.FrameHeaderSize:]); err != nil {
				return 0, io.ErrUnexpectedEOF
			}
			m, _, err := api.ParseFrame(buf)
			if err != nil {
				return 0, err
			}
			if b.trailer != nil {
				AddKVs(b.trailer, m.(*api.Trailers).Header, false)
			}
			return 0, b.expectEOF()
		default:
			return 0, &api.Error{Code: api.CodeProtocol, Message: fmt.Sprintf("%s frame in a framed body", t), Err: api.ErrUnexpectedFrame}
		}
	}
	if len(p) > b.frameLeft {
		p = p[:b.frameLeft]
	}
	n, err := b.r.Read(p)
	b.frameLeft -= n
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// framedWriter writes a body as data frames and, at the end, a trailers frame.
type framedWriter struct {
	w   io.Writer
	buf []byte
}

func (f *framedWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), api.MaxDataSize)]
		f.buf = append(f.buf[:0], byte(api.TypeData), byte(len(chunk)>>16), byte(len(chunk)>>8), byte(len(chunk)))
		f.buf = append(f.buf, chunk...)
		if _, err := f.w.Write(f.buf); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// writeTrailers ends the framed body.
func (f *framedWriter) writeTrailers(h http.Header) error {
	b, err := encodeTrailers(f.buf[:0], h)
	if err != nil {
		return err
	}
	_, err = f.w.Write(b)
	return err
}

// encodeTrailers appends the trailers frame for h to dst, or says why the peer would refuse it:
// over MaxHeadSize (EncodeFrame checks it) or MaxHeaderFields.
func encodeTrailers(dst []byte, h http.Header) ([]byte, error) {
	kvs := dropInvalid(HeaderKVs(nil, h, false))
	if len(kvs) > api.MaxHeaderFields {
		return dst, &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("%d trailer fields, max %d", len(kvs), api.MaxHeaderFields), Err: api.ErrHeadTooLarge}
	}
	return api.EncodeFrame(dst, &api.Trailers{Header: kvs})
}

// checkTrailers is encodeTrailers' verdict, for trailers about to be written.
func checkTrailers(h http.Header) error {
	if len(h) == 0 {
		return nil
	}
	_, err := encodeTrailers(nil, h)
	return err
}

// Copy buffer sizes. Every body copy in qkas starts with a small buffer; a copy whose read
// fills it (the source is ahead of the destination: a bulk transfer) moves to a large one (see
// copyBuf). A stream write blocks until quic-go has packed nearly all of it, and a socket write
// costs a system call, so each copy step has a fixed cost: 256 KiB steps instead of 32 KiB cut
// the tunnel's CPU per byte of a bulk download by about 17% (docs/performance.md, "Bulk
// transfers"), while the many long-lived, mostly idle copies (watches, event streams,
// upgraded streams), whose reads never fill 32 KiB, keep the small buffer.
const (
	smallCopyBuffer = 32 << 10
	largeCopyBuffer = 256 << 10
)

// copyBuffers and largeBuffers hold the copy buffers of each size.
var (
	copyBuffers  = sync.Pool{New: func() any { b := make([]byte, smallCopyBuffer); return &b }}
	largeBuffers = sync.Pool{New: func() any { b := make([]byte, largeCopyBuffer); return &b }}
)

// GetBuffer returns a 32 KiB copy buffer; give it back with PutBuffer.
func GetBuffer() *[]byte { return copyBuffers.Get().(*[]byte) }

// PutBuffer returns a buffer from GetBuffer.
func PutBuffer(b *[]byte) { copyBuffers.Put(b) }

// copyBuf is the buffer of one copy loop: small at first, large once a read filled it.
type copyBuf struct{ bp *[]byte }

func newCopyBuf() copyBuf { return copyBuf{bp: GetBuffer()} }

// buf is the buffer to read into next.
func (c *copyBuf) buf() []byte { return *c.bp }

// used is called once the n bytes of a read are written: a read that filled the small buffer
// moves the copy to a large one.
func (c *copyBuf) used(n int) {
	if n == smallCopyBuffer && len(*c.bp) == smallCopyBuffer {
		PutBuffer(c.bp)
		c.bp = largeBuffers.Get().(*[]byte)
	}
}

// release gives the buffer back to its pool.
func (c *copyBuf) release() {
	if len(*c.bp) == largeCopyBuffer {
		largeBuffers.Put(c.bp)
	} else {
		PutBuffer(c.bp)
	}
	c.bp = nil
}
