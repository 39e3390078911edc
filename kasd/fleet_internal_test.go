package kasd

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"

	quicgo "github.com/quic-go/quic-go"

	"github.com/qkas/qkas/registry"
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

// heldAnew: a peer that refused a request is asked again when its holding of the agent shows
// something new since the refusal, and not when it only lost connections.
func TestHeldAnew(t *testing.T) {
	p1 := registry.Replica{Name: "pod", Process: "p1", Since: 100}
	p1later := registry.Replica{Name: "pod", Process: "p1", Since: 200}
	p2 := registry.Replica{Name: "pod", Process: "p2", Since: 300}
	other := registry.Replica{Name: "pod-b", Process: "q1", Since: 100}
	h := func(conns int, rs ...registry.Replica) registry.Holder {
		return registry.Holder{Connections: conns, Replicas: rs}
	}
	for _, tc := range []struct {
		name     string
		was, now registry.Holder
		want     bool
	}{
		{"same", h(2, p1, other), h(2, p1, other), false},
		{"fewer connections, same processes", h(2, p1, other), h(1, p1), false},
		{"a restarted process", h(1, p1), h(1, p2), true},
		{"the same process connected anew", h(1, p1), h(1, p1later), true},
		{"counts only, more", h(1), h(2), true},
		{"counts only, fewer", h(2), h(1), false},
		{"counts only, one closed as one opened", h(2), h(2), false},
		{"processes cut short, more connections", h(600, p1), h(601, p1), true},
		{"no processes then, one now", h(0), h(1, p2), true},
	} {
		if got := heldAnew(tc.was, tc.now); got != tc.want {
			t.Errorf("%s: heldAnew(%+v, %+v) = %v, want %v", tc.name, tc.was, tc.now, got, tc.want)
		}
	}
}
