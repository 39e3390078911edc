package agentd

import (
	"fmt"
	"testing"
	"time"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/quic"
)

// TestReconnectDelayAfterRefusalBeforeTLS: kasd's gate before the TLS handshake refuses with
// QUIC's CONNECTION_REFUSED, which carries no retry time. agentd then waits at least a second
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
