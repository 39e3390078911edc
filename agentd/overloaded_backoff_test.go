package agentd

import (
	"fmt"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/api"
	"github.com/qkas/qkas/quic"
)

// TestReconnectDelayAfterRefusalBeforeTLS: a QUIC CONNECTION_REFUSED without a retry time in its
// reason (quic-go's own refusals, a kasd without the quic-go patch). agentd then waits at least a second
// (kasd counts one address's refused Initials within a second as one attempt) and at most twice
// the window, which doubles per attempt up to overloadedBackoffMax — never its ordinary
// 100 ms backoff, which would only be refused again.
func TestReconnectDelayAfterRefusalBeforeTLS(t *testing.T) {
	trErr := &quicgo.TransportError{Remote: true, ErrorCode: quicgo.ConnectionRefused}
	err := refusalFromClose(fmt.Errorf("quic: dial x: %w", trErr))
	b := quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	zero, one := func() float64 { return 0 }, func() float64 { return 0.999999 }
	for attempt, want := range [][2]time.Duration{
		{time.Second, 2 * time.Second},
		{2 * time.Second, 4 * time.Second},
		{4 * time.Second, 8 * time.Second},
		{8 * time.Second, 16 * time.Second},
		{16 * time.Second, 32 * time.Second},
		{16 * time.Second, 32 * time.Second},
	} {
		lo, hi := reconnectDelay(b, attempt, 0, err, zero), reconnectDelay(b, attempt, 0, err, one)
		if lo != want[0] || hi < want[1]*99/100 || hi >= want[1] {
			t.Errorf("attempt %d: delays %v..%v, want %v..%v", attempt, lo, hi, want[0], want[1])
		}
	}
	if d := reconnectDelay(b, 1000, 0, err, one); d >= overloadedBackoffMax {
		t.Errorf("attempt 1000: %v, want below %v", d, overloadedBackoffMax)
	}
}

// TestReconnectDelayHonoursGateRetryHint: kasd's gate before TLS says when to come back in the
// CONNECTION_REFUSED's reason phrase (api.CloseReason); agentd waits that long plus full jitter
// over as much again, whatever the attempt, instead of its own doubling window.
func TestReconnectDelayHonoursGateRetryHint(t *testing.T) {
	trErr := &quicgo.TransportError{Remote: true, ErrorCode: quicgo.ConnectionRefused,
		ErrorMessage: "overloaded: kasd is at its maximum of TLS handshakes (retry_after_ms=3500)"}
	err := refusalFromClose(fmt.Errorf("quic: dial x: %w", trErr))
	if api.CodeOf(err) != api.CodeOverloaded || api.RetryAfterOf(err) != 3500*time.Millisecond {
		t.Fatalf("refusal read as %v (retry after %v), want overloaded with 3.5s", err, api.RetryAfterOf(err))
	}
	b := quic.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	zero, one := func() float64 { return 0 }, func() float64 { return 0.999999 }
	for _, attempt := range []int{0, 1, 5} {
		lo, hi := reconnectDelay(b, attempt, 0, err, zero), reconnectDelay(b, attempt, 0, err, one)
		if lo != 3500*time.Millisecond || hi < 6990*time.Millisecond || hi >= 7*time.Second {
			t.Errorf("attempt %d: delays %v..%v, want 3.5s..7s", attempt, lo, hi)
		}
	}
	// The hint is unauthenticated (an Initial packet): the wait is capped at kasd's longest.
	long := refusalFromClose(&quicgo.TransportError{Remote: true, ErrorCode: quicgo.ConnectionRefused,
		ErrorMessage: "overloaded: busy (retry_after_ms=3600000)"})
	if lo, hi := reconnectDelay(b, 0, 0, long, zero), reconnectDelay(b, 0, 0, long, one); lo != maxRetryHint || hi >= 2*maxRetryHint {
		t.Errorf("an hour's hint: delays %v..%v, want %v..%v", lo, hi, maxRetryHint, 2*maxRetryHint)
	}
	// A reason that is not kasd's format (another server, a kasd without the quic-go patch
	// sends none) leaves agentd's own backoff.
	for _, msg := range []string{"", "busy", "unauthenticated: no (retry_after_ms=10)"} {
		te := &quicgo.TransportError{Remote: true, ErrorCode: quicgo.ConnectionRefused, ErrorMessage: msg}
		err := refusalFromClose(te)
		if api.CodeOf(err) != api.CodeOverloaded || api.RetryAfterOf(err) != 0 {
			t.Errorf("reason %q read as %v (retry after %v), want overloaded without a hint", msg, err, api.RetryAfterOf(err))
		}
	}
}
