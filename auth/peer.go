package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"strings"
)

const (
	// PeerExporterLabel and PeerExporterLength are the arguments of
	// tls.ConnectionState.ExportKeyingMaterial that give the exporter
	// PeerProof binds to: ExportKeyingMaterial(PeerExporterLabel, nil,
	// PeerExporterLength).
	PeerExporterLabel  = "qkas peer auth"
	PeerExporterLength = 32

	peerProofContext = "qkas-peer-v1\x00"
)

// PeerProof proves to another kasd replica that the sender knows the fleet
// secret, bound to one TLS session: HMAC-SHA256(secret, "qkas-peer-v1\x00" +
// instanceID + "\x00" + exporter), where exporter is that session's exported
// keying material (see PeerExporterLabel). Both ends of the session compute
// the same exporter, and a man in the middle, who holds two sessions, gets
// two different ones, so a proof replayed or relayed onto another session
// does not verify.
func PeerProof(secret []byte, instanceID string, exporter []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(peerProofContext))
	m.Write([]byte(instanceID))
	m.Write([]byte{0})
	m.Write(exporter)
	return m.Sum(nil)
}

// VerifyPeerProof reports, in constant time, whether proof is
// PeerProof(secret, instanceID, exporter). It is false for an empty secret
// or exporter, and for an instanceID containing NUL (which would make the
// MAC's input ambiguous).
func VerifyPeerProof(secret []byte, instanceID string, exporter, proof []byte) bool {
	if len(secret) == 0 || len(exporter) == 0 || strings.IndexByte(instanceID, 0) >= 0 {
		return false
	}
	return hmac.Equal(PeerProof(secret, instanceID, exporter), proof)
}
