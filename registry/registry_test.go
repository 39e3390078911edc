package registry

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const convergeTimeout = 10 * time.Second

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "zero value means defaults", cfg: Config{}},
		{name: "custom", cfg: Config{Prefix: "/x/y/", TTL: 3 * time.Second}},
		{name: "root prefix", cfg: Config{Prefix: "/"}},
		{name: "minimum TTL", cfg: Config{TTL: MinTTL}},
		{name: "no leading slash", cfg: Config{Prefix: "qkas/"}, wantErr: "prefix"},
		{name: "no trailing slash", cfg: Config{Prefix: "/qkas"}, wantErr: "prefix"},
		{name: "TTL too short", cfg: Config{TTL: time.Second}, wantErr: "TTL"},
		{name: "fleet id", cfg: Config{FleetID: "f-0123abcd.prod_1"}},
		{name: "fleet id with slash", cfg: Config{FleetID: "a/b"}, wantErr: "fleet id"},
		{name: "fleet id dot-dot", cfg: Config{FleetID: ".."}, wantErr: "fleet id"},
		{name: "fleet id with space", cfg: Config{FleetID: "a b"}, wantErr: "fleet id"},
		{name: "fleet id too long", cfg: Config{FleetID: strings.Repeat("x", MaxFleetIDLength+1)}, wantErr: "fleet id"},
		{name: "negative TTL", cfg: Config{TTL: -time.Second}, wantErr: "TTL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
	d := Config{}.WithDefaults()
	if d.Prefix != DefaultPrefix || d.FleetID != DefaultFleetID || d.TTL != DefaultTTL || d.Now == nil {
		t.Fatalf("defaults: %+v", d)
	}
	if got := (Config{TTL: 2500 * time.Millisecond}).ttlSeconds(); got != 3 {
		t.Fatalf("ttlSeconds rounds up: got %d", got)
	}
}

