package registry

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// scaleEtcd is the etcd a fleet-scale test writes to: Debian's etcd-server in a process of its
// own when `etcd` is on PATH (so its CPU and memory are its own), else the embedded server.
type scaleEtcd struct {
	endpoints []string
	pid       int    // 0: embedded, in this process
	metrics   string // the external server's /metrics URL
}

func startScaleEtcd(t *testing.T) *scaleEtcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil || os.Getenv("QKAS_REGISTRY_ETCD") == "embedded" {
		e := startEtcd(t)
		return &scaleEtcd{endpoints: e.Endpoints()}
	}
	client, peer := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--name", "scale", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "scale=http://"+peer, "--log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
	})
	e := &scaleEtcd{endpoints: []string{"http://" + client}, pid: cmd.Process.Pid, metrics: "http://" + client + "/metrics"}
	c := newTestClient(t, e.endpoints)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Get(ctx, "health")
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("etcd (%s) not answering after 30 s: %v\n%s", bin, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("etcd: %s, pid %d, %s", bin, e.pid, client)
	return e
}

// etcdSample is what the test reads from etcd before and after a phase.
type etcdSample struct {
	at       time.Time
	counters map[string]float64 // etcd's own metrics (names below)
	cpu      time.Duration      // the external server's CPU; the embedded one's is the test's
	rssKiB   int64              // the external server's RSS
}

var etcdCounterNames = []string{
	"etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
	"etcd_disk_wal_fsync_duration_seconds_count", "etcd_mvcc_db_total_size_in_bytes",
}

func (e *scaleEtcd) sample(t *testing.T) etcdSample {
	t.Helper()
	s := etcdSample{at: time.Now(), counters: map[string]float64{}}
	want := map[string]bool{}
	for _, n := range etcdCounterNames {
		want[n] = true
	}
	if e.pid == 0 {
		mfs, err := prometheus.DefaultGatherer.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if want[mf.GetName()] {
				for _, m := range mf.GetMetric() {
					s.counters[mf.GetName()] += value(m)
				}
			}
		}
		return s
	}
	resp, err := http.Get(e.metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		name, _, _ = strings.Cut(name, "{")
		if !ok || !want[name] {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			s.counters[name] += f
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.cpu = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.pid))
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return s
}

// phaseReport logs one phase of TestRegistryFleetAtScale.
func phaseReport(t *testing.T, e *scaleEtcd, name string, a, b etcdSample, cpu0, cpu1 time.Duration) {
	t.Helper()
	d := b.at.Sub(a.at).Seconds()
	delta := func(n string) float64 { return b.counters[n] - a.counters[n] }
	puts, dels, txns, fsyncs := delta("etcd_mvcc_put_total"), delta("etcd_mvcc_delete_total"), delta("etcd_mvcc_txn_total"), delta("etcd_disk_wal_fsync_duration_seconds_count")
	t.Logf("%s: %.1f s; etcd wrote %.0f puts + %.0f deletes (%.0f keys/s) in %.0f transactions (%.0f/s), %.0f WAL fsyncs; db %.1f MiB",
		name, d, puts, dels, (puts+dels)/d, txns, txns/d, fsyncs, b.counters["etcd_mvcc_db_total_size_in_bytes"]/(1<<20))
	if e.pid != 0 {
		t.Logf("%s: etcd process CPU %v (%.0f %% of a core), RSS %d MiB; this process (3 registries) CPU %v (%.0f %%)",
			name, (b.cpu - a.cpu).Round(time.Millisecond), 100*(b.cpu-a.cpu).Seconds()/d, b.rssKiB>>10,
			(cpu1 - cpu0).Round(time.Millisecond), 100*(cpu1-cpu0).Seconds()/d)
	} else {
		t.Logf("%s: CPU of this process (3 registries and the embedded etcd) %v (%.0f %%)",
			name, (cpu1 - cpu0).Round(time.Millisecond), 100*(cpu1-cpu0).Seconds()/d)
	}
}

// writeHeapProfile writes the heap profile (in use after the last collection) to path.
func writeHeapProfile(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		t.Fatal(err)
	}
	t.Logf("heap profile: %s", path)
}

// agentKeys is how many agents/ keys r's view holds (live or not).
func agentKeys(r *Registry) int {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	return r.view.agentKeys
}

