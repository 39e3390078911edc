package registry

import (
	"maps"
	"testing"
	"time"
)

// TestLoad: per instance, the sum of the connections its agent keys publish; an instance
// holding nothing is listed at 0, and the sums follow changes.
func TestLoad(t *testing.T) {
	e := startEtcd(t)
	a := newTestRegistry(t, e, "a", 2*time.Second)
	b := newTestRegistry(t, e, "b", 2*time.Second)
	c := newTestRegistry(t, e, "c", 2*time.Second)
	a.SetAgentConnections("x", 2)
	a.SetAgentConnections("y", 1)
	b.SetAgentConnections("x", 1)
	want := map[string]int{"a": 3, "b": 1, "c": 0}
	waitView(t, c.Registry, convergeTimeout, "load", func() bool { return maps.Equal(c.Load().Connections, want) })
	l := c.Load()
	if l.Total != 4 || l.Mean() != 4.0/3 {
		t.Fatalf("total %d, mean %v", l.Total, l.Mean())
	}
	a.SetAgentConnections("x", 0)
	c.SetAgentConnections("z", 2)
	want = map[string]int{"a": 1, "b": 1, "c": 2}
	waitView(t, b.Registry, convergeTimeout, "load after changes", func() bool { return maps.Equal(b.Load().Connections, want) })
	if (Load{}).Mean() != 0 {
		t.Fatal("mean of nothing")
	}
}
