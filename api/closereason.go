package api

import (
	"strconv"
	"strings"
	"time"
)

// A connection that kasd refuses before (or instead of) an error frame on the control stream —
// at admission, before the agent's control stream has arrived — carries the refusal in the
// reason phrase of its CONNECTION_CLOSE, which QUIC delivers reliably:
//
//	<code name>: <message>[ (retry_after_ms=<N>)]
//
// The suffix is present when the refusal has a RetryAfter hint (N ≥ 1, milliseconds rounded
// up). See SPEC.md, "Connection refusals".

const retryAfterSuffix = " (retry_after_ms="

// CloseReason formats e as the reason phrase of a refused connection's CONNECTION_CLOSE.
func CloseReason(e *Error) string {
	s := e.Code.String() + ": " + messageOf(e)
	if e.RetryAfter > 0 {
		s += retryAfterSuffix + strconv.FormatUint(durationToMillis(e.RetryAfter), 10) + ")"
	}
	return s
}

// ParseCloseReason reads a reason phrase written by CloseReason back into an *Error (without
// a cause). ok is false when s does not start with a code name and ": ".
func ParseCloseReason(s string) (e *Error, ok bool) {
	name, msg, found := strings.Cut(s, ": ")
	if !found {
		return nil, false
	}
	code, ok := ParseCode(name)
	if !ok {
		return nil, false
	}
	e = &Error{Code: code, Message: msg}
	if i := strings.LastIndex(msg, retryAfterSuffix); i >= 0 && strings.HasSuffix(msg, ")") {
		digits := msg[i+len(retryAfterSuffix) : len(msg)-1]
		if ms, err := strconv.ParseUint(digits, 10, 64); err == nil && ms > 0 && digits[0] != '+' {
			e.Message = msg[:i]
			e.RetryAfter = millisToDuration(min(ms, maxRetryMillis))
		}
	}
	return e, true
}

// RetryAfterOf returns the RetryAfter hint of the first *Error in err's chain (0 if none).
func RetryAfterOf(err error) time.Duration { return retryAfterOf(err) }
