package kasd_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/qkas/qkas/registry"
)

// TestFleetEtcdOutage: etcd stopped for longer than the TTL and restarted. Local routes keep
// working throughout (they never touch etcd), every lease is lost during the outage, and when
// etcd returns the registry is repaired: new leases, every node's view shows the true holders
// again, and forwarded requests work.
func TestFleetEtcdOutage(t *testing.T) {
	f := newFleetEnv(t, 3)
	outage := 2*f.ttl + time.Second
	alphaSvc := namedService(t, "alpha")
	betaSvc := namedService(t, "beta")
	alpha := f.startAgent("alpha", "pod", alphaSvc.URL, f.nodes[0:1], 1)
	beta := f.startAgent("beta", "pod", betaSvc.URL, f.nodes[1:2], 1)
	waitConnected(t, alpha, 1)
	waitConnected(t, beta, 1)
	f.waitHolders("alpha", "kas-0")
	f.waitHolders("beta", "kas-1")
	waitLeases(t, f, true, 10*time.Second)
	oldLeases := leasedKeys(t, f.nodes[2].etcd)
	if len(oldLeases) == 0 {
		t.Fatal("no leased keys in etcd before the outage")
	}
	// Baseline: forwarding works before the outage.
	f.mustGet(f.nodes[2], "alpha", "/before")
	f.mustGet(f.nodes[0], "beta", "/before")

	// Local requests through kas-0 to alpha, every ~50ms, from before etcd stops until the
	// registry is repaired. Every one must succeed.
	var (
		stop             = make(chan struct{})
		wg               sync.WaitGroup
		localOK, localKO atomic.Int64
		failMu           sync.Mutex
		failures         []string
		slowestNs        atomic.Int64
	)
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			path := fmt.Sprintf("/local/%d", i)
			start := time.Now()
			code, body := f.get(f.nodes[0], "alpha", path)
			if d := int64(time.Since(start)); d > slowestNs.Load() {
				slowestNs.Store(d)
			}
			if code == 200 && body == "alpha "+path {
				localOK.Add(1)
				continue
			}
			localKO.Add(1)
			failMu.Lock()
			failures = append(failures, fmt.Sprintf("%s at %s: %d %q", path, time.Now().Format("15:04:05.000"), code, body))
			failMu.Unlock()
		}
	})
	stopLoop := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	t.Cleanup(stopLoop) // on a t.Fatal below, stop the loop before the env is torn down

	// Forwarded requests during the outage are informative only (the view is stale but kept).
	var fwdOK, fwdKO atomic.Int64
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if code, _ := f.get(f.nodes[2], "alpha", "/fwd-during"); code == 200 {
				fwdOK.Add(1)
			} else {
				fwdKO.Add(1)
			}
		}
	})

	clientAddr, peerAddr := f.etcd.ClientAddr(), f.etcd.PeerAddr()
	closing := time.Now()
	f.etcd.Close() // waits for etcd's graceful stop while the registries' streams are open
	down := time.Now()
	t.Logf("etcd stopped (Close took %v)", down.Sub(closing).Round(time.Millisecond))

	// Every node loses its lease within the outage (TTL plus keep-alive slack).
	lost := map[string]bool{}
	for time.Since(down) < outage {
		for _, nd := range f.nodes {
			if !nd.reg.LeaseHeld() {
				lost[nd.id] = true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, nd := range f.nodes {
		if !lost[nd.id] {
			t.Errorf("%s still held its lease %v after etcd stopped (TTL %v)", nd.id, outage, f.ttl)
		}
		if nd.reg.LeaseHeld() {
			t.Errorf("%s reports its lease held at the end of the outage", nd.id)
		}
	}

	// Restart etcd on the same data dir and ports. The ports were just released; retry briefly
	// if the kernel or a lingering listener still holds one.
	var (
		e2  *registry.Embedded
		err error
	)
	for attempt := 1; ; attempt++ {
		e2, err = registry.StartEmbedded(registry.EmbeddedConfig{Dir: f.dir + "/etcd", ClientAddr: clientAddr, PeerAddr: peerAddr})
		if err == nil || attempt == 20 {
			break
		}
		t.Logf("restarting etcd, attempt %d: %v", attempt, err)
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restarting etcd on %s/%s: %v", clientAddr, peerAddr, err)
	}
	f.etcd = e2 // the env's cleanup closes it after the nodes
	if e2.Joined() {
		t.Fatal("restart joined an etcd instead of starting one")
	}
	restarted := time.Now()
	t.Logf("etcd restarted after %v down", restarted.Sub(down).Round(time.Millisecond))

	// The registry is repaired: new leases and every view shows the true holders.
	waitLeases(t, f, true, 15*time.Second)
	f.waitHolders("alpha", "kas-0")
	f.waitHolders("beta", "kas-1")
	// Republished, not merely revived: etcd restores the old leases on restart, so the keys
	// must be seen to move to new leases (and the old leases' keys to go).
	deadline := time.Now().Add(2*f.ttl + 5*time.Second)
	for {
		now := leasedKeys(t, f.nodes[2].etcd)
		var stale []string
		for k, lease := range now {
			for _, l := range oldLeases {
				if lease == l {
					stale = append(stale, k)
				}
			}
		}
		if len(stale) == 0 && len(now) >= len(oldLeases) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys not republished under new leases: stale %v; now %v; before %v", stale, now, oldLeases)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.waitHolders("alpha", "kas-0")
	f.waitHolders("beta", "kas-1")
	t.Logf("registry repaired %v after etcd restarted", time.Since(restarted).Round(time.Millisecond))

	// Forwarded requests work again.
	f.mustGet(f.nodes[2], "alpha", "/after")
	f.mustGet(f.nodes[0], "beta", "/after")
	f.mustGet(f.nodes[1], "alpha", "/after")
	f.mustGet(f.nodes[2], "beta", "/after")

	stopLoop()
	t.Logf("local requests: %d ok, %d failed, slowest %v; forwarded during outage: %d ok, %d failed",
		localOK.Load(), localKO.Load(), time.Duration(slowestNs.Load()).Round(time.Millisecond), fwdOK.Load(), fwdKO.Load())
	if n := localKO.Load(); n != 0 {
		t.Errorf("%d of %d local requests through kas-0 failed during the etcd outage: %s",
			n, n+localOK.Load(), strings.Join(failures, "; "))
	}
	if least := int64(down.Sub(closing)+outage) / int64(100*time.Millisecond); localOK.Load() < least {
		t.Errorf("only %d local requests made during the outage (want >= %d)", localOK.Load(), least)
	}
}

// leasedKeys returns every key in etcd that is attached to a lease, with its lease.
func leasedKeys(t *testing.T, c *clientv3.Client) map[string]clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]clientv3.LeaseID{}
	for _, kv := range resp.Kvs {
		if kv.Lease != 0 {
			out[string(kv.Key)] = clientv3.LeaseID(kv.Lease)
		}
	}
	return out
}

// waitLeases waits until every live node's LeaseHeld() is want.
func waitLeases(t *testing.T, f *fleetEnv, want bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var bad []string
		for _, nd := range f.nodes {
			if !nd.stopped && nd.reg.LeaseHeld() != want {
				bad = append(bad, nd.id)
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, LeaseHeld() is not %v on %v", timeout, want, bad)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mustGet makes one request through nd to agent and fails the test unless it succeeds.
func (f *fleetEnv) mustGet(nd *node, agent, path string) {
	f.t.Helper()
	if code, body := f.get(nd, agent, path); code != 200 || body != agent+" "+path {
		f.t.Fatalf("via %s to %s%s: %d %q", nd.id, agent, path, code, body)
	}
}
