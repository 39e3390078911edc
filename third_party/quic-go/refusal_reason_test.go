package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/internal/testdata"

	"github.com/stretchr/testify/require"
)

// qkas patch: a ConnContext that refuses a connection with a *TransportError of code
// ConnectionRefused has its ErrorMessage sent as the reason phrase of the stateless
// CONNECTION_CLOSE, so that the client learns why (and, for qkas, when to come back); an overlong
// reason is cut to maxRefusalReason bytes. Upstream sends CONNECTION_REFUSED with an empty
// reason whatever ConnContext returned.
func TestConnContextRefusalReason(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		reason string
	}{
		{"reason", &TransportError{ErrorCode: ConnectionRefused, ErrorMessage: "overloaded: come back (retry_after_ms=1500)"}, "overloaded: come back (retry_after_ms=1500)"},
		{"cut", &TransportError{ErrorCode: ConnectionRefused, ErrorMessage: strings.Repeat("x", 1000)}, strings.Repeat("x", maxRefusalReason)},
		{"plain error", errors.New("refused"), ""},
		{"other code", &TransportError{ErrorCode: InternalError, ErrorMessage: "not sent"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serverTr := &Transport{
				Conn: newUDPConnLocalhost(t),
				ConnContext: func(context.Context, *ClientInfo) (context.Context, error) {
					return nil, tc.err
				},
			}
			defer serverTr.Close()
			serverTLS := testdata.GetTLSConfig()
			serverTLS.NextProtos = []string{"refusal"}
			ln, err := serverTr.Listen(serverTLS, &Config{})
			require.NoError(t, err)
			defer ln.Close()

			clientTr := &Transport{Conn: newUDPConnLocalhost(t)}
			defer clientTr.Close()
			ctx, cancel := context.WithTimeout(context.Background(), scaleDuration(2*time.Second))
			defer cancel()
			_, err = clientTr.Dial(ctx, ln.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"refusal"}}, &Config{})
			var te *TransportError
			require.ErrorAs(t, err, &te)
			require.True(t, te.Remote)
			require.Equal(t, ConnectionRefused, te.ErrorCode)
			require.Equal(t, tc.reason, te.ErrorMessage)
		})
	}
}
