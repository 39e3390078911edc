package agentd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// TestReconnectDelayHonoursRetryAfter: a refusal with a retry hint is never retried sooner than
// the hint, and the retries of many agents spread over [hint, 2·hint) (full jitter), whatever
// the attempt count says.
func TestReconnectDelayHonoursRetryAfter(t *testing.T) {
	const hint = 3 * time.Second
	// As agentd reads it: the close reason of a refused connection, wrapped by the dialer.
	closeErr := &quicgo.ApplicationError{Remote: true, ErrorCode: quicgo.ApplicationErrorCode(quic.ConnCodeRefused),
		ErrorMessage: api.CloseReason(&api.Error{Code: api.CodeOverloaded, Message: "busy", RetryAfter: hint})}
	err := refusalFromClose(fmt.Errorf("quic: dial x: %w", closeErr))
	if api.CodeOf(err) != api.CodeOverloaded || api.RetryAfterOf(err) != hint {
		t.Fatalf("refusal read as %v (retry after %v)", err, api.RetryAfterOf(err))
	}
	rnd := rand.New(rand.NewPCG(1, 2)).Float64
	var buckets [4]int
	for i := range 4000 {
		d := reconnectDelay(quic.Backoff{}, i%8, 0, err, rnd)
		if d < hint || d >= 2*hint {
			t.Fatalf("delay %v outside [%v, %v)", d, hint, 2*hint)
		}
		buckets[(d-hint)*4/hint]++
	}
	for i, n := range buckets {
		if n < 800 || n > 1200 {
			t.Fatalf("delays not spread evenly over the window: quarter %d has %d of 4000 (%v)", i, n, buckets)
		}
	}
	// The extremes of the random source.
	if d := reconnectDelay(quic.Backoff{}, 0, 0, err, func() float64 { return 0 }); d != hint {
		t.Fatalf("rnd 0: %v", d)
	}
}

// TestReconnectDelayWithoutHint: full jitter below the exponential ceiling; a refused token
// waits long and longer; a QUIC-level CONNECTION_REFUSED counts as overloaded.
func TestReconnectDelayWithoutHint(t *testing.T) {
	b := quic.Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second}
	one := func() float64 { return 0.999999 }
	zero := func() float64 { return 0 }
	for attempt, ceiling := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if d := reconnectDelay(b, attempt, 0, errors.New("timeout"), one); d >= ceiling || d < ceiling*99/100 {
			t.Errorf("attempt %d: max delay %v, want just under %v", attempt, d, ceiling)
		}
		if d := reconnectDelay(b, attempt, 0, errors.New("timeout"), zero); d != 0 {
			t.Errorf("attempt %d: min delay %v, want 0 (full jitter)", attempt, d)
		}
	}
	if d := reconnectDelay(b, 50, 0, nil, one); d > b.Max {
		t.Errorf("delay %v over the maximum %v", d, b.Max)
	}
	refused := &api.Error{Code: api.CodeUnauthenticated, Message: "agent token not recognized"}
	for n, want := range map[int][2]time.Duration{
		1:  {15 * time.Second, 30 * time.Second},
		2:  {30 * time.Second, 60 * time.Second},
		10: {refusedTokenBackoff / 2, refusedTokenBackoff},
	} {
		lo, hi := reconnectDelay(b, n, n, refused, zero), reconnectDelay(b, n, n, refused, one)
		if lo != want[0] || hi < want[1]*99/100 || hi >= want[1] {
			t.Errorf("refused token %d times: delays %v..%v, want %v..%v", n, lo, hi, want[0], want[1])
		}
	}
	trErr := &quicgo.TransportError{Remote: true, ErrorCode: quicgo.ConnectionRefused}
	if err := refusalFromClose(fmt.Errorf("dial: %w", trErr)); api.CodeOf(err) != api.CodeOverloaded {
		t.Errorf("CONNECTION_REFUSED read as %v", err)
	}
}

// TestReconnectDelayCapsRetryHint: whatever retry hint a refusal carries (kasd's Error frame or
// close reason, up to api's cap of MaxInt64 ns), the wait stays within [0, 2·maxRetryHint). A
// hint above MaxInt64/2 once overflowed hint + jitter into a negative delay (the slot redialled
// at once, in a tight loop), and one of years left the agent disconnected for good.
func TestReconnectDelayCapsRetryHint(t *testing.T) {
	const maxInt64 = time.Duration(1<<63 - 1)
	zero, one := func() float64 { return 0 }, func() float64 { return 0.999999 }
	for _, tc := range []struct {
		hint   time.Duration
		lo, hi time.Duration // the delays with rnd 0 and rnd just under 1
	}{
		{0, time.Second, 2 * time.Second}, // no hint: overloaded's own window (attempt 0)
		{3 * time.Second, 3 * time.Second, 6 * time.Second},
		{maxRetryHint, maxRetryHint, 2 * maxRetryHint},
		{maxInt64/2 + 1, maxRetryHint, 2 * maxRetryHint},
		{maxInt64, maxRetryHint, 2 * maxRetryHint},
	} {
		// As agentd reads it from an Error frame, and from a close reason.
		frame := &api.Error{Code: api.CodeOverloaded, Message: "busy", RetryAfter: tc.hint}
		closeErr := &quicgo.ApplicationError{Remote: true, ErrorCode: quicgo.ApplicationErrorCode(quic.ConnCodeRefused),
			ErrorMessage: api.CloseReason(frame)}
		for _, err := range []error{frame, refusalFromClose(fmt.Errorf("quic: dial x: %w", closeErr))} {
			lo, hi := reconnectDelay(quic.Backoff{}, 0, 0, err, zero), reconnectDelay(quic.Backoff{}, 0, 0, err, one)
			if lo != tc.lo || hi < tc.hi*99/100 || hi >= tc.hi {
				t.Errorf("hint %v (%v): delays %v..%v, want %v..%v", tc.hint, err, lo, hi, tc.lo, tc.hi)
			}
		}
	}
}
