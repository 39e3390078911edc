package utils

import "sync/atomic"

// ConnectionStats stores stats for the connection. See the public
// ConnectionStats struct in connection.go for more information
type ConnectionStats struct {
	CongestionWindow atomic.Uint64

	BytesSent       atomic.Uint64
	PacketsSent     atomic.Uint64
	BytesReceived   atomic.Uint64
	PacketsReceived atomic.Uint64
	BytesLost       atomic.Uint64
	PacketsLost     atomic.Uint64

	// qkas patch: one more than the largest application-data packet number sent, and than
	// the largest one acknowledged by the peer (0: none).
	LargestSentAppData  atomic.Uint64
	LargestAckedAppData atomic.Uint64
}
