package registry

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Holder is an instance that publishes a key for an agent.
type Holder struct {
	// Instance is joined from the instances/ key; only ID is set if that key is missing.
	Instance Instance
	// Connections is how many connections the instance holds for the agent.
	Connections int
	// Replicas are the agentd processes it holds them of, as it published them (shared with the
	// view: read only). A new process of a replica, or a connection made anew, changes them.
	Replicas []Replica
}

// view is the in-memory copy of the prefix. Guarded by Registry.viewMu.
type view struct {
	instances map[string]Instance
	agents    map[string][]holding // agent ID -> its keys, ordered by instance ID
	agentKeys int                  // number of agents/ keys, for the entries gauge
}

// holding is one agents/ key in the view. An agent has one per kasd that holds it (one to three,
// usually): a sorted slice costs a fraction of a map per agent, which at 150,000 agents is the
// view's size.
type holding struct {
	instance string
	conns    int
	replicas []Replica
}

func (v *view) find(agentID, instanceID string) (hs []holding, i int, found bool) {
	hs = v.agents[agentID]
	i, found = slices.BinarySearchFunc(hs, instanceID, func(h holding, id string) int { return strings.Compare(h.instance, id) })
	return hs, i, found
}

func newView() view {
	return view{instances: make(map[string]Instance), agents: make(map[string][]holding)}
}

// instanceName returns id as a string of its own, shared with the instance's entry when the view
// has one: a handful of instances hold every agent key, and each key keeping a copy of its
// instance's ID was 16 bytes per key.
func (v *view) instanceName(id string) string {
	if in, ok := v.instances[id]; ok && in.ID == id {
		return in.ID
	}
	return strings.Clone(id)
}

// apply applies one key (a put, or a delete) and reports whether the view changed.
func (v *view) apply(r *Registry, key string, value []byte, deleted bool) bool {
	kind, agentID, instanceID := r.cfg.parseKey(key)
	switch kind {
	case keyInstance:
		if deleted {
			if _, ok := v.instances[instanceID]; !ok {
				return false
			}
			delete(v.instances, instanceID)
			return true
		}
		var in Instance
		if err := json.Unmarshal(value, &in); err != nil {
			r.log.Warn().Err(err).Str("key", key).Msg("ignoring undecodable instance")
			return false
		}
		in.ID = strings.Clone(instanceID) // the key is authoritative; a string of its own (agent keys share it)
		if old, ok := v.instances[instanceID]; ok && old == in {
			return false
		}
		v.instances[instanceID] = in
		return true
	case keyAgent:
		holders, i, had := v.find(agentID, instanceID)
		var old holding
		if had {
			old = holders[i]
		}
		if deleted {
			if !had {
				return false
			}
			v.agentKeys--
			if len(holders) == 1 {
				delete(v.agents, agentID)
			} else {
				// A string of its own: assigning to a map entry replaces its key too, and agentID
				// is a substring of the event's whole key.
				v.agents[strings.Clone(agentID)] = slices.Delete(holders, i, i+1)
			}
			return true
		}
		// Room for the usual one replica, so that decoding it does not grow the slice to 4.
		av := agentValue{Replicas: make([]Replica, 0, 1)}
		if err := json.Unmarshal(value, &av); err != nil {
			r.log.Warn().Err(err).Str("key", key).Msg("ignoring undecodable agent entry")
			return false
		}
		if had && old.conns == av.Connections && slices.Equal(old.replicas, av.Replicas) {
			return false
		}
		switch {
		case len(av.Replicas) == 0:
			av.Replicas = nil
		case cap(av.Replicas) > len(av.Replicas):
			av.Replicas = slices.Clone(av.Replicas) // exact size: it may be kept for the agent's life
		}
		if had {
			holders[i].conns, holders[i].replicas = av.Connections, av.Replicas
		} else {
			v.agentKeys++
			// Not a substring keeping the whole key alive (assigning to an existing entry
			// replaces its key as well).
			agentID = strings.Clone(agentID)
			h := holding{instance: v.instanceName(instanceID), conns: av.Connections, replicas: av.Replicas}
			v.agents[agentID] = slices.Insert(holders, i, h)
		}
		if len(av.Replicas) > 0 && instanceID != r.self.ID && !slices.Equal(old.replicas, av.Replicas) {
			if hook := r.replicaHook.Load(); hook != nil {
				(*hook)(agentID, instanceID, av.Replicas)
			}
		}
		return true
	default:
		return false // someone else's key under our prefix: not ours to interpret
	}
}

