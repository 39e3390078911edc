package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

const (
	// PeerExporterLabel and PeerExporterLength are the arguments of
	// tls.ConnectionState.ExportKeyingMaterial that give the exporter
	// PeerProof binds to: ExportKeyingMaterial(PeerExporterLabel, nil,
	// PeerExporterLength).
	PeerExporterLabel  = "qkas peer auth"
	PeerExporterLength = 32

	// v2 binds the fleet id: a proof made for one fleet never verifies in
	// another, even with the same secret.
	peerProofContext  = "qkas-peer-v2\x00"
	fleetIDContext    = "qkas-fleet-id-v1\x00"
	fleetCheckContext = "qkas-fleet-check-v1\x00"
)

// PeerProof proves to another kasd replica that the sender knows the fleet
// secret, bound to one fleet and one TLS session: HMAC-SHA256(secret,
// "qkas-peer-v2\x00" + fleetID + "\x00" + instanceID + "\x00" + exporter),
// where exporter is that session's exported keying material (see
// PeerExporterLabel). Both ends of the session compute the same exporter, and
// a man in the middle, who holds two sessions, gets two different ones, so a
// proof replayed or relayed onto another session does not verify.
func PeerProof(secret []byte, fleetID, instanceID string, exporter []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(peerProofContext))
	m.Write([]byte(fleetID))
	m.Write([]byte{0})
	m.Write([]byte(instanceID))
	m.Write([]byte{0})
	m.Write(exporter)
	return m.Sum(nil)
}

// VerifyPeerProof reports, in constant time, whether proof is
// PeerProof(secret, fleetID, instanceID, exporter). It is false for an empty
// secret, fleet id or exporter, and for a fleet or instance id containing NUL
// (which would make the MAC's input ambiguous).
func VerifyPeerProof(secret []byte, fleetID, instanceID string, exporter, proof []byte) bool {
	if len(secret) == 0 || len(exporter) == 0 || fleetID == "" ||
		strings.IndexByte(fleetID, 0) >= 0 || strings.IndexByte(instanceID, 0) >= 0 {
		return false
	}
	return hmac.Equal(PeerProof(secret, fleetID, instanceID, exporter), proof)
}

// DeriveFleetID is the fleet id of a fleet whose operator chose none: "f-"
// and 16 hex digits of HMAC-SHA256(secret, "qkas-fleet-id-v1\x00"). Replicas
// given the same peer secret are one fleet; a kasd with another secret (one
// generated in its own data directory, say) is another fleet, with its own
// keys in a shared etcd, instead of a member that every peer refuses. The
// value reveals nothing usable about a random secret of 32 bytes or more.
func DeriveFleetID(secret []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(fleetIDContext))
	return "f-" + hex.EncodeToString(m.Sum(nil)[:8])
}

// FleetSecretCheck is what each kasd publishes next to its instance so that a
// kasd joining fleetID can tell, before serving anything, whether it was given
// the fleet's secret: 32 hex digits of HMAC-SHA256(secret,
// "qkas-fleet-check-v1\x00" + fleetID). Two checks are equal exactly when the
// secrets are (up to a 2^-128 collision).
func FleetSecretCheck(secret []byte, fleetID string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(fleetCheckContext))
	m.Write([]byte(fleetID))
	return hex.EncodeToString(m.Sum(nil)[:16])
}
