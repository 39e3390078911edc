package registry

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// The replicas an instance publishes with an agent reach the other instances' replica hook
// (never the publisher's own), once per change, and the connection count is unchanged by them.
func TestReplicasReachOtherInstances(t *testing.T) {
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", 2*time.Second)
	r2 := newTestRegistry(t, e, "kas-2", 2*time.Second)
	type call struct {
		agent, instance string
		replicas        []Replica
	}
	var mu sync.Mutex
	var calls1, calls2 []call
	r1.SetReplicaHook(func(a, i string, rs []Replica) {
		mu.Lock()
		defer mu.Unlock()
		calls1 = append(calls1, call{a, i, rs})
	})
	r2.SetReplicaHook(func(a, i string, rs []Replica) {
		mu.Lock()
		defer mu.Unlock()
		calls2 = append(calls2, call{a, i, rs})
	})
	reps := []Replica{{Name: "pod-1", Process: "p1", Since: 1000}, {Name: "pod-2", Process: "p2", Since: 2000}}
	r1.SetAgent("agent", Holding{Connections: 2, Replicas: reps})
	waitView(t, r2.Registry, convergeTimeout, "kas-1's key", func() bool {
		hs := r2.Holders("agent")
		return len(hs) == 1 && hs[0].Connections == 2
	})
	// The same state again publishes nothing; a connection count change without a replica
	// change calls no hook.
	r1.SetAgent("agent", Holding{Connections: 2, Replicas: slices.Clone(reps)})
	r1.SetAgent("agent", Holding{Connections: 3, Replicas: slices.Clone(reps)})
	waitView(t, r2.Registry, convergeTimeout, "3 connections", func() bool {
		hs := r2.Holders("agent")
		return len(hs) == 1 && hs[0].Connections == 3
	})
	newer := []Replica{{Name: "pod-1", Process: "p1b", Since: 3000}}
	r1.SetAgent("agent", Holding{Connections: 1, Replicas: newer})
	waitView(t, r2.Registry, convergeTimeout, "1 connection", func() bool {
		hs := r2.Holders("agent")
		return len(hs) == 1 && hs[0].Connections == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if len(calls1) != 0 {
		t.Errorf("the publisher's own hook was called: %+v", calls1)
	}
	if len(calls2) != 2 || !slices.Equal(calls2[0].replicas, reps) || !slices.Equal(calls2[1].replicas, newer) ||
		calls2[0].agent != "agent" || calls2[0].instance != "kas-1" {
		t.Errorf("kas-2's hook calls = %+v, want the two replica sets from kas-1", calls2)
	}
}
