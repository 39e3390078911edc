package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxTxnOps is how many puts/deletes one publishing transaction carries. etcd refuses
// transactions with more than --max-txn-ops (default 128) operations.
const maxTxnOps = 64

// maxAgentValueSize bounds the encoded value of an agent key. Its replicas come from the
// agents' Hellos, one per connection: kasd bounds each name and process id, not what they
// encode to (JSON writes a control character in 6 bytes). Unbounded, one agent's value could be
// larger than etcd accepts in a request (--max-request-bytes, 1.5 MiB by default), and etcd
// refused the whole transaction that carried it. 64 KiB holds about 600 replicas with 63-byte
// names, ten times what --max-connections-per-agent (64) lets one agent have. Over it, the
// agent is published with the replicas that fit (logged, counted in
// kasd_registry_publish_limited_total{reason="replicas_truncated"}): its connection count,
// which routing needs, always is. (maxTxnOps values this large exceed etcd's limit together:
// such a transaction is refused and its operations are then committed one at a time.)
const maxAgentValueSize = 64 << 10

// Reasons of kasd_registry_publish_limited_total.
const (
	limitedReplicas = "replicas_truncated" // an agent published with fewer replicas (maxAgentValueSize)
	limitedRefused  = "refused"            // a key etcd refused on its own, skipped
)

// runSession is the session goroutine: it owns the lease (grant, keep-alive through an etcd
// concurrency.Session, re-grant after loss) and the publisher that reconciles etcd to the local
// desired state under that lease.
func (r *Registry) runSession() {
	bo := r.newBackoff()
	for r.ctx.Err() == nil {
		// The grant is ours, not NewSession's: each attempt is bounded by the op timeout and
		// retried with backoff, where NewSession would wait on one Grant as long as its
		// context lives (see doc.go, "The lease and concurrency.Session").
		ctx, cancel := context.WithTimeout(r.ctx, r.opTimeout)
		lease, err := r.client.Grant(ctx, r.cfg.ttlSeconds())
		cancel()
		var sess *concurrency.Session
		if err == nil {
			sess, err = concurrency.NewSession(r.client, concurrency.WithLease(lease.ID),
				concurrency.WithTTL(int(r.cfg.ttlSeconds())), concurrency.WithContext(r.ctx))
		}
		if err != nil {
			if r.ctx.Err() == nil {
				r.log.Debug().Err(err).Msg("granting lease failed; retrying")
			}
			r.sleep(bo.NextBackOff())
			continue
		}
		bo.Reset()
		r.m.leasesGranted.Inc()
		r.leaseID.Store(int64(lease.ID))
		r.setLeaseHeld(true)
		r.log.Info().Str("lease", leaseString(lease.ID)).Msg("lease granted")

		r.holdLease(sess)
		// Stops the keep-alive if the lease is given up while etcd still answers (a publish
		// saw "lease not found"), and waits for the session's goroutine either way. Never
		// Close: that would revoke, which only Shutdown does.
		sess.Orphan()

		r.setLeaseHeld(false)
		if r.ctx.Err() != nil {
			return // keep leaseID: Shutdown revokes it
		}
		r.leaseID.Store(0)
		r.staleLease = lease.ID
		r.log.Warn().Str("lease", leaseString(lease.ID)).Msg("lease lost; serving local agents and re-acquiring")
	}
}

// holdLease publishes under sess's lease. It returns when the lease is lost (sess.Done: the
// client's keep-alive gave up once the TTL passed without an answer, or etcd says the lease is
// gone; or a publish was answered "lease not found") or the registry is closed.
func (r *Registry) holdLease(sess *concurrency.Session) {
	id := sess.Lease()
	p := publisher{r: r, lease: id, published: make(map[string]Holding)}
	bo := r.newBackoff()
	retry := newStoppedTimer()
	defer retry.Stop()
	reconcile := func() (lost bool) {
		retry.Stop()
		err := p.reconcile()
		switch {
		case err == nil:
			bo.Reset()
			r.revokeStale()
			return false
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			r.m.publishErrors.Inc()
			return true
		case r.ctx.Err() != nil:
			return false
		default:
			r.m.publishErrors.Inc()
			d := bo.NextBackOff()
			r.log.Debug().Err(err).Dur("retry_in", d).Msg("publishing failed")
			retry.Reset(d)
			return false
		}
	}

	if reconcile() { // a new lease holds nothing yet: publish everything
		return
	}
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-sess.Done():
			return
		case <-r.kick:
			if reconcile() {
				return
			}
		case <-retry.C:
			if reconcile() {
				return
			}
		}
	}
}

