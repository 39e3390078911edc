package handshake

import (
	"testing"

	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/qerr"
	"github.com/quic-go/quic-go/internal/utils"
	"github.com/quic-go/quic-go/internal/wire"

	"github.com/stretchr/testify/require"
)

// qkas patch: a server lets crypto/tls go once GetSessionTicket (its last call into it) is
// done; ConnectionState still answers, and a post-handshake message is a crypto error (unexpected_message, as crypto/tls answers).
func TestServerReleasesTLSAfterHandshake(t *testing.T) {
	clientConf, serverConf := getTLSConfigs()
	client, _, clientErr, server, _, serverErr := handshakeWithTLSConf(
		t,
		clientConf, serverConf,
		utils.NewRTTStats(), utils.NewRTTStats(),
		&wire.TransportParameters{ActiveConnectionIDLimit: 2}, &wire.TransportParameters{ActiveConnectionIDLimit: 2},
		false,
	)
	require.NoError(t, clientErr)
	require.NoError(t, serverErr)

	s := server.(*cryptoSetup)
	require.Nil(t, s.conn, "the server kept its tls.QUICConn after the handshake")
	require.Nil(t, s.tlsConf)
	require.NotNil(t, client.(*cryptoSetup).conn, "a client needs crypto/tls for session tickets")

	cs := server.ConnectionState()
	require.True(t, cs.HandshakeComplete)
	require.Equal(t, client.ConnectionState().NegotiatedProtocol, cs.NegotiatedProtocol)
	require.NotZero(t, cs.CipherSuite)

	err := server.HandleMessage([]byte{typeNewSessionTicket, 0, 0, 1, 0}, protocol.Encryption1RTT)
	require.IsType(t, &qerr.TransportError{}, err)
	require.True(t, err.(*qerr.TransportError).ErrorCode.IsCryptoError())
	require.NoError(t, server.Close())
}

// qkas patch: once its events are consumed, neither side keeps them: the event queue's array
// held the data of every handshake message written (a server's flight with its certificate
// chain) for the connection's life.
func TestCryptoSetupReleasesConsumedEvents(t *testing.T) {
	clientConf, serverConf := getTLSConfigs()
	client, _, clientErr, server, _, serverErr := handshakeWithTLSConf(
		t,
		clientConf, serverConf,
		utils.NewRTTStats(), utils.NewRTTStats(),
		&wire.TransportParameters{ActiveConnectionIDLimit: 2}, &wire.TransportParameters{ActiveConnectionIDLimit: 2},
		false,
	)
	require.NoError(t, clientErr)
	require.NoError(t, serverErr)
	for name, cs := range map[string]CryptoSetup{"client": client, "server": server} {
		for ev := cs.NextEvent(); ev.Kind != EventNoEvent; ev = cs.NextEvent() {
		}
		require.Zero(t, cap(cs.(*cryptoSetup).events), "%s: the consumed events are still referenced", name)
	}
}
