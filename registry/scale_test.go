package registry

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
)

// scaleAgents is how many agents TestRegistryAtScale publishes: QKAS_REGISTRY_AGENTS, default
// 2,000 (docs/scale.md has the 50,000 figures).
func scaleAgents(t *testing.T) int {
	n := 2000
	if v := os.Getenv("QKAS_REGISTRY_AGENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			t.Fatalf("QKAS_REGISTRY_AGENTS=%q: want a positive integer", v)
		}
	}
	return n
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestRegistryAtScale is a kasd restart storm as the registry sees it, with a real (embedded)
// etcd: n agents reconnect over a couple of seconds, one SetAgent per connection as kasd makes
// them, and every one must reach another instance's view. It logs the publish rate, the CPU the
// whole process (both registries and etcd) spent, and the view's heap per agent key.
func TestRegistryAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes thousands of keys to etcd")
	}
	n := scaleAgents(t)
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", 5*time.Second)
	r2 := newTestRegistry(t, e, "kas-2", 5*time.Second)
	waitView(t, r2.Registry, convergeTimeout, "synced", func() bool { return r2.Synced() && len(r2.Instances()) == 2 })

	storm := 2 * time.Second
	start, cpu0 := time.Now(), cpuTime()
	for i := range n {
		// Each agent's first connection, then its second: two changes per agent, as a restart
		// storm makes them.
		id := fmt.Sprintf("agent-%06d", i)
		rep := []Replica{{Name: fmt.Sprintf("agentd-%06d-7f9c", i), Process: "2u8ssryacmjav", Since: time.Now().UnixMilli()}}
		r1.SetAgent(id, Holding{Connections: 1, Replicas: rep})
		r1.SetAgent(id, Holding{Connections: 2, Replicas: rep})
		if due := time.Duration(i+1) * storm / time.Duration(n); time.Since(start) < due {
			time.Sleep(due - time.Since(start))
		}
	}
	// Polled (Load walks the whole view: once per change it would be most of the cost).
	deadline := time.Now().Add(2 * time.Minute)
	for r2.Load().Connections["kas-1"] != 2*n {
		if time.Now().After(deadline) {
			t.Fatalf("kas-2 sees %d of %d connections after 2 minutes", r2.Load().Connections["kas-1"], 2*n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took, cpu := time.Since(start), cpuTime()-cpu0
	t.Logf("%d agents (%d SetAgent calls over %v) in kas-2's view after %v: %.0f keys/s, CPU %v (%.1f µs per agent, both registries and etcd)",
		n, 2*n, storm, took.Round(time.Millisecond), float64(n)/took.Seconds(), cpu.Round(time.Millisecond), float64(cpu.Microseconds())/float64(n))
}

// TestViewHeapPerKey measures the view's own heap per agent key, on a view alone (no registry
// or etcd in the process whose garbage would blur it), with values as the publisher writes
// them, applied as the watch applies them (a key string per event).
func TestViewHeapPerKey(t *testing.T) {
	n := scaleAgents(t)
	v := newView()
	r := &Registry{cfg: Config{}.WithDefaults(), self: Instance{ID: "kas-x"}, log: zerolog.Nop()}
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = fmt.Appendf(nil, `{"connections":2,"replicas":[{"name":"agentd-%06d-7f9c","process":"2u8ssryacmjav","since":1764590000000}]}`, i)
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for i := range n {
		for _, inst := range []string{"kas-1", "kas-2"} {
			v.apply(r, r.cfg.agentKey(fmt.Sprintf("agent-%06d", i), inst), vals[i], false)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if v.agentKeys != 2*n {
		t.Fatalf("view holds %d agent keys, want %d", v.agentKeys, 2*n)
	}
	perKey := (float64(m1.HeapAlloc) - float64(m0.HeapAlloc)) / float64(2*n)
	t.Logf("view: %.0f bytes of heap per agent key (%d agents on 2 instances, one replica each)", perKey, n)
	runtime.KeepAlive(v)
	runtime.KeepAlive(vals) // else freeing them during the loop offsets the view's growth
}

// TestViewKeepsNoEventMemory checks what the view keeps per agent key, which at 300,000 keys is
// most of kasd's registry memory: no part of an event's key string (a map entry's key is
// replaced by every assignment, so a substring would keep the whole key alive), replicas in a
// slice of their exact size (JSON decoding grows one to 4), and each instance's ID once.
func TestViewKeepsNoEventMemory(t *testing.T) {
	v := newView()
	r := &Registry{cfg: Config{}.WithDefaults(), self: Instance{ID: "kas-x"}, log: zerolog.Nop()}
	var keys []string // every key string passed to apply, kept alive to compare addresses
	apply := func(key string, value []byte, deleted bool) {
		keys = append(keys, key)
		v.apply(r, key, value, deleted)
	}
	within := func(s string) bool {
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		for _, k := range keys {
			b := uintptr(unsafe.Pointer(unsafe.StringData(k)))
			if p >= b && p < b+uintptr(len(k)) {
				return true
			}
		}
		return false
	}
	apply(r.cfg.instanceKey("kas-1"), []byte(`{"id":"kas-1","peer_addr":"kas-1:8443"}`), false)
	apply(r.cfg.instanceKey("kas-2"), []byte(`{"id":"kas-2","peer_addr":"kas-2:8443"}`), false)
	val := []byte(`{"connections":1,"replicas":[{"name":"agentd-1","process":"p1","since":1}]}`)
	for _, inst := range []string{"kas-1", "kas-2", "kas-3"} {
		apply(r.cfg.agentKey("agent-1", inst), val, false)
		apply(r.cfg.agentKey("agent-2", inst), val, false)
	}
	apply(r.cfg.agentKey("agent-2", "kas-3"), nil, true) // a delete assigns the entry as well
	two := []byte(`{"connections":2,"replicas":[{"name":"a","process":"p1","since":1},{"name":"b","process":"p2","since":2}]}`)
	apply(r.cfg.agentKey("agent-1", "kas-2"), two, false)

	if v.agentKeys != 5 {
		t.Fatalf("view holds %d agent keys, want 5", v.agentKeys)
	}
	for agentID, hs := range v.agents {
		if within(agentID) {
			t.Errorf("agent %q: the map key is part of an event's key string", agentID)
		}
		for _, h := range hs {
			if within(h.instance) {
				t.Errorf("agent %q, instance %q: the instance ID is part of an event's key", agentID, h.instance)
			}
			if in, ok := v.instances[h.instance]; ok && unsafe.StringData(in.ID) != unsafe.StringData(h.instance) {
				t.Errorf("agent %q, instance %q: a copy of the instance's ID, not the instance entry's", agentID, h.instance)
			}
			if cap(h.replicas) != len(h.replicas) {
				t.Errorf("agent %q, instance %q: %d replicas in a slice of %d", agentID, h.instance, len(h.replicas), cap(h.replicas))
			}
		}
	}
	if got := len(v.agents["agent-1"]); got != 3 {
		t.Fatalf("agent-1 has %d holders, want 3", got)
	}
	if got := v.agents["agent-1"][1].replicas; len(got) != 2 || got[1].Name != "b" {
		t.Errorf("agent-1 on kas-2: replicas %+v, want a and b", got)
	}
}
