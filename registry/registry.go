package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrClosed is returned by WaitForHolder once the registry is closed.
var ErrClosed = errors.New("registry: closed")

// Registry publishes this instance's state under an etcd lease and keeps an in-memory view
// of everything published under the prefix. See the package documentation.
type Registry struct {
	client    *clientv3.Client
	cfg       Config
	self      Instance // ID and addresses never change; Draining is read under mu (SetDraining)
	selfJSON  []byte   // guarded by mu: the instance key's value, re-encoded by SetDraining
	log       zerolog.Logger
	m         *metrics
	opTimeout time.Duration

	ctx      context.Context // canceled by Close/Shutdown; parent of every etcd call the goroutines make
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the session and watch goroutines
	stopOnce sync.Once
	revoke   sync.Once // Shutdown's revocation runs once

	kick         chan struct{}      // cap 1: wakes the publisher after a local change
	suspendWatch chan chan struct{} // test hook: see suspendWatchForTest

	leaseHeld atomic.Bool
	leaseID   atomic.Int64 // the lease the session currently holds, 0 while none

	// staleLease is the last lease the session lost and has not yet revoked. Written only by
	// the session goroutine; read by Shutdown only after that goroutine has exited.
	staleLease clientv3.LeaseID

	mu     sync.Mutex // guards the fields below: the local desired state
	agents map[string]Holding
	dirty  map[string]struct{} // agents changed since the publisher last looked (session.go)

	replicaHook atomic.Pointer[func(agentID, instanceID string, replicas []Replica)] // SetReplicaHook

	lagMu      sync.Mutex // guards the fields below
	pendingLag map[string]time.Time

	viewMu  sync.RWMutex // guards the fields below
	view    view
	synced  bool
	changed chan struct{} // closed and replaced at every change of the view
	closed  chan struct{} // closed by stop, under viewMu, so waiters end
}

// New starts the session goroutine (lease keep-alive + publisher) and the watch goroutine.
// It does not wait for etcd: it returns at once even if etcd is down, and the view stays
// empty (Synced() == false) until the first sync. Metrics are registered on reg when it is
// not nil (New fails if they are already registered there). The client stays the caller's:
// Close and Shutdown do not close it, and it must outlive them.
func New(client *clientv3.Client, cfg Config, self Instance, log zerolog.Logger, reg prometheus.Registerer) (*Registry, error) {
	if client == nil {
		return nil, errors.New("registry: nil etcd client")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := self.validate(); err != nil {
		return nil, err
	}
	selfJSON, err := json.Marshal(self)
	if err != nil {
		return nil, fmt.Errorf("registry: encoding instance: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{
		client:       client,
		cfg:          cfg,
		self:         self,
		selfJSON:     selfJSON,
		log:          log.With().Str("component", "registry").Str("instance", self.ID).Logger(),
		m:            m,
		opTimeout:    cfg.opTimeout(),
		ctx:          ctx,
		cancel:       cancel,
		kick:         make(chan struct{}, 1),
		suspendWatch: make(chan chan struct{}),
		agents:       make(map[string]Holding),
		dirty:        make(map[string]struct{}),
		pendingLag:   make(map[string]time.Time),
		view:         newView(),
		changed:      make(chan struct{}),
		closed:       make(chan struct{}),
	}
	r.wg.Go(r.runSession)
	r.wg.Go(r.runWatch)
	return r, nil
}

// Self returns the instance this registry publishes.
func (r *Registry) Self() Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.self
}

// SetDraining marks this instance draining in its instance key (Instance.Draining), written
// with the next publish, so that peers stop choosing it as a place for agents. Idempotent;
// there is no way back (a drain ends with the process).
func (r *Registry) SetDraining() {
	r.mu.Lock()
	if r.self.Draining {
		r.mu.Unlock()
		return
	}
	r.self.Draining = true
	if b, err := json.Marshal(r.self); err == nil {
		r.selfJSON = b
	}
	r.mu.Unlock()
	r.wakePublisher()
}

// FleetID returns the fleet whose keys this registry publishes and watches (Config.FleetID
// after defaults).
func (r *Registry) FleetID() string { return r.cfg.FleetID }

// SetAgentConnections records that this instance holds n connections for agentID; n <= 0
// means none (the key is deleted). It only changes the local desired state and wakes the
// publisher: it never waits for etcd. An empty agentID is ignored.
func (r *Registry) SetAgentConnections(agentID string, n int) {
	r.SetAgent(agentID, Holding{Connections: n})
}

// SetAgent is SetAgentConnections with the replicas (agentd processes) of those connections,
// published with them (Replica; h.Replicas sorted by Name, then Process). The slice is kept:
// the caller must not modify it afterwards.
func (r *Registry) SetAgent(agentID string, h Holding) {
	if agentID == "" {
		return
	}
	r.mu.Lock()
	old, had := r.agents[agentID]
	switch {
	case h.Connections <= 0 && !had, h.Connections > 0 && had && old.equal(h):
		r.mu.Unlock()
		return
	case h.Connections <= 0:
		delete(r.agents, agentID)
	default:
		r.agents[agentID] = h
	}
	r.dirty[agentID] = struct{}{}
	r.mu.Unlock()
	r.wakePublisher()
}

// SetReplicaHook sets the function called when the view learns the replicas another instance
// holds for an agent (a put of its key with replicas that changed). It is called from the watch
// goroutine with the view locked: it must not block or call back into the registry. nil removes
// it.
func (r *Registry) SetReplicaHook(fn func(agentID, instanceID string, replicas []Replica)) {
	if fn == nil {
		r.replicaHook.Store(nil)
		return
	}
	r.replicaHook.Store(&fn)
}

// LocalAgents returns a copy of the local desired state: agent ID -> connections.
func (r *Registry) LocalAgents() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.agents))
	for a, h := range r.agents {
		out[a] = h.Connections
	}
	return out
}

