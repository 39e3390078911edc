package kasd

import (
	"errors"
	"fmt"
	"io"
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
