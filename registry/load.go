package registry

// Load is what the view says about how agent connections are spread over the fleet, for
// placement (kasd's rebalancer): per live instance, the agent connections it publishes.
type Load struct {
	// Connections maps every instance in the view (a live lease; instances holding nothing
	// included, at 0) to the agent connections it publishes.
	Connections map[string]int
	// Total is the sum of Connections.
	Total int
}

// Mean is the fleet's average connections per instance (0 with no instance).
func (l Load) Mean() float64 {
	if len(l.Connections) == 0 {
		return 0
	}
	return float64(l.Total) / float64(len(l.Connections))
}

// Load sums, per instance in the view, the connections of the agents it holds. Agent keys of
// an instance whose instances/ key is gone (a lease that just expired, a key not yet seen)
// are left out: that instance is not a place to move connections to. It reads the in-memory
// view only, in one pass over the agents.
func (r *Registry) Load() Load {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	l := Load{Connections: make(map[string]int, len(r.view.instances))}
	for id := range r.view.instances {
		l.Connections[id] = 0
	}
	for _, holders := range r.view.agents {
		for _, h := range holders {
			id := h.instance
			if _, live := l.Connections[id]; live {
				l.Connections[id] += h.conns
				l.Total += h.conns
			}
		}
	}
	return l
}
