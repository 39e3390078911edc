package kasd

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	quicgo "github.com/quic-go/quic-go"
)

// A splice that fails because the agent's connection ended (whoever closed it) may answer the
// origin "refused" when the agent acknowledged nothing of the request; a stream of its own that
// failed may not.
func TestConnectionError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&quicgo.ApplicationError{ErrorMessage: "replaced by a newer process"}, true},
		{fmt.Errorf("reading: %w", &quicgo.ApplicationError{Remote: true}), true},
		{&quicgo.IdleTimeoutError{}, true},
		{&quicgo.StatelessResetError{}, true},
		{&quicgo.TransportError{ErrorCode: quicgo.ConnectionRefused}, true},
		{&quicgo.HandshakeTimeoutError{}, true},
		{&quicgo.StreamError{ErrorCode: 1}, false},
		{&quicgo.StreamError{ErrorCode: 1, Remote: true}, false},
		{io.ErrUnexpectedEOF, false},
		{errors.New("write deadline exceeded"), false},
	} {
		if got := connectionError(c.err); got != c.want {
			t.Errorf("connectionError(%T %v) = %v, want %v", c.err, c.err, got, c.want)
		}
	}
}

// RebalanceTolerance: 0 takes the default 0.1, a negative value (kasd's --rebalance-tolerance 0)
// is kept and means no margin, NaN is refused.
func TestRebalanceToleranceDefaults(t *testing.T) {
	if got := (&FleetConfig{}).withDefaults().RebalanceTolerance; got != 0.1 {
		t.Errorf("default tolerance %v, want 0.1", got)
	}
	if got := (&FleetConfig{RebalanceTolerance: -1}).withDefaults().RebalanceTolerance; got >= 0 {
		t.Errorf("tolerance -1 became %v, want it kept (no margin)", got)
	}
	if err := (&FleetConfig{RebalanceTolerance: math.NaN()}).withDefaults().validate(""); err == nil || !strings.Contains(err.Error(), "rebalance tolerance") {
		t.Errorf("NaN tolerance: %v", err)
	}
}
