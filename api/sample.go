package api

// Sampled reports whether the request with this id is among the fraction rate (0..1) that
// sampled logs keep. It is a fixed function of the id (FNV-1a, 64 bits, then a mixer), so that
// every hop of one request (entry kasd, holding kasd, agentd) decides alike and a sampled
// request's access lines are all there or all absent.
func Sampled(id string, rate float64) bool {
	switch {
	case rate >= 1:
		return true
	case rate <= 0:
		return false
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	// FNV's high bits barely depend on the last bytes (ids that differ at the end, such as
	// sequence numbers, would all decide alike): mix them (MurmurHash3's finaliser).
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return float64(h>>11)/(1<<53) < rate
}