// holders returns agentID's holders other than exclude, ordered by instance ID.
func (v *view) holders(agentID, exclude string) []Holder {
	hs := v.agents[agentID]
	if len(hs) == 0 {
		return nil
	}
	out := make([]Holder, 0, len(hs))
	for _, h := range hs {
		if h.instance == exclude {
			continue
		}
		in, ok := v.instances[h.instance]
		if !ok {
			in = Instance{ID: h.instance}
		}
		out = append(out, Holder{Instance: in, Connections: h.conns, Replicas: h.replicas})
	}
	return out
}

// notifyLocked wakes every Changed waiter and refreshes the gauges. Needs viewMu held for writing.
func (r *Registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
	r.m.entries.WithLabelValues("instances").Set(float64(len(r.view.instances)))
	r.m.entries.WithLabelValues("agents").Set(float64(r.view.agentKeys))
}

// Holders returns the instances currently publishing a key for agentID (self included once
// its key is published), ordered by instance ID. It reads the in-memory view only.
func (r *Registry) Holders(agentID string) []Holder {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	return r.view.holders(agentID, "")
}

// Instances returns every instance in the view, ordered by ID.
func (r *Registry) Instances() []Instance {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	out := make([]Instance, 0, len(r.view.instances))
	for _, id := range slices.Sorted(maps.Keys(r.view.instances)) {
		out = append(out, r.view.instances[id])
	}
	return out
}

// Agents returns every agent in the view with its holders (ordered by instance ID).
func (r *Registry) Agents() map[string][]Holder {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	out := make(map[string][]Holder, len(r.view.agents))
	for a := range r.view.agents {
		out[a] = r.view.holders(a, "")
	}
	return out
}

// Changed returns a channel that is closed at the next change of the view (a new one is
// handed out after each change), so waiters are woken by the watch, not by polling. To wait
// for a condition: ch := Changed(); check the condition; if false, wait for ch and repeat.
func (r *Registry) Changed() <-chan struct{} {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	return r.changed
}