// revokeStale revokes the lease lost before the current one, once everything is published
// under the new one: when the loss was only seen by this side (etcd kept the lease), its keys
// would otherwise linger until it expires. Keys re-put under the new lease are not affected.
func (r *Registry) revokeStale() {
	if r.staleLease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.opTimeout)
	_, err := r.client.Revoke(ctx, r.staleLease)
	cancel()
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		r.log.Debug().Err(err).Msg("revoking the previous lease failed; it expires on its own")
	}
	r.staleLease = 0
}

// publisher is the session goroutine's record of what it has written under one lease.
type publisher struct {
	r         *Registry
	lease     clientv3.LeaseID
	instance  []byte             // the instance key's value written under lease, nil before the first
	published map[string]Holding // agent ID -> what was written under lease
	full      bool               // every desired agent was compared once (the first pass)
}

// reconcile writes the difference between the desired state and what is published, in
// transactions of at most maxTxnOps operations; each bounded by the op timeout. A new
// publisher (a new lease) compares every agent; afterwards only the agents SetAgent marked
// dirty since the last pass are looked at, so that a restart storm of 50,000 connections does
// not cost a pass over every agent per connection. Agents whose write failed are marked dirty
// again for the retry; a key etcd refuses on its own is skipped (commitOrSplit).
func (p *publisher) reconcile() error {
	r := p.r
	type want struct {
		h  Holding
		ok bool // false: not desired (delete if published)
	}
	r.mu.Lock()
	var agents []string
	if !p.full {
		agents = slices.Collect(maps.Keys(r.agents))
		for a := range p.published {
			if _, ok := r.agents[a]; !ok {
				agents = append(agents, a)
			}
		}
		p.full = true
	} else {
		agents = slices.Collect(maps.Keys(r.dirty))
	}
	clear(r.dirty)
	desired := make([]want, len(agents))
	slices.Sort(agents)
	for i, a := range agents {
		h, ok := r.agents[a]
		desired[i] = want{h, ok}
	}
	self := r.selfJSON
	r.mu.Unlock()

	var changes []change
	if !bytes.Equal(p.instance, self) {
		k := r.cfg.instanceKey(r.self.ID)
		changes = append(changes, change{key: k, instance: self, op: clientv3.OpPut(k, string(self), clientv3.WithLease(p.lease))})
	}
	for i, a := range agents {
		d := desired[i]
		old, published := p.published[a]
		k := r.cfg.agentKey(a, r.self.ID)
		switch {
		case d.ok && published && old.equal(d.h):
		case d.ok:
			v, kept := agentValueJSON(d.h)
			if kept < len(d.h.Replicas) {
				r.m.publishLimited.WithLabelValues(limitedReplicas).Inc()
				r.log.Warn().Str("agent_id", a).Int("replicas", len(d.h.Replicas)).Int("published", kept).
					Msg("agent key larger than maxAgentValueSize: publishing the replicas that fit")
			}
			changes = append(changes, change{key: k, agent: a, h: d.h, op: clientv3.OpPut(k, string(v), clientv3.WithLease(p.lease))})
		case published:
			changes = append(changes, change{key: k, agent: a, op: clientv3.OpDelete(k)})
		}
	}

	committed := 0
	for batch := range slices.Chunk(changes, maxTxnOps) {
		if err := p.commitOrSplit(batch); err != nil {
			// What was not written is compared again at the retry.
			r.mu.Lock()
			for _, c := range changes[committed:] {
				if c.agent != "" {
					r.dirty[c.agent] = struct{}{}
				}
			}
			r.mu.Unlock()
			return err
		}
		committed += len(batch)
	}
	return nil
}

