package registry

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// scaleEtcd is the etcd a fleet-scale test writes to: Debian's etcd-server when `etcd` is on
// PATH, one process per member (QKAS_REGISTRY_ETCD_MEMBERS, default 1) so that etcd's CPU and
// memory are its own; else the embedded server, one member in this process.
type scaleEtcd struct {
	endpoints []string     // every member's client URL
	members   []etcdMember // the external servers; none when embedded
}

// etcdMember is one etcd-server process of a scaleEtcd.
type etcdMember struct {
	name     string
	endpoint string // client URL
	pid      int
	log      string // its log file (zap JSON lines, warnings and errors only)
}

func startScaleEtcd(t *testing.T) *scaleEtcd {
	t.Helper()
	members := 1
	if v := os.Getenv("QKAS_REGISTRY_ETCD_MEMBERS"); v != "" {
		var err error
		if members, err = strconv.Atoi(v); err != nil || members < 1 {
			t.Fatalf("QKAS_REGISTRY_ETCD_MEMBERS=%q: want an integer of at least 1", v)
		}
	}
	bin, err := exec.LookPath("etcd")
	if err != nil || os.Getenv("QKAS_REGISTRY_ETCD") == "embedded" {
		if members > 1 {
			t.Skipf("QKAS_REGISTRY_ETCD_MEMBERS=%d needs Debian's etcd-server on PATH: the embedded server is one member", members)
		}
		e := startEtcd(t)
		return &scaleEtcd{endpoints: e.Endpoints()}
	}

	// Every member's peer address first: each one's --initial-cluster lists them all.
	e := &scaleEtcd{}
	dir := t.TempDir()
	var clients, peers, initial []string
	for i := range members {
		name := fmt.Sprintf("etcd-%d", i+1)
		clients, peers = append(clients, "http://"+freeAddr(t)), append(peers, "http://"+freeAddr(t))
		initial = append(initial, name+"="+peers[i])
		e.members = append(e.members, etcdMember{name: name, endpoint: clients[i], log: filepath.Join(dir, name+".log")})
	}
	var cmds []*exec.Cmd
	t.Cleanup(func() {
		// The logs are read before the kill, so that they hold what the test saw, not the
		// survivors' complaints about the members killed first.
		for _, m := range e.members {
			if m.pid == 0 {
				continue // not started
			}
			if s := m.logSummary(); s != "" {
				t.Logf("%s log: %s", m.name, s)
			}
		}
		for _, cmd := range cmds {
			_ = cmd.Process.Kill()
		}
		for _, cmd := range cmds {
			_ = cmd.Wait()
		}
	})
	for i := range e.members {
		m := &e.members[i]
		logf, err := os.Create(m.log)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--name", m.name, "--data-dir", filepath.Join(dir, m.name),
			"--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		err = cmd.Start()
		_ = logf.Close() // the child has its own descriptor
		if err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		m.pid = cmd.Process.Pid
	}
	e.endpoints = clients

	c := newTestClient(t, e.endpoints)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := e.healthy(c)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, m := range e.members {
				b, _ := os.ReadFile(m.log)
				fmt.Fprintf(&logs, "%s:\n%s", m.name, b)
			}
			t.Fatalf("etcd (%s, %d members) not healthy after 30 s: %v\n%s", bin, members, err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, m := range e.members {
		t.Logf("etcd: %s, member %s, pid %d, %s", bin, m.name, m.pid, m.endpoint)
	}
	return e
}

// healthy is nil once every member answers and names the same leader, and a linearizable read
// (which needs a quorum) succeeds.
func (e *scaleEtcd) healthy(c *clientv3.Client) error {
	var leader uint64
	for _, m := range e.members {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.Status(ctx, m.endpoint)
		cancel()
		switch {
		case err != nil:
			return fmt.Errorf("%s: %w", m.name, err)
		case st.Leader == 0:
			return fmt.Errorf("%s: no leader", m.name)
		case leader != 0 && st.Leader != leader:
			return fmt.Errorf("%s: leader %x, another member's %x", m.name, st.Leader, leader)
		}
		leader = st.Leader
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Get(ctx, "health")
	return err
}

// logSummary counts m's log lines by level and message, most frequent first ("" when empty),
// with the first error each message gave and the longest time it reported ("took", e.g. a slow
// apply, or "exceeded-duration", a late heartbeat).
func (m etcdMember) logSummary() string {
	b, err := os.ReadFile(m.log)
	if err != nil {
		return err.Error()
	}
	type group struct {
		n       int
		err     string
		longest time.Duration
	}
	groups := map[string]*group{}
	for line := range strings.Lines(string(b)) {
		var l struct {
			Level, Msg, Error, Took string
			Exceeded                string `json:"exceeded-duration"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			l.Level, l.Msg = "unparsed", strings.TrimSpace(line)
		}
		k := l.Level + ": " + l.Msg
		g := groups[k]
		if g == nil {
			g = &group{err: l.Error}
			groups[k] = g
		}
		g.n++
		for _, v := range []string{l.Took, l.Exceeded} {
			if d, err := time.ParseDuration(v); err == nil {
				g.longest = max(g.longest, d)
			}
		}
	}
	keys := slices.SortedFunc(maps.Keys(groups), func(a, b string) int {
		return cmp.Or(groups[b].n-groups[a].n, strings.Compare(a, b))
	})
	var out []string
	for _, k := range keys {
		g := groups[k]
		s := fmt.Sprintf("%d× %s", g.n, k)
		if g.err != "" {
			s += fmt.Sprintf(" (first error: %s)", g.err)
		}
		if g.longest > 0 {
			s += fmt.Sprintf(" (longest %v)", g.longest.Round(time.Millisecond))
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

// etcdSample is what the test reads from etcd before and after a phase: one memberSample per
// member of an external etcd, one for the embedded server.
type etcdSample struct {
	at      time.Time
	members []memberSample
}

// memberSample is one member's metrics, CPU and RSS at etcdSample.at.
type memberSample struct {
	counters map[string]float64 // etcd's own metrics (names below)
	cpu      time.Duration      // an external member's CPU; the embedded one's is the test's
	rssKiB   int64              // an external member's RSS
}

var etcdCounterNames = []string{
	"etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
	"etcd_disk_wal_fsync_duration_seconds_count", "etcd_mvcc_db_total_size_in_bytes",
	"etcd_server_is_leader", "etcd_server_leader_changes_seen_total", "etcd_server_slow_apply_total",
	"etcd_server_proposals_failed_total",
}

func (e *scaleEtcd) sample(t *testing.T) etcdSample {
	t.Helper()
	s := etcdSample{at: time.Now()}
	if len(e.members) == 0 {
		s.members = append(s.members, memberSample{counters: gatherSums(t, prometheus.DefaultGatherer, etcdCounterNames)})
		return s
	}
	for _, m := range e.members {
		ms, err := m.sample()
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		s.members = append(s.members, ms)
	}
	return s
}

// gatherSums is, for each of names, the sum of g's metrics of that name over their labels; a
// histogram counts its observations, under its name with "_count" as /metrics writes it.
func gatherSums(t *testing.T, g prometheus.Gatherer, names []string) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]float64{}
	for _, mf := range mfs {
		name := mf.GetName()
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			name += "_count"
		}
		if slices.Contains(names, name) {
			for _, m := range mf.GetMetric() {
				sums[name] += value(m)
			}
		}
	}
	return sums
}

// sample reads m's /metrics, and its CPU and RSS from /proc.
func (m etcdMember) sample() (memberSample, error) {
	s := memberSample{counters: map[string]float64{}}
	resp, err := http.Get(m.endpoint + "/metrics")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		name, _, _ = strings.Cut(name, "{")
		if !ok || !slices.Contains(etcdCounterNames, name) {
			continue
		}
		if f, err := strconv.ParseFloat(val, 64); err == nil {
			s.counters[name] += f
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", m.pid))
	if err != nil {
		return s, err
	}
	// Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(f) < 13 {
		return s, errors.New("short /proc/<pid>/stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s.cpu = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100 on Linux
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.pid))
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return s, nil
}

// phaseSample is what TestRegistryFleetAtScale reads before and after each phase.
type phaseSample struct {
	etcd       etcdSample
	cpu        time.Duration        // this process's: the 3 registries (and the embedded etcd)
	registries []map[string]float64 // each registry's own counters (registryCounterNames)
}

// registryCounterNames are the registry's counters that tell a phase that went wrong: a lease
// lost (and granted again), a write to etcd that failed, a watch read again from scratch.
var registryCounterNames = []string{
	"kasd_registry_leases_granted_total", "kasd_registry_publish_errors_total", "kasd_registry_watch_resyncs_total",
}

func samplePhase(t *testing.T, e *scaleEtcd, rs []testRegistry) phaseSample {
	t.Helper()
	s := phaseSample{etcd: e.sample(t), cpu: cpuTime()}
	for _, r := range rs {
		s.registries = append(s.registries, gatherSums(t, r.metrics, registryCounterNames))
	}
	return s
}

// phaseReport logs one phase of TestRegistryFleetAtScale: each member's writes, fsyncs, CPU and
// RSS, the cluster's total when there are several, this process's CPU, and the registries'
// lost leases, failed writes and watch resyncs.
func phaseReport(t *testing.T, e *scaleEtcd, rs []testRegistry, name string, pa, pb phaseSample) {
	t.Helper()
	a, b := pa.etcd, pb.etcd
	d := b.at.Sub(a.at).Seconds()
	var cpu time.Duration
	var rssKiB int64
	var fsyncs float64
	for i := range b.members {
		ma, mb := a.members[i], b.members[i]
		delta := func(n string) float64 { return mb.counters[n] - ma.counters[n] }
		who := "etcd"
		if len(e.members) > 1 {
			who = e.members[i].name
			if mb.counters["etcd_server_is_leader"] == 1 {
				who += " (leader)"
			}
		}
		puts, dels, txns := delta("etcd_mvcc_put_total"), delta("etcd_mvcc_delete_total"), delta("etcd_mvcc_txn_total")
		t.Logf("%s: %.1f s; %s wrote %.0f puts + %.0f deletes (%.0f keys/s) in %.0f transactions (%.0f/s), %.0f WAL fsyncs; db %.1f MiB; %.0f leader changes, %.0f slow applies, %.0f failed proposals",
			name, d, who, puts, dels, (puts+dels)/d, txns, txns/d, delta("etcd_disk_wal_fsync_duration_seconds_count"),
			mb.counters["etcd_mvcc_db_total_size_in_bytes"]/(1<<20), delta("etcd_server_leader_changes_seen_total"),
			delta("etcd_server_slow_apply_total"), delta("etcd_server_proposals_failed_total"))
		if len(e.members) > 0 {
			t.Logf("%s: %s process CPU %v (%.0f %% of a core), RSS %d MiB", name, who,
				(mb.cpu - ma.cpu).Round(time.Millisecond), 100*(mb.cpu-ma.cpu).Seconds()/d, mb.rssKiB>>10)
		}
		cpu += mb.cpu - ma.cpu
		rssKiB += mb.rssKiB
		fsyncs += delta("etcd_disk_wal_fsync_duration_seconds_count")
	}
	if len(e.members) > 1 {
		// Every member applies every transaction: the cluster's writes are any member's.
		t.Logf("%s: %d members together: CPU %v (%.0f %% of a core), RSS %d MiB, %.0f WAL fsyncs",
			name, len(e.members), cpu.Round(time.Millisecond), 100*cpu.Seconds()/d, rssKiB>>10, fsyncs)
	}
	what := "3 registries"
	if len(e.members) == 0 {
		what += " and the embedded etcd"
	}
	t.Logf("%s: CPU of this process (%s) %v (%.0f %%)", name, what, (pb.cpu - pa.cpu).Round(time.Millisecond), 100*(pb.cpu-pa.cpu).Seconds()/d)
	var regs []string
	for i, r := range rs {
		delta := func(n string) float64 { return pb.registries[i][n] - pa.registries[i][n] }
		regs = append(regs, fmt.Sprintf("%s %.0f leases lost and granted again, %.0f failed writes, %.0f watch resyncs", r.Self().ID,
			delta("kasd_registry_leases_granted_total"), delta("kasd_registry_publish_errors_total"), delta("kasd_registry_watch_resyncs_total")))
	}
	t.Logf("%s: %s", name, strings.Join(regs, "; "))
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
// (default 3,000; docs/scale.md has the 150,000 figures); QKAS_REGISTRY_ETCD_MEMBERS=3 runs it
// against a cluster of three etcd-server processes (default one; needs `etcd` on PATH), each
// member reported on its own and the cluster in total; QKAS_REGISTRY_HEAP_PROFILE names a file
// for a heap profile taken once the fleet is up.
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
	p0 := samplePhase(t, e, rs)
	storm(3*time.Second, func(i int) {
		id, h := agent(i)
		for _, k := range []int{i % 3, (i + 1) % 3} {
			rs[k].SetAgent(id, h)
			want[ids[k]]++
		}
	})
	waitLoads(t, "fleet up", rs, want, 2*n)
	p1 := samplePhase(t, e, rs)
	phaseReport(t, e, rs, fmt.Sprintf("fleet up (%d agents, %d keys)", n, 2*n), p0, p1)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	what := "the 3 registries"
	if len(e.members) == 0 {
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
	p2 := samplePhase(t, e, rs)
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
	p3 := samplePhase(t, e, rs)
	phaseReport(t, e, rs, fmt.Sprintf("kasd-3 crashed (%d keys moved to the survivors, %d expired with the lease, TTL 5 s)", crashed, crashed), p2, p3)
}