func (r *Registry) wakePublisher() {
	select {
	case r.kick <- struct{}{}:
	default: // a wake-up is already pending; the publisher reads the whole state anyway
	}
}

// LeaseHeld reports whether this instance currently holds its etcd lease.
func (r *Registry) LeaseHeld() bool { return r.leaseHeld.Load() }

// Close stops the goroutines and waits for them, WITHOUT revoking the lease: the keys stay
// until the lease expires on its own, which is what a crash looks like to the other
// instances. Idempotent.
func (r *Registry) Close() error {
	r.stop()
	return nil
}

// Shutdown stops the goroutines, waits for them, then revokes the lease (which deletes every
// key this instance published) within ctx. Idempotent: the revocation is attempted once.
// If etcd is unreachable the keys expire with the lease after the TTL, and the error says so.
func (r *Registry) Shutdown(ctx context.Context) error {
	r.stop()
	var err error
	r.revoke.Do(func() {
		for _, id := range []clientv3.LeaseID{clientv3.LeaseID(r.leaseID.Load()), r.staleLease} {
			if id == 0 {
				continue
			}
			// Past the TTL the lease is gone anyway: never wait longer than that, even on a
			// ctx without deadline.
			rctx, cancel := context.WithTimeout(ctx, r.cfg.TTL)
			_, rerr := r.client.Revoke(rctx, id)
			cancel()
			if rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
				err = errors.Join(err, fmt.Errorf("registry: revoking lease %x (its keys expire after the TTL): %w", int64(id), rerr))
			}
		}
		r.leaseID.Store(0)
		r.staleLease = 0
	})
	return err
}

// stop cancels the goroutines and waits for them.
func (r *Registry) stop() {
	r.stopOnce.Do(func() {
		r.cancel()
		r.wg.Wait()
		r.setLeaseHeld(false)
		r.viewMu.Lock()
		close(r.closed)
		r.viewMu.Unlock()
	})
}

func (r *Registry) setLeaseHeld(held bool) {
	r.leaseHeld.Store(held)
	if held {
		r.m.leaseState.Set(1)
	} else {
		r.m.leaseState.Set(0)
	}
}

// sleep waits for d or until the registry is closed; it reports whether it is still running.
func (r *Registry) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// newBackoff paces retries of etcd calls: 50ms doubling to a quarter of the lease TTL (at most
// a second), without jitter (one kasd, one etcd: no herd to spread). Reset after a success.
func (r *Registry) newBackoff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{InitialInterval: 50 * time.Millisecond, Multiplier: 2,
		MaxInterval: min(time.Second, r.cfg.TTL/4)}
	b.Reset()
	return b
}