// change is one operation of a publish: a put or delete of the instance key or an agent key.
type change struct {
	key      string
	agent    string  // "" for the instance key
	h        Holding // zero Connections: delete
	instance []byte  // the instance key's value (agent "")
	op       clientv3.Op
}

// commit writes changes in one transaction, bounded by the op timeout, and records them as
// published.
func (p *publisher) commit(changes []change) error {
	r := p.r
	ops := make([]clientv3.Op, len(changes))
	keys := make([]string, len(changes))
	for i, c := range changes {
		ops[i], keys[i] = c.op, c.key
	}
	r.notePending(keys)
	ctx, cancel := context.WithTimeout(r.ctx, r.opTimeout)
	_, err := r.client.Txn(ctx).Then(ops...).Commit()
	cancel()
	if err != nil {
		r.forgetPending(keys)
		return err
	}
	for _, c := range changes {
		switch {
		case c.agent == "":
			p.instance = c.instance
		case c.h.Connections == 0:
			delete(p.published, c.agent)
		default:
			p.published[c.agent] = c.h
		}
	}
	return nil
}

// commitOrSplit commits changes in one transaction. If etcd refuses it for what it is (refused:
// one operation too large, say), retrying it would fail forever and publish none of the
// others: the operations are committed one at a time instead, and one refused on its own is
// logged, counted and skipped. A skipped key is not marked dirty: it is tried again when its
// agent changes (or under a new lease), and what was published for it before stays. Any other
// error is returned (the caller retries with backoff).
func (p *publisher) commitOrSplit(changes []change) error {
	err := p.commit(changes)
	switch {
	case err == nil || !refused(err):
		return err
	case len(changes) == 1:
		c := changes[0]
		p.r.m.publishLimited.WithLabelValues(limitedRefused).Inc()
		p.r.log.Warn().Err(err).Str("key", c.key[:min(len(c.key), 256)]).Int("key_bytes", len(c.key)).
			Msg("etcd refused this key's write: skipped until it changes; the others are published")
		return nil
	}
	for i := range changes {
		if err := p.commitOrSplit(changes[i : i+1]); err != nil {
			return err
		}
	}
	return nil
}

// refused reports whether a write was refused for what it is rather than for etcd's state:
// InvalidArgument from etcd (request too large, malformed), or ResourceExhausted from gRPC
// itself (a message larger than the client sends or etcd receives; etcd's own
// ResourceExhausted, "database space exceeded", is its state). Sent again, it would be refused
// again.
func refused(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.InvalidArgument
	}
	code := status.Code(err)
	return code == codes.InvalidArgument || code == codes.ResourceExhausted
}

// agentValueJSON is the value of an agent key for h, with its first kept replicas: all of
// them, or, when the value would be larger than maxAgentValueSize, half as many until it fits
// (none at worst: the connection count is always published).
func agentValueJSON(h Holding) (v []byte, kept int) {
	for kept = len(h.Replicas); ; kept /= 2 {
		v, _ = json.Marshal(agentValue{Connections: h.Connections, Replicas: h.Replicas[:kept]})
		if len(v) <= maxAgentValueSize || kept == 0 {
			return v, kept
		}
	}
}

// notePending records when our own writes were sent, for the watch lag metric.
func (r *Registry) notePending(keys []string) {
	now := r.cfg.Now()
	r.lagMu.Lock()
	for _, k := range keys {
		r.pendingLag[k] = now
	}
	r.lagMu.Unlock()
}

func (r *Registry) forgetPending(keys []string) {
	r.lagMu.Lock()
	for _, k := range keys {
		delete(r.pendingLag, k)
	}
	r.lagMu.Unlock()
}

func leaseString(id clientv3.LeaseID) string { return fmt.Sprintf("%x", int64(id)) }

// newStoppedTimer returns a timer that fires only after a Reset.
func newStoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}
