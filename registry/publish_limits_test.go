package registry

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// An agent whose replicas would make its key's value larger than maxAgentValueSize (names and
// process ids come from the agents' Hellos, one replica per connection) is published with the
// replicas that fit, and counted; the other agent and the instance key, in the same
// transaction, are published. Unbounded, the value (1.8 MB here) made etcd refuse the whole
// transaction ("request is too large"), which was retried forever: this instance and its other
// agents vanished from the fleet.
func TestOversizeAgentValueIsTruncated(t *testing.T) {
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", 2*time.Second)
	r2 := newTestRegistry(t, e, "kas-2", 2*time.Second)
	var mu sync.Mutex
	var seen []Replica // the replicas of a-big that kas-2 learned
	r2.SetReplicaHook(func(agent, _ string, rs []Replica) {
		mu.Lock()
		defer mu.Unlock()
		if agent == "a-big" {
			seen = rs
		}
	})
	var reps []Replica
	for i := range 30 {
		reps = append(reps, Replica{Name: fmt.Sprintf("pod-%02d", i), Process: strings.Repeat("p", 60<<10), Since: 1})
	}
	r1.SetAgent("a-big", Holding{Connections: 30, Replicas: reps})
	r1.SetAgentConnections("b-small", 1)
	waitView(t, r2.Registry, convergeTimeout, "kas-1's instance and agents", func() bool {
		big := r2.Holders("a-big")
		return len(r2.Instances()) == 2 && len(r2.Holders("b-small")) == 1 && len(big) == 1 && big[0].Connections == 30
	})
	mu.Lock()
	if len(seen) == 0 || len(seen) == len(reps) || !slices.Equal(seen, reps[:len(seen)]) {
		t.Errorf("kas-2 learned %d replicas of a-big, want the first ones that fit, fewer than %d", len(seen), len(reps))
	}
	mu.Unlock()
	if n := metricValue(t, r1.metrics, "kasd_registry_publish_limited_total", map[string]string{"reason": "replicas_truncated"}); n != 1 {
		t.Errorf("kasd_registry_publish_limited_total{reason=replicas_truncated} = %v, want 1", n)
	}
}

// A key that etcd, or its client before sending, refuses on its own (here agent IDs so long
// that the key alone is over etcd's 1.5 MiB request limit, or over the client's 2 MiB message
// limit) is counted and skipped, whether it is alone in its transaction or not: the rest of the
// transaction is published, and the key is not tried again at later publishes, nor retried
// as a failed publish. Before, the same transaction was retried forever.
func TestRefusedKeyDoesNotBlockOthers(t *testing.T) {
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", 2*time.Second)
	r2 := newTestRegistry(t, e, "kas-2", 2*time.Second)
	refused := map[string]string{"reason": "refused"}
	waitView(t, r2.Registry, convergeTimeout, "kas-1's instance", func() bool { return len(r2.Instances()) == 2 })

	// Alone in its transaction: nothing else is pending.
	r1.SetAgentConnections("a-alone-"+strings.Repeat("x", 1600<<10), 1)
	waitCounter(t, r1, "kasd_registry_publish_limited_total", refused, 1)

	// With others. Agents are written in ID order: both "b-" keys are handled before "c-small"
	// is published.
	r1.SetAgentConnections("b-server-"+strings.Repeat("x", 1600<<10), 1)
	r1.SetAgentConnections("b-client-"+strings.Repeat("x", 2100<<10), 1)
	r1.SetAgentConnections("c-small", 1)
	waitView(t, r2.Registry, convergeTimeout, "kas-1's other agent", func() bool { return len(r2.Holders("c-small")) == 1 })
	if n := metricValue(t, r1.metrics, "kasd_registry_publish_limited_total", refused); n != 3 {
		t.Errorf("kasd_registry_publish_limited_total{reason=refused} = %v, want 3", n)
	}

	r1.SetAgentConnections("d-small", 1)
	waitView(t, r2.Registry, convergeTimeout, "a later agent", func() bool { return len(r2.Holders("d-small")) == 1 })
	if n := metricValue(t, r1.metrics, "kasd_registry_publish_limited_total", refused); n != 3 {
		t.Errorf("after a later publish, kasd_registry_publish_limited_total{reason=refused} = %v, want still 3", n)
	}
	if n := metricValue(t, r1.metrics, "kasd_registry_publish_errors_total", nil); n != 0 {
		t.Errorf("kasd_registry_publish_errors_total = %v, want 0: a refused key is skipped, not retried", n)
	}
}

// waitCounter polls r's metric (a refused write changes no view: nothing to be woken by) until
// it reaches want.
func waitCounter(t *testing.T, r testRegistry, name string, labels map[string]string, want float64) {
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for metricValue(t, r.metrics, name, labels) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s %v = %v after %v, want %v", name, labels, metricValue(t, r.metrics, name, labels), convergeTimeout, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
