package api

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"unsafe"
)

const (
	ALPNAgent = "qkas-agent/2" // agent <-> kasd connections
	ALPNPeer  = "qkas-peer/2"  // kasd <-> kasd connections

	// ProtocolVersion 2: request and response heads are binary frames (version 1 carried
	// HTTP/1.1 text after a request frame).
	ProtocolVersion uint64 = 2

	// FrameHeaderSize is the size of a frame header: type u8 | length u24.
	FrameHeaderSize = 4
	// MaxFrameSize is the absolute cap on any payload, whatever its type.
	// Every FrameType.MaxSize is at most this.
	MaxFrameSize = 64 << 10
)

// MetaCaller is the Request.Meta key of the caller: the sub of the client's verified JWT, set by
// the entry kasd so that the holding kasd's and agentd's access lines name who asked (docs/
// DESIGN.md lists every key). Informational: nothing is authorized on it. A peer that predates
// it ignores it (unknown keys are), so old and new kasd and agentd interoperate.
const MetaCaller = "caller"

// FrameType is the first byte of a frame.
type FrameType uint8

const (
	TypeHello     FrameType = 1
	TypeWelcome   FrameType = 2
	TypeError     FrameType = 3
	TypeGoAway    FrameType = 4
	TypePeerHello FrameType = 5
	TypePing      FrameType = 6
	TypeRequest   FrameType = 8
	TypeResponse  FrameType = 9
	TypeForward   FrameType = 10
	TypeData      FrameType = 11
	TypeTrailers  FrameType = 12
	TypeAccepted  FrameType = 13
)

// Limits of the stream protocol that a peer controls. Each is checked from a frame's header or
// while parsing, before anything larger is allocated, and is refused with a typed error.
const (
	// MaxHeadSize bounds a request, response or trailers frame: method, target, host, metadata
	// and every header name and value with their length prefixes.
	MaxHeadSize = 64 << 10
	// MaxHeaderFields bounds the header (or trailer) fields of one head.
	MaxHeaderFields = 512
	// MaxInformational bounds the 1xx responses (other than 101) before a final response.
	MaxInformational = 8
	// MaxDataSize bounds one data frame of a framed body.
	MaxDataSize = 64 << 10
)

var frameInfo = [...]struct {
	name    string
	maxSize int
}{
	TypeHello:     {"hello", 16 << 10},
	TypeWelcome:   {"welcome", 4 << 10},
	TypeError:     {"error", 4 << 10},
	TypeGoAway:    {"goaway", 1 << 10},
	TypePeerHello: {"peer_hello", 4 << 10},
	TypePing:      {"ping", 1 << 10},
	TypeRequest:   {"request", MaxHeadSize},
	TypeResponse:  {"response", MaxHeadSize},
	TypeForward:   {"forward", 4 << 10},
	TypeData:      {"data", MaxDataSize},
	TypeTrailers:  {"trailers", MaxHeadSize},
	TypeAccepted:  {"accepted", 1 << 10},
}

func (t FrameType) known() bool { return int(t) < len(frameInfo) && frameInfo[t].name != "" }

// String returns the frame's name ("hello", "request", "response", ...), or "type_N" for an
// unknown type.
func (t FrameType) String() string {
	if t.known() {
		return frameInfo[t].name
	}
	return "type_" + strconv.Itoa(int(t))
}

// MaxSize returns the largest payload a frame of type t may declare; 0 for
// an unknown type.
func (t FrameType) MaxSize() int {
	if t.known() {
		return min(frameInfo[t].maxSize, MaxFrameSize)
	}
	return 0
}

// maxLength is the largest value the u24 length field can hold.
const maxLength = 1<<24 - 1

// AppendFrame appends the frame (header + payload) for m to b.
//
// AppendFrame cannot fail. Error.Message and GoAway.Reason are cut to fit; if another message is larger than its type's MaxSize the
// frame is still appended, and the receiver rejects it with ErrFrameTooLarge
// before reading its payload. Use EncodeFrame or WriteFrame to get an error
// instead.
func AppendFrame(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, byte(m.Type()), 0, 0, 0)
	b = m.AppendPayload(b)
	n := min(len(b)-start-FrameHeaderSize, maxLength)
	b[start+1] = byte(n >> 16)
	b[start+2] = byte(n >> 8)
	b[start+3] = byte(n)
	return b
}

