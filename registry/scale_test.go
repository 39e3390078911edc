package registry

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

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

	// The view's own cost per agent key, measured on a view alone.
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
		v.apply(r, r.cfg.agentKey(fmt.Sprintf("agent-%06d", i), "kas-1"), vals[i], false)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if v.agentKeys != n {
		t.Fatalf("view holds %d agent keys, want %d", v.agentKeys, n)
	}
	t.Logf("view: %.0f bytes of heap per agent key (one replica each)", float64(m1.HeapAlloc-m0.HeapAlloc)/float64(n))
	runtime.KeepAlive(v)
}
