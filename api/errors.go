package api

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// Sentinels for frame parse failures. Parse functions never return them bare:
// they return an *Error with Code CodeProtocol (CodeUnsupportedVersion for
// ErrUnsupportedVersion) whose Err is the sentinel, so that both
// errors.Is(err, ErrFrameTooLarge) and CodeOf(err) == CodeProtocol hold.
var (
	// ErrFrameTooLarge: the header declares a payload longer than the
	// type's MaxSize (checked before anything is allocated or read).
	ErrFrameTooLarge = errors.New("api: frame too large")
	// ErrUnknownFrameType: the header's type byte is not a known FrameType.
	ErrUnknownFrameType = errors.New("api: unknown frame type")
	// ErrTruncated: the header or payload was cut short, or a field (string
	// length, list count, varint) runs past the end of the payload.
	ErrTruncated = errors.New("api: truncated frame")
	// ErrUnsupportedVersion: see CheckVersion.
	ErrUnsupportedVersion = errors.New("api: unsupported protocol version")
	// ErrUnexpectedFrame: ReadExpect got a frame of another type.
	ErrUnexpectedFrame = errors.New("api: unexpected frame")
	// ErrMalformed: a field is present but its value is invalid: a varint
	// longer than 64 bits, a code above 65535, an unknown Kind, an empty
	// required field (Request.Service for KindHTTP, Forward.AgentID).
	ErrMalformed = errors.New("api: malformed frame")
	// ErrHeadTooLarge: a head exceeds MaxHeaderFields (its size is bounded by the frame
	// header: ErrFrameTooLarge).
	ErrHeadTooLarge = errors.New("api: head too large")
)

// Error is the typed error used everywhere in qkas. It is also the TypeError
// frame (Code, Message and RetryAfter are encoded; Err is not).
type Error struct {
	Code       Code
	Message    string
	RetryAfter time.Duration // hint; encoded in milliseconds (rounded up); 0 = none
	Err        error         // optional cause; not encoded; returned by Unwrap
}

// Error returns "<code>: <message>", or "<code>: <cause>" when Message is
// empty and Err is set, or just "<code>".
func (e *Error) Error() string {
	if e == nil {
		return "<nil>"
	}
	switch {
	case e.Message != "":
		return e.Code.String() + ": " + e.Message
	case e.Err != nil:
		return e.Code.String() + ": " + e.Err.Error()
	default:
		return e.Code.String()
	}
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Code and either an
// empty Message or the same Message, so errors.Is(err, &Error{Code: c})
// matches any error of code c.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || e == nil || t == nil {
		return false
	}
	return e.Code == t.Code && (t.Message == "" || t.Message == e.Message)
}

// Errorf returns an *Error whose Message is fmt.Sprintf(format, args...).
// A %w verb sets Err to the wrapped error (to the fmt error itself when
// several %w are used, so errors.Is still sees all of them).
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	e := &Error{Code: code, Message: err.Error()}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		e.Err = u.Unwrap()
	case interface{ Unwrap() []error }:
		e.Err = err
	}
	return e
}

// CodeOf classifies err: nil -> CodeOK; an *Error in the chain -> its Code;
// context.DeadlineExceeded or os.ErrDeadlineExceeded in the chain ->
// CodeDeadlineExceeded; anything else -> CodeInternal.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e *Error
	if errors.As(err, &e) && e != nil {
		return e.Code
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return CodeDeadlineExceeded
	}
	return CodeInternal
}

// CheckVersion returns nil if v is ProtocolVersion, else an *Error with
// CodeUnsupportedVersion wrapping ErrUnsupportedVersion. Parsers accept any
// version in Hello/PeerHello/Welcome; callers decide with CheckVersion.
func CheckVersion(v uint64) error {
	if v == ProtocolVersion {
		return nil
	}
	return &Error{
		Code:    CodeUnsupportedVersion,
		Message: fmt.Sprintf("protocol version %d not supported (want %d)", v, ProtocolVersion),
		Err:     ErrUnsupportedVersion,
	}
}

// messageOf returns the human-readable message for err as sent to a peer:
// the Message of the first *Error in the chain (or its cause's text), else
// err.Error().
func messageOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e != nil {
		if e.Message != "" {
			return e.Message
		}
		if e.Err != nil {
			return e.Err.Error()
		}
		return ""
	}
	return err.Error()
}

// retryAfterOf returns the RetryAfter hint of the first *Error in the chain.
func retryAfterOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) && e != nil {
		return e.RetryAfter
	}
	return 0
}