// EncodeFrame is AppendFrame that refuses frames the receiver would reject:
// an unknown type (CodeInternal, ErrUnknownFrameType) or a payload larger
// than the type's MaxSize (CodeTooLarge, ErrFrameTooLarge). On error b is
// returned unchanged in length.
func EncodeFrame(b []byte, m Message) ([]byte, error) {
	start := len(b)
	b = AppendFrame(b, m)
	if err := checkEncoded(m.Type(), len(b)-start-FrameHeaderSize); err != nil {
		return b[:start], err
	}
	return b, nil
}

func checkEncoded(t FrameType, n int) error {
	if !t.known() {
		return &Error{Code: CodeInternal, Message: "cannot encode frame of unknown " + t.String(), Err: ErrUnknownFrameType}
	}
	if n > t.MaxSize() {
		return &Error{Code: CodeTooLarge, Message: fmt.Sprintf("%s frame payload is %d bytes, max %d", t, n, t.MaxSize()), Err: ErrFrameTooLarge}
	}
	return nil
}

// writeBufs recycles WriteFrame buffers; buffers that grew beyond the
// largest frame type are dropped rather than kept.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// WriteFrame writes the frame for m with exactly one w.Write call, so a
// frame is never interleaved with other writes to w. It returns the errors
// of EncodeFrame without writing anything.
func WriteFrame(w io.Writer, m Message) error {
	bp := writeBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= FrameHeaderSize+MaxHeadSize {
			writeBufs.Put(bp)
		}
	}()
	b, err := EncodeFrame((*bp)[:0], m)
	*bp = b
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// protocolError builds the *Error returned by parsers.
func protocolError(sentinel error, format string, args ...any) *Error {
	return &Error{Code: CodeProtocol, Message: fmt.Sprintf(format, args...), Err: sentinel}
}

// checkHeader validates a header before anything is allocated or read.
func checkHeader(h []byte) (FrameType, int, error) {
	t := FrameType(h[0])
	n := int(h[1])<<16 | int(h[2])<<8 | int(h[3])
	if !t.known() {
		if n > MaxFrameSize {
			// Too long to skip: a reader cannot stay in step with the stream, so this is the
			// same fatal error as any oversize frame, whichever function reads it.
			return t, n, protocolError(ErrFrameTooLarge, "unknown frame %s declares %d bytes, max %d", t, n, MaxFrameSize)
		}
		return t, n, protocolError(ErrUnknownFrameType, "unknown frame %s (length %d)", t, n)
	}
	if n > t.MaxSize() || n > MaxFrameSize {
		return t, n, protocolError(ErrFrameTooLarge, "%s frame declares %d bytes, max %d", t, n, t.MaxSize())
	}
	return t, n, nil
}

// ReadFrameHeader reads one frame header from r and checks it like ReadFrame does (known type,
// length within the type's maximum), without reading the payload: for callers that stream a
// data frame's payload instead of parsing it. io.EOF before the first byte is returned as is.
// Unlike ReadFrame it does not consume an unknown frame's payload: on ErrUnknownFrameType the
// returned length (at most MaxFrameSize) is what the caller must skip to stay in step.
func ReadFrameHeader(r io.Reader) (FrameType, int, error) {
	var hdr [FrameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return 0, 0, io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, truncatedRead("frame header")
		}
		return 0, 0, fmt.Errorf("api: reading frame header: %w", err)
	}
	return checkHeader(hdr[:])
}

