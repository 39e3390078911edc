package api

import (
	"strings"
	"testing"
	"time"
)

func TestCloseReason(t *testing.T) {
	for _, tc := range []struct {
		e    *Error
		want string
	}{
		{&Error{Code: CodeOverloaded, Message: "busy", RetryAfter: 1500 * time.Millisecond}, "overloaded: busy (retry_after_ms=1500)"},
		{&Error{Code: CodeOverloaded, Message: "busy", RetryAfter: time.Microsecond}, "overloaded: busy (retry_after_ms=1)"},
		{&Error{Code: CodeUnauthenticated, Message: "bad token"}, "unauthenticated: bad token"},
	} {
		got := CloseReason(tc.e)
		if got != tc.want {
			t.Errorf("CloseReason(%v) = %q, want %q", tc.e, got, tc.want)
		}
		back, ok := ParseCloseReason(got)
		if !ok || back.Code != tc.e.Code || back.Message != tc.e.Message || back.RetryAfter != millisToDuration(durationToMillis(tc.e.RetryAfter)) {
			t.Errorf("ParseCloseReason(%q) = %+v, %v", got, back, ok)
		}
	}
	for _, s := range []string{"", "handshake failed", "nocode: x", "overloaded"} {
		if e, ok := ParseCloseReason(s); ok {
			t.Errorf("ParseCloseReason(%q) = %+v", s, e)
		}
	}
	// A malformed suffix stays part of the message.
	if e, ok := ParseCloseReason("overloaded: x (retry_after_ms=+5)"); !ok || e.RetryAfter != 0 || e.Message != "x (retry_after_ms=+5)" {
		t.Errorf("malformed suffix: %+v, %v", e, ok)
	}
}

func FuzzParseCloseReason(f *testing.F) {
	f.Add("overloaded: busy (retry_after_ms=1500)")
	f.Add("shutting_down: kasd closed")
	f.Add("code_77: x (retry_after_ms=99999999999999999999)")
	f.Fuzz(func(t *testing.T, s string) {
		e, ok := ParseCloseReason(s)
		if !ok {
			return
		}
		if e.RetryAfter < 0 || !strings.HasPrefix(s, e.Code.String()+": ") && !strings.HasPrefix(s, "code_") {
			t.Fatalf("ParseCloseReason(%q) = %+v", s, e)
		}
		// Written again and read back, it is the same refusal.
		again, ok := ParseCloseReason(CloseReason(e))
		if !ok || again.Code != e.Code || again.RetryAfter != e.RetryAfter {
			t.Fatalf("round trip of %q: %+v -> %+v", s, e, again)
		}
	})
}
