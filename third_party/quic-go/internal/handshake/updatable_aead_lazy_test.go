package handshake

import (
	"crypto/rand"
	"testing"

	"github.com/quic-go/quic-go/internal/monotime"
	"github.com/quic-go/quic-go/internal/protocol"
	"github.com/quic-go/quic-go/internal/utils"

	"github.com/stretchr/testify/require"
)

// qkas patch: installing a write key makes one AEAD (the current phase's), not two; the
// receive side still makes the next phase's ahead (RFC 9001, section 9.5), so a read key
// costs more. Upstream makes two for each, and the allocations are equal.
func TestUpdatableAEADSendKeyMadeAtUpdate(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	cs := cipherSuites[0] // TLS_AES_128_GCM_SHA256
	newAEAD := func() *updatableAEAD {
		return newUpdatableAEAD(utils.NewRTTStats(), nil, utils.DefaultLogger, protocol.Version1)
	}
	writeAllocs := testing.AllocsPerRun(50, func() { newAEAD().SetWriteKey(cs, secret) })
	readAllocs := testing.AllocsPerRun(50, func() { newAEAD().SetReadKey(cs, secret) })
	require.Less(t, writeAllocs, readAllocs)

	// Key updates still interoperate in both directions, several phases deep.
	client, server, _ := setupEndpoints(t, utils.NewRTTStats())
	now := monotime.Now()
	pn := protocol.PacketNumber(1)
	for range 3 {
		server.rollKeys()
		client.rollKeys()
		for _, dir := range []struct{ from, to *updatableAEAD }{{server, client}, {client, server}} {
			sealed := dir.from.Seal(nil, []byte(msg), pn, []byte(ad))
			opened, err := dir.to.Open(nil, sealed, now, pn, dir.from.KeyPhase(), []byte(ad))
			require.NoError(t, err)
			require.Equal(t, msg, string(opened))
			pn++
		}
	}
}