// WaitSynced waits until the view has completed its first full read of the fleet's keys. It
// returns ctx.Err() when ctx ends first, ErrClosed when the registry is closed first.
func (r *Registry) WaitSynced(ctx context.Context) error {
	for {
		r.viewMu.RLock()
		synced, changed, closed := r.synced, r.changed, r.closed
		r.viewMu.RUnlock()
		if synced {
			return nil
		}
		select {
		case <-changed: // the first sync notifies, see syncView
		case <-closed:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Synced reports whether the view has completed at least one full read of the prefix.
func (r *Registry) Synced() bool {
	r.viewMu.RLock()
	defer r.viewMu.RUnlock()
	return r.synced
}

// WaitForHolder returns the holders of agentID other than exclude (usually self), waiting
// until at least one exists. It returns ctx.Err() when ctx ends first, ErrClosed when the
// registry is closed first.
func (r *Registry) WaitForHolder(ctx context.Context, agentID, exclude string) ([]Holder, error) {
	for {
		r.viewMu.RLock()
		hs := r.view.holders(agentID, exclude)
		changed, closed := r.changed, r.closed
		r.viewMu.RUnlock()
		if len(hs) > 0 {
			return hs, nil
		}
		select {
		case <-changed:
		case <-closed:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// runWatch is the watch goroutine: it keeps the view equal to the prefix with one watch,
// re-reading the whole prefix (Get, then Watch from the next revision) at start and after
// compaction, a watch error or a closed watch channel.
func (r *Registry) runWatch() {
	bo := r.newBackoff()
	var rev int64 // the last revision the view reflects
	needSync := true
	for r.ctx.Err() == nil {
		if needSync {
			var err error
			if rev, err = r.syncView(); err != nil {
				if r.ctx.Err() == nil {
					r.log.Debug().Err(err).Msg("reading the registry failed; retrying")
				}
				r.sleep(bo.NextBackOff())
				continue
			}
			needSync = false
		}
		started := time.Now()
		reason := r.watchFrom(&rev)
		if time.Since(started) > r.cfg.TTL {
			// The watch worked for a while: resync after the shortest pause. A watch that fails
			// right after each sync backs off up to the maximum instead of spinning.
			bo.Reset()
		}
		switch reason {
		case "":
			// suspended by a test, or closing: continue from rev without a resync
		default:
			if r.ctx.Err() != nil {
				return
			}
			r.m.resyncs.WithLabelValues(reason).Inc()
			r.log.Info().Str("reason", reason).Int64("revision", rev).Msg("registry watch ended; resyncing")
			needSync = true
			r.sleep(bo.NextBackOff())
		}
	}
}

// syncView replaces the view with a full read of the prefix and returns its revision.
func (r *Registry) syncView() (int64, error) {
	sent := r.cfg.Now()
	ctx, cancel := context.WithTimeout(r.ctx, r.opTimeout)
	resp, err := r.client.Get(ctx, r.cfg.Root(), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return 0, err
	}
	v := newView()
	for _, kv := range resp.Kvs {
		v.apply(r, string(kv.Key), kv.Value, false)
	}
	r.viewMu.Lock()
	r.view = v
	r.synced = true
	r.notifyLocked()
	r.viewMu.Unlock()

	// Our writes sent before the Get are in it, and their events will never come: forget
	// them, so that the lag metric's bookkeeping stays bounded by the writes in flight.
	r.lagMu.Lock()
	for k, t := range r.pendingLag {
		if t.Before(sent) {
			delete(r.pendingLag, k)
		}
	}
	r.lagMu.Unlock()
	return resp.Header.Revision, nil
}

// watchFrom watches the prefix from *rev+1, applying events and advancing *rev. It returns
// the resync reason when the watch ends, or "" when the registry is closing or a test
// suspended the watch.
func (r *Registry) watchFrom(rev *int64) string {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.ctx))
	defer cancel()
	r.log.Debug().Int64("from", *rev+1).Msg("watching")
	wch := r.client.Watch(ctx, r.cfg.Root(), clientv3.WithPrefix(), clientv3.WithRev(*rev+1))
	for {
		select {
		case <-r.ctx.Done():
			return ""
		case resume := <-r.suspendWatch:
			cancel()
			select {
			case <-resume:
			case <-r.ctx.Done():
			}
			return ""
		case resp, ok := <-wch:
			switch {
			case !ok:
				return resyncClosed
			case resp.CompactRevision != 0:
				return resyncCompacted
			case resp.Canceled || resp.Err() != nil:
				r.log.Debug().Err(resp.Err()).Msg("registry watch canceled")
				return resyncError
			}
			r.applyEvents(resp.Events)
			if n := len(resp.Events); n > 0 {
				*rev = resp.Events[n-1].Kv.ModRevision
			}
		}
	}
}

func (r *Registry) applyEvents(events []*clientv3.Event) {
	if len(events) == 0 {
		return
	}
	changed := false
	r.viewMu.Lock()
	for _, ev := range events {
		if r.view.apply(r, string(ev.Kv.Key), ev.Kv.Value, ev.Type == mvccpb.DELETE) {
			changed = true
		}
	}
	if changed {
		r.notifyLocked()
	}
	r.viewMu.Unlock()
	r.observeLag(events)
}

// observeLag measures, for our own keys, the time from sending the write to applying it.
func (r *Registry) observeLag(events []*clientv3.Event) {
	selfSuffix := "/" + r.self.ID
	now := r.cfg.Now()
	r.lagMu.Lock()
	defer r.lagMu.Unlock()
	if len(r.pendingLag) == 0 {
		return
	}
	for _, ev := range events {
		k := string(ev.Kv.Key)
		if !strings.HasSuffix(k, selfSuffix) {
			continue
		}
		if sent, ok := r.pendingLag[k]; ok {
			r.m.watchLag.Observe(now.Sub(sent).Seconds())
			delete(r.pendingLag, k)
		}
	}
}

// suspendWatchForTest stops the watch (the view freezes) until resume is called; the watch
// then restarts from the revision after the last one it applied, exactly as after a
// reconnect. Tests use it to make the watcher fall behind a compaction.
func (r *Registry) suspendWatchForTest(ctx context.Context) (resume func(), err error) {
	ch := make(chan struct{})
	select {
	case r.suspendWatch <- ch:
		return func() { close(ch) }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