// waitLoads polls (Load walks the whole view) until every registry in rs sees exactly want:
// instance -> connections, and keys agent keys in its view.
func waitLoads(t *testing.T, what string, rs []testRegistry, want map[string]int, keys int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for _, r := range rs {
		for {
			l := r.Load()
			ok := len(l.Connections) == len(want) && agentKeys(r.Registry) == keys
			for id, n := range want {
				ok = ok && l.Connections[id] == n
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s sees %v and %d agent keys after 5 minutes, want %v and %d", what, r.Self().ID, l.Connections, agentKeys(r.Registry), want, keys)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestRegistryFleetAtScale is the registry of a fleet of 3 kasd holding n agents, each agent
// connected to two of them (2n agent keys), through a kasd crash, with a real etcd:
//   - "fleet up": every connection is published within 3 s, and all 3 views must hold all of
//     them;
//   - "kasd-3 crashes": kas-3 stops without revoking its lease; its agents reconnect at once to
//     the survivor that lacks them (n·2/3 new keys within 2 s) and its n·2/3 keys go when its
//     lease expires (TTL 5 s); both survivors' views must settle on exactly the new state.
//
// It logs etcd's write rate (puts, deletes and transactions per second, WAL fsyncs), etcd's CPU
// and memory, the registries' CPU and the views' heap. QKAS_REGISTRY_FLEET_AGENTS sets n
// (default 3,000; docs/scale.md has the 150,000 figures); QKAS_REGISTRY_HEAP_PROFILE names a
// file for a heap profile taken once the fleet is up.
func TestRegistryFleetAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes thousands of keys to etcd")
	}
	n := 3000
	if v := os.Getenv("QKAS_REGISTRY_FLEET_AGENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 3 {
			t.Fatalf("QKAS_REGISTRY_FLEET_AGENTS=%q: want an integer of at least 3", v)
		}
	}
	e := startScaleEtcd(t)
	ids := []string{"kas-1", "kas-2", "kas-3"}
	var rs []testRegistry
	for _, id := range ids {
		rs = append(rs, newTestRegistryAt(t, e.endpoints, id, 5*time.Second))
	}
	for _, r := range rs {
		waitView(t, r.Registry, convergeTimeout, "synced", func() bool { return r.Synced() && len(r.Instances()) == 3 })
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)

	agent := func(i int) (string, Holding) {
		rep := []Replica{{Name: fmt.Sprintf("agentd-%06d-7f9c", i), Process: "2u8ssryacmjav", Since: time.Now().UnixMilli()}}
		return fmt.Sprintf("agent-%06d", i), Holding{Connections: 1, Replicas: rep}
	}
	// storm calls set for every agent, spread evenly over d.
	storm := func(d time.Duration, set func(i int)) {
		start := time.Now()
		for i := range n {
			set(i)
			if due := time.Duration(i+1) * d / time.Duration(n); time.Since(start) < due {
				time.Sleep(due - time.Since(start))
			}
		}
	}

	// Fleet up: agent i on instances i%3 and (i+1)%3.
	want := map[string]int{}
	s0, cpu0 := e.sample(t), cpuTime()
	storm(3*time.Second, func(i int) {
		id, h := agent(i)
		for _, k := range []int{i % 3, (i + 1) % 3} {
			rs[k].SetAgent(id, h)
			want[ids[k]]++
		}
	})
	waitLoads(t, "fleet up", rs, want, 2*n)
	s1, cpu1 := e.sample(t), cpuTime()
	phaseReport(t, e, fmt.Sprintf("fleet up (%d agents, %d keys)", n, 2*n), s0, s1, cpu0, cpu1)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	what := "the 3 registries"
	if e.pid == 0 {
		what += " and the embedded etcd"
	}
	t.Logf("fleet up: heap of %s %.1f MiB, %.0f bytes per agent key in a view (desired state and etcd clients included)", what,
		float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), float64(m1.HeapAlloc-m0.HeapAlloc)/float64(3*2*n))

	if path := os.Getenv("QKAS_REGISTRY_HEAP_PROFILE"); path != "" {
		writeHeapProfile(t, path)
	}

	// kasd-3 crashes; its agents reconnect to the survivor that does not hold them yet.
	if err := rs[2].Close(); err != nil {
		t.Fatal(err)
	}
	survivors := rs[:2]
	crashed := want["kas-3"]
	delete(want, "kas-3")
	s2, cpu2 := e.sample(t), cpuTime()
	storm(2*time.Second, func(i int) {
		var k int
		switch {
		case i%3 == 2: // was on kas-3 and kas-1
			k = 1
		case (i+1)%3 == 2: // was on kas-2 and kas-3
			k = 0
		default:
			return
		}
		id, h := agent(i)
		rs[k].SetAgent(id, h)
		want[ids[k]]++
	})
	// 2n keys again only once kas-3's have gone with its lease.
	waitLoads(t, "kasd-3 crashed", survivors, want, 2*n)
	s3, cpu3 := e.sample(t), cpuTime()
	phaseReport(t, e, fmt.Sprintf("kasd-3 crashed (%d keys moved to the survivors, %d expired with the lease, TTL 5 s)", crashed, crashed), s2, s3, cpu2, cpu3)
}