// ReadFrame reads exactly one frame from r: io.ReadFull of the 4-byte header,
// then, once the type and length are checked, io.ReadFull of the payload. It
// never reads past the frame (the body bytes that follow on the stream stay
// in r), so r should not be buffered by the caller unless the caller keeps
// using the same buffer.
//
// A frame of an unknown type is read in full (up to MaxFrameSize) and
// reported as ErrUnknownFrameType, so a caller may skip it and read on; a
// longer one is ErrFrameTooLarge, as in ParseFrame and ReadFrameHeader, is not
// consumed, and the stream is then out of step.
//
// io.EOF before the first header byte is returned as is (clean end of
// stream). EOF inside the frame is an *Error wrapping ErrTruncated and
// io.ErrUnexpectedEOF. Other read errors are returned wrapped with %w, so
// CodeOf sees deadlines. Parse failures are *Error with CodeProtocol.
func ReadFrame(r io.Reader) (Message, error) {
	// The header goes into a small allocation of its own (it escapes: r is an interface) and the
	// payload into one made once its length is known, exactly that long. So a reader waiting on
	// an idle stream (kasd's control-stream reader, one per agent connection) holds 8 bytes
	// while it waits, and a message, whose strings share the payload's bytes, keeps no slack.
	hb := make([]byte, FrameHeaderSize)
	if _, err := io.ReadFull(r, hb); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, truncatedRead("frame header")
		}
		return nil, fmt.Errorf("api: reading frame header: %w", err)
	}
	t, n, err := checkHeader(hb)
	if err != nil {
		if errors.Is(err, ErrUnknownFrameType) { // at most MaxFrameSize: checkHeader
			// Consume the payload so that the stream stays in step: a caller may skip
			// frame types it does not know (a newer peer's connection-level messages).
			if _, derr := io.CopyN(io.Discard, r, int64(n)); derr != nil {
				return nil, truncatedRead(t.String() + " frame payload")
			}
		}
		return nil, err
	}
	var payload string
	if n > 0 {
		buf := make([]byte, n)
		if _, err := io.ReadFull(r, buf); err != nil {
			if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, truncatedRead(t.String() + " frame payload")
			}
			return nil, fmt.Errorf("api: reading %s frame payload: %w", t, err)
		}
		// buf is this call's own and never written again: the payload string shares its
		// bytes instead of copying them, and every string field of the message is a
		// substring of it.
		payload = unsafe.String(&buf[0], n)
	}
	return parsePayload(t, payload)
}

func truncatedRead(what string) *Error {
	return &Error{
		Code:    CodeProtocol,
		Message: what + " cut short by end of stream",
		Err:     fmt.Errorf("%w: %w", ErrTruncated, io.ErrUnexpectedEOF),
	}
}

// ParseFrame parses one frame from the start of b and returns it with the
// number of bytes it occupies (header + declared payload). Bytes after the
// frame are not looked at. An incomplete frame is ErrTruncated, so a caller
// accumulating bytes can retry with more; oversize or unknown frames are
// reported from the header alone. On error the count is 0.
func ParseFrame(b []byte) (Message, int, error) {
	if len(b) < FrameHeaderSize {
		return nil, 0, protocolError(ErrTruncated, "frame header: have %d of %d bytes", len(b), FrameHeaderSize)
	}
	t, n, err := checkHeader(b[:FrameHeaderSize])
	if err != nil {
		return nil, 0, err
	}
	if len(b)-FrameHeaderSize < n {
		return nil, 0, protocolError(ErrTruncated, "%s frame: have %d of %d payload bytes", t, len(b)-FrameHeaderSize, n)
	}
	m, err := parsePayload(t, string(b[FrameHeaderSize:FrameHeaderSize+n]))
	if err != nil {
		return nil, 0, err
	}
	return m, FrameHeaderSize + n, nil
}

// ReadExpect reads one frame and returns it if its type is want. A TypeError
// frame (when want is not TypeError) is returned as (nil, *Error): the peer's
// typed refusal. Any other type is an *Error with CodeProtocol wrapping
// ErrUnexpectedFrame.
func ReadExpect(r io.Reader, want FrameType) (Message, error) {
	m, err := ReadFrame(r)
	if err != nil {
		return nil, err
	}
	if m.Type() == want {
		return m, nil
	}
	if e, ok := m.(*Error); ok {
		return nil, e
	}
	return nil, protocolError(ErrUnexpectedFrame, "got %s frame, want %s", m.Type(), want)
}