func TestParseKey(t *testing.T) {
	c := Config{}.WithDefaults()
	for _, tc := range []struct {
		key             string
		kind            keyKind
		agent, instance string
	}{
		{"/qkas/fleets/default/instances/kas-1", keyInstance, "", "kas-1"},
		{"/qkas/fleets/default/agents/42/kas-1", keyAgent, "42", "kas-1"},
		{"/qkas/fleets/default/agents/group/agent/kas-1", keyAgent, "group/agent", "kas-1"},
		{"/qkas/fleets/default/agents/42/", keyUnknown, "", ""},
		{"/qkas/fleets/default/agents/42", keyUnknown, "", ""},
		{"/qkas/fleets/default/instances/", keyUnknown, "", ""},
		{"/qkas/fleets/default/instances/a/b", keyUnknown, "", ""},
		{"/qkas/fleets/default/other/x", keyUnknown, "", ""},
		{"/other/fleets/default/instances/kas-1", keyUnknown, "", ""},
		// Another fleet's keys, and the layout before fleet ids, are not this fleet's.
		{"/qkas/fleets/other/instances/kas-1", keyUnknown, "", ""},
		{"/qkas/fleets/default-2/agents/42/kas-1", keyUnknown, "", ""},
		{"/qkas/instances/kas-1", keyUnknown, "", ""},
		{"/qkas/agents/42/kas-1", keyUnknown, "", ""},
	} {
		kind, agent, instance := c.parseKey(tc.key)
		if kind != tc.kind || agent != tc.agent || instance != tc.instance {
			t.Errorf("parseKey(%q) = %v %q %q, want %v %q %q", tc.key, kind, agent, instance, tc.kind, tc.agent, tc.instance)
		}
	}
	if k := c.agentKey("group/agent", "kas-1"); k != "/qkas/fleets/default/agents/group/agent/kas-1" {
		t.Errorf("agentKey = %q", k)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	e := startEtcd(t)
	c := newTestClient(t, e.Endpoints())
	log := zerolog.Nop()
	if _, err := New(nil, Config{}, Instance{ID: "a"}, log, nil); err == nil {
		t.Error("nil client accepted")
	}
	if _, err := New(c, Config{}, Instance{ID: ""}, log, nil); err == nil {
		t.Error("empty instance ID accepted")
	}
	if _, err := New(c, Config{}, Instance{ID: "a/b"}, log, nil); err == nil {
		t.Error("instance ID with / accepted")
	}
	if _, err := New(c, Config{TTL: time.Second}, Instance{ID: "a"}, log, nil); err == nil {
		t.Error("short TTL accepted")
	}
	reg := prometheus.NewRegistry()
	r, err := New(c, Config{}, Instance{ID: "a"}, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := New(c, Config{}, Instance{ID: "b"}, log, reg); err == nil {
		t.Error("second registration of the metrics on one Registerer accepted")
	}
}

// Three instances on one etcd publish agents; every view converges, counts update, n=0
// deletes, Holders is ordered and joined with instance info, WaitForHolder excludes.
func TestThreeInstancesConverge(t *testing.T) {
	e := startEtcd(t)
	rs := []testRegistry{
		newTestRegistry(t, e, "kas-c", 2*time.Second),
		newTestRegistry(t, e, "kas-a", 2*time.Second),
		newTestRegistry(t, e, "kas-b", 2*time.Second),
	}
	rc, ra, rb := rs[0], rs[1], rs[2]
	ra.SetAgentConnections("shared", 2)
	ra.SetAgentConnections("only-a", 1)
	rb.SetAgentConnections("shared", 1)
	rc.SetAgentConnections("shared", 5)
	rc.SetAgentConnections("only-c", 3)

	want := map[string]map[string]int{
		"shared": {"kas-a": 2, "kas-b": 1, "kas-c": 5},
		"only-a": {"kas-a": 1},
		"only-c": {"kas-c": 3},
	}
	converge := func(what string) {
		t.Helper()
		for _, r := range rs {
			waitView(t, r.Registry, convergeTimeout, what+" on "+r.Self().ID, func() bool {
				return reflect.DeepEqual(agentsView(r.Registry), want) && len(r.Instances()) == 3
			})
		}
	}
	converge("initial publish")

	for _, r := range rs {
		if !r.Synced() || !r.LeaseHeld() {
			t.Fatalf("%s: synced=%v leaseHeld=%v", r.Self().ID, r.Synced(), r.LeaseHeld())
		}
		hs := r.Holders("shared")
		if len(hs) != 3 || hs[0].Instance.ID != "kas-a" || hs[1].Instance.ID != "kas-b" || hs[2].Instance.ID != "kas-c" {
			t.Fatalf("Holders not ordered by ID: %s", fmtHolders(hs))
		}
		if want := (Instance{ID: "kas-b", PeerAddr: "kas-b:8443", APIAddr: "kas-b:8080", Version: "test"}); hs[1].Instance != want {
			t.Fatalf("instance info not joined: %+v", hs[1].Instance)
		}
		ids := []string{}
		for _, in := range r.Instances() {
			ids = append(ids, in.ID)
		}
		if !reflect.DeepEqual(ids, []string{"kas-a", "kas-b", "kas-c"}) {
			t.Fatalf("Instances: %v", ids)
		}
		mustEqual(t, "instances gauge", metricValue(t, r.metrics, "kasd_registry_entries", map[string]string{"kind": "instances"}), 3)
		mustEqual(t, "agents gauge", metricValue(t, r.metrics, "kasd_registry_entries", map[string]string{"kind": "agents"}), 5)
		mustEqual(t, "lease state", metricValue(t, r.metrics, "kasd_registry_lease_state", nil), 1)
	}

	// Counts update; n=0 deletes (the key, and the agent once nobody holds it).
	ra.SetAgentConnections("shared", 7)
	rb.SetAgentConnections("shared", 0)
	ra.SetAgentConnections("only-a", 0)
	rc.SetAgentConnections("only-c", 4)
	want = map[string]map[string]int{
		"shared": {"kas-a": 7, "kas-c": 5},
		"only-c": {"kas-c": 4},
	}
	converge("updates and deletes")

	// WaitForHolder excludes the given instance and returns at once when another holder exists.
	hs, err := ra.WaitForHolder(ctxTimeout(t, 5*time.Second), "shared", "kas-a")
	if err != nil || len(hs) != 1 || hs[0].Instance.ID != "kas-c" {
		t.Fatalf("WaitForHolder(shared, exclude kas-a) = %s, %v", fmtHolders(hs), err)
	}
	// only-c is held by kas-c alone: excluding it leaves nobody, so the wait ends with ctx.
	if hs, err := rc.WaitForHolder(ctxTimeout(t, 200*time.Millisecond), "only-c", "kas-c"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForHolder(only-c, exclude kas-c) = %s, %v; want deadline exceeded", fmtHolders(hs), err)
	}
	if n := metricValue(t, ra.metrics, "kasd_registry_watch_lag_seconds", nil); n == 0 {
		t.Error("no watch lag observed for our own writes")
	}
}

// WaitForHolder is woken by the watch when another instance publishes after the wait began,
// ends with ctx's error on timeout, and with ErrClosed when the registry closes.
func TestWaitForHolder(t *testing.T) {
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", 2*time.Second)
	r2 := newTestRegistry(t, e, "kas-2", 2*time.Second)

	// r1 holds the agent itself: excluding self, there is nobody yet.
	r1.SetAgentConnections("agent", 1)
	waitView(t, r1.Registry, convergeTimeout, "self published", func() bool { return len(r1.Holders("agent")) == 1 })

	type result struct {
		hs  []Holder
		err error
	}
	done := make(chan result, 1)
	started := time.Now()
	go func() {
		hs, err := r1.WaitForHolder(ctxTimeout(t, convergeTimeout), "agent", "kas-1")
		done <- result{hs, err}
	}()
	// Give the waiter time to find nobody and block; a waiter that started late would still
	// see the holder, so this only makes the test exercise the wake-up path, not pass.
	time.Sleep(100 * time.Millisecond)
	select {
	case res := <-done:
		t.Fatalf("WaitForHolder returned before any other holder: %s %v", fmtHolders(res.hs), res.err)
	default:
	}
	r2.SetAgentConnections("agent", 2)
	res := <-done
	if res.err != nil || len(res.hs) != 1 || res.hs[0].Instance.ID != "kas-2" || res.hs[0].Connections != 2 {
		t.Fatalf("WaitForHolder = %s, %v", fmtHolders(res.hs), res.err)
	}
	t.Logf("woken after %v", time.Since(started))

	if _, err := r1.WaitForHolder(ctxTimeout(t, 100*time.Millisecond), "nobody", ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: got %v", err)
	}

	go func() {
		_, err := r1.WaitForHolder(ctxTimeout(t, convergeTimeout), "nobody", "")
		done <- result{nil, err}
	}()
	r1.Close()
	if res := <-done; !errors.Is(res.err, ErrClosed) {
		t.Fatalf("after Close: got %v, want ErrClosed", res.err)
	}
}

// A crash (Close without revoking, client gone) leaves the keys until the lease expires.
func TestCrashKeysExpireAfterTTL(t *testing.T) {
	const ttl = 2 * time.Second
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", ttl)
	r2 := newTestRegistry(t, e, "kas-2", ttl)
	r2.SetAgentConnections("agent", 1)
	waitView(t, r1.Registry, convergeTimeout, "kas-2 published", func() bool { return len(r1.Holders("agent")) == 1 })

	r2.Close()
	r2.client.Close()
	crashed := time.Now()

	// Not revoked: the key is still in etcd, on a live lease.
	resp, err := r1.client.Get(ctxTimeout(t, 5*time.Second), r1.cfg.agentKey("agent", "kas-2"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("key after crash: %v %v", resp, err)
	}

	waitView(t, r1.Registry, convergeTimeout, "kas-2 expired", func() bool {
		return len(r1.Holders("agent")) == 0 && len(r1.Instances()) == 1
	})
	gone := time.Since(crashed)
	t.Logf("keys gone %v after the crash (TTL %v)", gone, ttl)
	if gone < ttl/2 {
		t.Fatalf("keys gone after %v: sooner than a lease expiry can explain", gone)
	}
}

// Shutdown revokes the lease: the keys disappear from the other views at once, long before
// the TTL.
func TestShutdownRevokes(t *testing.T) {
	const ttl = 10 * time.Second
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", ttl)
	r2 := newTestRegistry(t, e, "kas-2", ttl)
	r2.SetAgentConnections("agent", 1)
	waitView(t, r1.Registry, convergeTimeout, "kas-2 published", func() bool { return len(r1.Holders("agent")) == 1 })

	start := time.Now()
	if err := r2.Shutdown(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitView(t, r1.Registry, ttl/3, "kas-2 revoked", func() bool {
		return len(r1.Holders("agent")) == 0 && len(r1.Instances()) == 1
	})
	t.Logf("keys gone %v after Shutdown (TTL %v)", time.Since(start), ttl)
	if err := r2.Shutdown(ctxTimeout(t, time.Second)); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := r2.Close(); err != nil {
		t.Fatalf("Close after Shutdown: %v", err)
	}
	if r2.LeaseHeld() {
		t.Fatal("LeaseHeld after Shutdown")
	}
}

// New never waits for etcd: with nothing listening, it returns, local calls work, lookups
// answer from the (empty) view, and Close returns promptly.
func TestEtcdUnreachable(t *testing.T) {
	c := newTestClient(t, []string{"http://" + freeAddr(t)})
	start := time.Now()
	r, err := New(c, Config{TTL: 2 * time.Second}, Instance{ID: "kas-1"}, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.SetAgentConnections("agent", 1)
	if r.Synced() || r.LeaseHeld() || len(r.Holders("agent")) != 0 {
		t.Fatalf("synced=%v leaseHeld=%v holders=%v", r.Synced(), r.LeaseHeld(), r.Holders("agent"))
	}
	if got := r.LocalAgents(); !maps.Equal(got, map[string]int{"agent": 1}) {
		t.Fatalf("LocalAgents = %v", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("New and local calls took %v", d)
	}
	time.Sleep(200 * time.Millisecond) // let both goroutines block in etcd calls
	start = time.Now()
	r.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}

// etcd goes away for longer than the TTL: local calls keep working without blocking, the
// lease is lost, and when etcd returns the registry takes a new lease and republishes the
// state it holds now (including changes made during the outage).
func TestEtcdOutage(t *testing.T) {
	const (
		ttl      = 2 * time.Second
		outage   = 4 * time.Second
		maxBlock = time.Second // "never blocks on etcd": an etcd round trip during the outage would take seconds (dial timeouts); 1s leaves room for -race and GC on 2 loaded cores
	)
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", ttl)
	r2 := newTestRegistry(t, e, "kas-2", ttl)
	r1.SetAgentConnections("a", 1)
	r1.SetAgentConnections("b", 1)
	waitView(t, r2.Registry, convergeTimeout, "kas-1 published", func() bool {
		return reflect.DeepEqual(agentsView(r2.Registry), map[string]map[string]int{"a": {"kas-1": 1}, "b": {"kas-1": 1}})
	})
	firstLease := r1.leaseID.Load()

	// The registries' open streams make Close wait for etcd's graceful stop; etcd is really
	// gone when it returns.
	e.Close()
	down := time.Now()
	t.Logf("etcd stopped (Close took a while because of open streams)")

	var slowest time.Duration
	timed := func(f func()) {
		s := time.Now()
		f()
		slowest = max(slowest, time.Since(s))
	}
	changedDuringOutage := false
	for time.Since(down) < outage {
		timed(func() { r1.SetAgentConnections("a", 3) })
		timed(func() { r1.SetAgentConnections("b", 0) })
		timed(func() { r1.SetAgentConnections("c", 2) })
		timed(func() { _ = r1.Holders("a") })
		timed(func() { _ = r1.Agents() })
		timed(func() { _ = r1.Instances() })
		timed(func() { _, _ = r1.WaitForHolder(ctxTimeout(t, time.Second), "a", "") })
		changedDuringOutage = true
		time.Sleep(20 * time.Millisecond)
	}
	if !changedDuringOutage {
		t.Fatal("no calls made during the outage")
	}
	if slowest > maxBlock {
		t.Fatalf("a local call took %v during the outage (max %v)", slowest, maxBlock)
	}
	if r1.LeaseHeld() || r2.LeaseHeld() {
		t.Fatalf("lease still held %v after etcd stopped (TTL %v): r1=%v r2=%v", time.Since(down), ttl, r1.LeaseHeld(), r2.LeaseHeld())
	}
	mustEqual(t, "lease state gauge during outage", metricValue(t, r1.metrics, "kasd_registry_lease_state", nil), 0)

	e2, err := StartEmbedded(EmbeddedConfig{Dir: e.etcd.Config().Dir, ClientAddr: e.ClientAddr(), PeerAddr: e.PeerAddr(), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e2.Close() })
	if e2.Joined() {
		t.Fatal("restart joined instead of starting")
	}
	restarted := time.Now()

	// r2 sees what r1 holds now: only possible through republishing under a new lease.
	want := map[string]map[string]int{"a": {"kas-1": 3}, "c": {"kas-1": 2}}
	waitView(t, r2.Registry, 3*convergeTimeout, "kas-1 republished", func() bool {
		return reflect.DeepEqual(agentsView(r2.Registry), want)
	})
	t.Logf("republished %v after etcd restarted", time.Since(restarted))
	if !r1.LeaseHeld() {
		t.Fatal("r1 published but LeaseHeld is false")
	}
	newLease := r1.leaseID.Load()
	if newLease == 0 || newLease == firstLease {
		t.Fatalf("lease after the outage: %x (before: %x)", newLease, firstLease)
	}
	mustEqual(t, "leases granted", metricValue(t, r1.metrics, "kasd_registry_leases_granted_total", nil), 2)
	mustEqual(t, "lease state gauge after", metricValue(t, r1.metrics, "kasd_registry_lease_state", nil), 1)

	// The republished keys live on the new lease, which is alive (so they will not vanish
	// when the old lease, revived by etcd's restart, finally expires).
	ctx := ctxTimeout(t, 5*time.Second)
	resp, err := r2.client.Get(ctx, r1.cfg.agentKey("a", "kas-1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v %v", resp, err)
	}
	mustEqual(t, "key's lease", resp.Kvs[0].Lease, newLease)
	ttlResp, err := r2.client.TimeToLive(ctx, clientv3.LeaseID(newLease))
	if err != nil || ttlResp.TTL <= 0 {
		t.Fatalf("new lease TTL: %v %v", ttlResp, err)
	}

	// Close everything before etcd so that its Close does not wait for open streams.
	r1.Close()
	r2.Close()
	r1.client.Close()
	r2.client.Close()
	e2.Close()
}

// A watcher that falls behind a compaction resyncs: the view ends up right and the resync is
// counted.
func TestResyncAfterCompaction(t *testing.T) {
	e := startEtcd(t)
	r1 := newTestRegistry(t, e, "kas-1", 2*time.Second)
	r2 := newTestRegistry(t, e, "kas-2", 2*time.Second)
	r2.SetAgentConnections("old", 1)
	waitView(t, r1.Registry, convergeTimeout, "old published", func() bool { return len(r1.Holders("old")) == 1 })

	resume, err := r1.suspendWatchForTest(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r2.SetAgentConnections("old", 0)
	r2.SetAgentConnections("new", 4)
	want := map[string]map[string]int{"new": {"kas-2": 4}}
	waitView(t, r2.Registry, convergeTimeout, "changes on kas-2", func() bool {
		return reflect.DeepEqual(agentsView(r2.Registry), want)
	})
	if got := agentsView(r1.Registry); !reflect.DeepEqual(got, map[string]map[string]int{"old": {"kas-2": 1}}) {
		t.Fatalf("the suspended view changed: %v", got)
	}

	ctx := ctxTimeout(t, 5*time.Second)
	// Compacting keeps the given revision, and r2's changes may be a single revision: write one
	// more (outside the prefix) so that everything r1 missed is compacted away.
	resp, err := r2.client.Put(ctx, "/elsewhere", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.client.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	resume()

	waitView(t, r1.Registry, convergeTimeout, "view after resync", func() bool {
		return reflect.DeepEqual(agentsView(r1.Registry), want)
	})
	mustEqual(t, "compacted resyncs", metricValue(t, r1.metrics, "kasd_registry_watch_resyncs_total", map[string]string{"reason": "compacted"}), 1)
}

// Two fleets on one etcd (the embedded etcd on 127.0.0.1:2379 is shared by every kasd on a
// machine) do not see each other's instances or agents, even with the same instance and agent
// ids; a third registry of the first fleet sees that fleet only.
func TestFleetsSharingEtcdAreIsolated(t *testing.T) {
	e := startEtcd(t)
	newIn := func(fleet, id string) testRegistry {
		t.Helper()
		c := newTestClient(t, e.Endpoints())
		reg := prometheus.NewRegistry()
		r, err := New(c, Config{FleetID: fleet, TTL: 2 * time.Second}, Instance{ID: id, PeerAddr: fleet + "-" + id + ":8152"}, zerolog.Nop(), reg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return testRegistry{Registry: r, client: c, metrics: reg}
	}
	a1, b1 := newIn("fleet-a", "kas-1"), newIn("fleet-b", "kas-1")
	a2 := newIn("fleet-a", "kas-2")
	mustEqual(t, "FleetID", a1.FleetID(), "fleet-a")
	a1.SetAgentConnections("demo", 1)
	a2.SetAgentConnections("only-a", 1)
	b1.SetAgentConnections("demo", 3)
	b1.SetAgentConnections("only-b", 1)

	wantA := map[string]map[string]int{"demo": {"kas-1": 1}, "only-a": {"kas-2": 1}}
	wantB := map[string]map[string]int{"demo": {"kas-1": 3}, "only-b": {"kas-1": 1}}
	for _, r := range []testRegistry{a1, a2} {
		waitView(t, r.Registry, convergeTimeout, "fleet a", func() bool {
			return reflect.DeepEqual(agentsView(r.Registry), wantA) && len(r.Instances()) == 2
		})
	}
	waitView(t, b1.Registry, convergeTimeout, "fleet b", func() bool {
		return reflect.DeepEqual(agentsView(b1.Registry), wantB) && len(b1.Instances()) == 1
	})
	if err := a1.WaitSynced(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// The views are settled: every key of both fleets is in etcd, each under its own root.
	for _, h := range a1.Holders("demo") {
		if h.Instance.PeerAddr != "fleet-a-kas-1:8152" {
			t.Errorf("fleet a's holder of demo is %+v", h.Instance)
		}
	}
	resp, err := a1.client.Get(ctxTimeout(t, 5*time.Second), "/qkas/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if !strings.HasPrefix(k, "/qkas/fleets/fleet-a/") && !strings.HasPrefix(k, "/qkas/fleets/fleet-b/") {
			t.Errorf("key %s outside the fleets' roots", k)
		}
	}
	if len(resp.Kvs) != 7 { // 3 instances, 4 agent keys
		t.Errorf("%d keys under /qkas/, want 7", len(resp.Kvs))
	}
}

// WaitSynced returns once the first read is done, and ErrClosed after Close.
func TestWaitSynced(t *testing.T) {
	e := startEtcd(t)
	r := newTestRegistry(t, e, "kas-1", 2*time.Second)
	if err := r.WaitSynced(ctxTimeout(t, 10*time.Second)); err != nil || !r.Synced() {
		t.Fatalf("WaitSynced: %v, Synced %v", err, r.Synced())
	}
	c := newTestClient(t, []string{"http://" + freeAddr(t)}) // nothing answers there
	r2, err := New(c, Config{}, Instance{ID: "kas-2"}, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := r2.WaitSynced(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSynced without etcd: %v", err)
	}
	go func() { time.Sleep(50 * time.Millisecond); r2.Close() }()
	if err := r2.WaitSynced(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitSynced after Close: %v", err)
	}
}
