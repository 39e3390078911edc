package agentd

// agentID is the id kasd knows this agent by (from the Welcome of a connection), for spans;
// only called with tracing on.
func (a *Agent) agentID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.slots {
		return c.welcome.AgentID
	}
	return ""
}
